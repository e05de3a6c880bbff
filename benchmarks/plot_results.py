"""Plots of the benchmark results (matplotlib; benchmarks only, not a dependency of the package).

    python benchmarks/plot_results.py layer LAYER_JSON OUT_PNG    # bench_layers.py layer --json
    python benchmarks/plot_results.py e2e E2E_JSON OUT_PNG        # e2e_multi30k.sh's e2e.json
    python benchmarks/plot_results.py distributed DIST_JSON OUT_PNG   # e2e_distributed.sh's distributed.json

layer: tokens/s and peak memory against sequence length for every layer of the run (Mega with the
fast kernels, Mega with the original algorithm, fairseq's Transformer layer; dotted: on layer graphs).
e2e: fairseq-train words/s over updates for the Mega and the Transformer of the run.
distributed: fairseq-train words/s over updates, one GPU with --update-freq 2 and each 2-GPU run.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "transformer": "Transformer layer (fairseq)",
    "mega_chunk128": "Mega-chunk 128",
    "mega_chunk128_original": "Mega-chunk 128, original algorithm",
    "mega_unchunked": "Mega, unchunked",
    "mega_unchunked_original": "Mega unchunked, original algorithm",
    "transformer_graphs": "Transformer layer on layer graphs",
    "mega_chunk128_graphs": "Mega-chunk 128 on layer graphs",
}


def plot_layer(results: dict, out: str) -> None:
    rows = results["rows"]
    lengths = [row["L"] for row in rows]
    names = [name for name in rows[0] if isinstance(rows[0][name], dict)]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        style = "--" if name.endswith("_original") else ":" if name.endswith("_graphs") else "-"
        speed.plot(lengths, [row[name]["tokens/s"] / 1e3 for row in rows], style, marker="o",
                   label=LABELS.get(name, name))
        if not name.endswith("_graphs"):  # a replay allocates nothing: the graphs' pool is not in the peak
            memory.plot(lengths, [row[name]["peak_MiB"] / 1024 for row in rows], style, marker="o",
                        label=LABELS.get(name, name))
    for axis, label in ((speed, "thousand tokens/s (forward+backward)"), (memory, "peak memory (GiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length (tokens per batch fixed)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    speed.legend(fontsize=8)
    figure.suptitle(f"One layer, {results.get('device', '')}")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def plot_e2e(results: dict, out: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, model in results["models"].items():
        records = model["records"]
        axis.plot([r["num_updates"] for r in records], [r["wps"] / 1e3 for r in records], marker="o",
                  label=f"{name} ({model['params'] / 1e6:.0f}M)")
    axis.axvline(results["warmup_updates"], color="grey", linestyle=":", label="averages start")
    axis.set_xlabel("update")
    axis.set_ylabel("thousand target words/s (fairseq-train)")
    axis.set_title(f"Multi30k, PAIR={results['pair']}, --max-tokens {results['max_tokens']}, {results['precision']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def plot_distributed(results: dict, out: str) -> None:
    """Words/s of each run over its epochs (over its updates in files that have no epochs), ratios against one GPU
    at --update-freq 1 where it ran (issue 12's baseline), else at --update-freq 2."""
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = {"one_gpu": "one GPU, --update-freq 2", "two_gpus_fixed": "two GPUs, --fix-batches-to-gpus",
              "two_gpus_grouped": "two GPUs, --grouped-shuffling", "two_gpus_dealt": "two GPUs, batches dealt anew",
              "two_gpus_default": "two GPUs, no dealing option"}
    scalings = results["scaling"]
    if not all(isinstance(ratios, dict) for ratios in scalings.values()):  # files of sessions 16-17: vs one_gpu only
        scalings = {"one_gpu": scalings}
    base = next((name for name in ("one_gpu_update_freq_1", "one_gpu") if name in scalings), next(iter(scalings)))
    epochs = results.get("epochs")  # files before the nineteenth session: updates, one warm-up update for all
    runs_of = results.get("runs_of") or {name: [name] for name in results["records"]}  # REPEATS: several runs
    configuration = {name: config for config, names in runs_of.items() for name in names}
    for name, records in results["records"].items():
        config = configuration[name]
        scaling = scalings[base].get(config) if runs_of[config][0] == name else None  # repeated: the means' ratio
        if config.startswith("one_gpu_update_freq_"):
            labels[config] = "one GPU, --update-freq " + config.rsplit("_", 1)[1]
        run = config.removesuffix("_legacy_ddp")
        label = (labels.get(run, run) + (", legacy_ddp" if run != config else "")
                 + (f", run {runs_of[config].index(name) + 1}" if config != name else ""))
        x = epochs[name] if epochs else [update for update, _ in records]
        ratio = f": {scaling:.2f}x" + (" (the runs' means)" if config != name else "") if scaling else ""
        axis.plot(x, [wps / 1e3 for _, wps in records], marker="o", label=label + ratio)
    if epochs:
        name = runs_of[next(iter(scalings[base]), base)][0]
        start = next(epoch for (update, _), epoch in zip(results["records"][name], epochs[name])
                     if update >= results["warmup_updates"][name])
        axis.axvline(start, color="grey", linestyle=":", label="averages start")
        axis.set_xlabel("epoch")
    else:
        axis.axvline(results["warmup_updates"], color="grey", linestyle=":", label="averages start")
        axis.set_xlabel("update")
    axis.set_ylabel("thousand target words/s (fairseq-train)")
    axis.set_title(f"Multi30k, 2 GPUs vs {labels.get(base, base)} (ratios past the warm-up)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)


PLOTS = {"layer": plot_layer, "e2e": plot_e2e, "distributed": plot_distributed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=sorted(PLOTS))
    parser.add_argument("results")
    parser.add_argument("out")
    args = parser.parse_args()
    with open(args.results) as handle:
        results = json.load(handle)
    PLOTS[args.what](results, args.out)


if __name__ == "__main__":
    main()
