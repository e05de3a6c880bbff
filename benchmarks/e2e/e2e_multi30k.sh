#!/usr/bin/env bash
# End-to-end throughput on Multi30k en->de: fairseq-train a Mega and a Transformer
# (--share-all-embeddings) for the same number of updates at the same --max-tokens and
# optimizer settings as benchmarks/e2e/multi30k_translation.sh (its learning-rate schedule of a 2,000-update
# run, stopped after UPDATES), then time fairseq-generate (beam 5, batch 128) on the test split with
# each trained checkpoint. Each model trains on one GPU, however many the machine has. Prints a table,
# writes OUT_DIR/e2e.json and OUT_DIR/e2e.png (words/s over updates, when matplotlib is installed);
# a failing step prints its log tail.
#   bash benchmarks/e2e/e2e_multi30k.sh DATA_BIN OUT_DIR
#   PAIR             wmt: mega_wmt_en_de vs transformer_wmt_en_de (arch defaults; default);
#                    multi30k: the sizes of benchmarks/e2e/multi30k_translation.sh (Mega H 512, FFN 640)
#                    vs transformer_iwslt_de_en
#   UPDATES          training updates per model (default 400)
#   WARMUP_UPDATES   updates left out of the averages (default 150: two epochs of Multi30k at 8192
#                    tokens, so that every batch shape has been seen once; fairseq's Transformer
#                    pays ~0.1 s for each new shape in its first epoch, Mega does not)
#   MAX_TOKENS       --max-tokens of both models (default 8192)
#   PRECISION        fp16 | bf16 | fp32 (default fp16 with CUDA, fp32 without; fp16/bf16 need CUDA).
#                    bf16: Mega trains with --bf16-autocast; fairseq's transformer has no bf16 on GPUs
#                    (its --bf16 means TPU), so it trains with --fp16; both decode with --fp16
#                    (--bf16-autocast covers the model's forward, not fairseq-generate's decoder steps).
#   LOG_INTERVAL     updates per train_inner record (default 25); train wps and ups average the
#                    records past WARMUP_UPDATES
#   EXTRA_MEGA_ARGS  extra fairseq-train options for Mega only, e.g. "--ema-impl triton"
#   GENERATE         1 (default): also time fairseq-generate; 0: training only (models trained for a
#                    few hundred updates decode unrepresentatively long hypotheses)
# Peak memory: fairseq logs gb_free = GPU total - peak allocated of the update before each record;
# peak_gb = total - min(gb_free) over the records (GiB, CUDA only). Generation speed is fairseq-generate's
# own figure (model loading excluded, first batch included); compare tokens/s too, since the two models'
# hypotheses can differ in length.
set -euo pipefail
data=$1 out=$2
updates=${UPDATES:-400} max_tokens=${MAX_TOKENS:-8192} log_interval=${LOG_INTERVAL:-25}
warmup_updates=${WARMUP_UPDATES:-150} pair=${PAIR:-wmt} generate=${GENERATE:-1}
read -ra extra_mega <<< "${EXTRA_MEGA_ARGS:-}"
total_updates=$((updates > 2000 ? updates : 2000))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cuda=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
precision=${PRECISION:-$([ "$cuda" = 1 ] && echo fp16 || echo fp32)}

device=()
if [ "$cuda" = 0 ]; then
    device=(--cpu)
    if [ "$precision" != fp32 ]; then echo "PRECISION=$precision needs CUDA; use PRECISION=fp32" >&2; exit 2; fi
fi
case "$precision" in
    fp16) mega_train=(--fp16) transformer_train=(--fp16) decode=(--fp16) ;;
    bf16) mega_train=(--bf16-autocast) transformer_train=(--fp16) decode=(--fp16) ;;
    fp32) mega_train=() transformer_train=() decode=() ;;
    *) echo "unknown PRECISION '$precision': use fp16, bf16 or fp32" >&2; exit 2 ;;
esac

fail() {  # fail LOG: show the end of a failed step's log and stop
    tail -n 20 "$1" >&2
    exit 1
}

run_model() {  # run_model NAME ARCH [TRAIN OPTIONS...]: train, then decode the test split
    local name=$1 arch=$2
    shift 2
    mkdir -p "$out/$name"
    echo "[e2e] $name: training $updates updates (log: $out/$name/train.log)"
    python3 -m fairseq_cli.train "$data" --user-dir "$repo/mega_fairseq" --arch "$arch" --share-all-embeddings \
        --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --weight-decay 0.0001 \
        --lr 7e-4 --lr-scheduler linear_decay --warmup-updates 500 --total-num-update "$total_updates" \
        --max-update "$updates" --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --max-tokens "$max_tokens" --seed 1 --num-workers 2 --distributed-world-size 1 "${device[@]}" "$@" \
        --save-dir "$out/$name/checkpoints" --no-epoch-checkpoints --save-interval 1000 --disable-validation \
        --log-format json --log-interval "$log_interval" > "$out/$name/train.log" 2>&1 || fail "$out/$name/train.log"
    [ "$generate" = 1 ] || return 0
    echo "[e2e] $name: beam 5 on the test split (output: $out/$name/generate.out)"
    python3 -m fairseq_cli.generate "$data" --user-dir "$repo/mega_fairseq" \
        --path "$out/$name/checkpoints/checkpoint_last.pt" --gen-subset test --beam 5 --lenpen 1.0 \
        --batch-size 128 "${device[@]}" "${decode[@]}" > "$out/$name/generate.out" 2>&1 \
        || fail "$out/$name/generate.out"
}

case "$pair" in
    wmt) mega_arch=(mega_wmt_en_de) transformer_arch=transformer_wmt_en_de ;;
    multi30k) mega_arch=(mega_wmt_en_de --encoder-hidden-dim 512 --encoder-ffn-embed-dim 640)
              transformer_arch=transformer_iwslt_de_en ;;
    *) echo "unknown PAIR '$pair': use wmt or multi30k" >&2; exit 2 ;;
esac
mkdir -p "$out"
run_model mega "${mega_arch[@]}" "${mega_train[@]}" "${extra_mega[@]}"
run_model transformer "$transformer_arch" "${transformer_train[@]}"

python3 - "$out" "$precision" "$updates" "$max_tokens" "${EXTRA_MEGA_ARGS:-}" "$warmup_updates" "$pair" "$generate" <<'EOF'
"""Read both models' train.log and generate.out; print the table and write e2e.json."""
import json
import re
import sys

out, precision, updates, max_tokens, extra_mega, warmup_updates, pair, generate = sys.argv[1:]
train_precision = {"fp16": ("fp16", "fp16"), "bf16": ("bf16-autocast", "fp16"), "fp32": ("fp32", "fp32")}
decode_precision = "fp32" if precision == "fp32" else "fp16"


def number(text):
    return float(text.replace(",", ""))


def summarize(name, train_as):
    train_log = open(f"{out}/{name}/train.log").read()
    records = [json.loads(line.split("| train_inner | ", 1)[1])
               for line in train_log.splitlines() if "| train_inner | " in line]
    timed = [r for r in records if int(r["num_updates"]) > int(warmup_updates)] or records[-1:]
    params = re.search(r"num\. shared model params: ([\d,]+)", train_log)
    total_gb = re.search(r"total memory = ([\d.]+) GB", train_log)
    gb_free = [float(r["gb_free"]) for r in records if "gb_free" in r]
    summary = {
        "params": int(number(params.group(1))),
        "train_precision": train_as,
        "train_records_averaged": len(timed),
        "train_wps": sum(float(r["wps"]) for r in timed) / len(timed),
        "train_ups": sum(float(r["ups"]) for r in timed) / len(timed),
        "peak_gb": float(total_gb.group(1)) - min(gb_free) if total_gb and gb_free else None,
        "records": [{"num_updates": int(r["num_updates"]), "wps": float(r["wps"]), "ups": float(r["ups"]),
                     "wall": float(r["wall"])} for r in records],
    }
    if generate == "1":
        translated = re.search(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s "
                               r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)", open(f"{out}/{name}/generate.out").read())
        summary.update({
            "decode_precision": decode_precision,
            "generate_sentences": int(number(translated.group(1))),
            "generate_seconds": float(translated.group(3)),
            "generate_sentences_per_s": float(translated.group(4)),
            "generate_tokens_per_s": float(translated.group(5)),
        })
    return summary


models = {name: summarize(name, train_as)
          for name, train_as in zip(("mega", "transformer"), train_precision[precision])}
mega, transformer = models["mega"], models["transformer"]
ratios = {key: mega[key] / transformer[key]
          for key in ("train_wps", "train_ups", "generate_sentences_per_s", "generate_tokens_per_s") if key in mega}
result = {"pair": pair, "updates": int(updates), "warmup_updates": int(warmup_updates),
          "max_tokens": int(max_tokens), "precision": precision,
          "extra_mega_args": extra_mega, "models": models, "ratios_mega_over_transformer": ratios}
json.dump(result, open(f"{out}/e2e.json", "w"), indent=2)

print(f"\nPAIR={pair}: {updates} updates (averages past update {warmup_updates}), --max-tokens {max_tokens}, "
      f"PRECISION={precision}, EXTRA_MEGA_ARGS='{extra_mega}'")
print(f"{'model':<12} {'params':>8} {'train as':>14} {'train wps':>10} {'ups':>6} {'peak GiB':>8} "
      f"{'decode as':>9} {'sentences/s':>11} {'tokens/s':>9}")
for name, m in models.items():
    peak = f"{m['peak_gb']:.1f}" if m["peak_gb"] is not None else "-"
    decoded = (f"{m['decode_precision']:>9} {m['generate_sentences_per_s']:>11.2f} {m['generate_tokens_per_s']:>9.1f}"
               if "decode_precision" in m else f"{'-':>9} {'-':>11} {'-':>9}")
    print(f"{name:<12} {m['params'] / 1e6:>7.1f}M {m['train_precision']:>14} {m['train_wps']:>10.0f} "
          f"{m['train_ups']:>6.2f} {peak:>8} {decoded}")
print("mega/transformer: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))
if precision == "bf16":
    print("note: the transformer trained with --fp16 (fairseq's --bf16 means TPU); both decoded with --fp16")
print(f"wrote {out}/e2e.json")
EOF
if python3 -c "import matplotlib" 2>/dev/null; then
    python3 "$repo/benchmarks/plot_results.py" e2e "$out/e2e.json" "$out/e2e.png" && echo "wrote $out/e2e.png"
else
    echo "no plot: matplotlib is not installed"
fi
