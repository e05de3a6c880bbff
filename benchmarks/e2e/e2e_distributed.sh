#!/usr/bin/env bash
# Two-GPU scaling of fairseq-train on Multi30k: the same model and settings as benchmarks/e2e/e2e_multi30k.sh, on
# one GPU at each --update-freq of ONE_GPU_UPDATE_FREQS and on two GPUs (--distributed-world-size 2, one process
# a GPU, fairseq's legacy_ddp: the plugin's default with layer graphs) for each way of dealing batches in BATCHES,
# all at the same per-GPU --max-tokens. Prints words/s of each run (the mean of its records past the warm-up, and
# the lowest and highest), the scaling factors, each configuration's mean update (ms, from the records' updates/s,
# and target words) with what 2 GPUs add to one GPU's update at --update-freq 1, and the losses at the logged
# updates of the runs with as many tokens an update (one GPU at --update-freq 2, 2 GPUs); warns when other processes compute on the GPUs before a
# run. Writes OUT_DIR/distributed.json and OUT_DIR/distributed.png (words/s over epochs, when matplotlib is
# installed). About 8 minutes on 2 x H200 with the defaults (~2.5 minutes a run, most of it compilation).
#   bash benchmarks/e2e/e2e_distributed.sh DATA_BIN OUT_DIR
#   ARCH          mega_wmt_en_de (default) or any other architecture
#   UPDATES       updates of the 2-GPU runs (default 300); averages past WARMUP_UPDATES (default 150). A one-GPU
#                 run at --update-freq F runs UPDATES x 2 / F updates and averages past WARMUP_UPDATES x 2 / F:
#                 the same epochs as the 2-GPU runs (a GPU records the layer graphs of its batch shapes over its
#                 first epochs, and one GPU at --update-freq 1 takes twice the updates for an epoch: counted from
#                 the same update, it would still be recording)
#   REPEATS       how many times each run is made (default 1): the one-GPU runs, then the 2-GPU runs, then all
#                 backwards, and so on (one GPU, 2 GPUs, 2 GPUs, one GPU at REPEATS=2), so that a host that speeds
#                 up or slows down steadily over the call (measured: 13% between two runs of one call) weighs on
#                 every configuration alike. Words/s of a configuration is the mean of its runs; the ratios of
#                 each repeat are printed too. Run logs are named NAME_runR
#   MAX_TOKENS    --max-tokens of every GPU's batch (default 8192): the host's work per batch is about the
#                 same at any size, so larger batches give the GPUs a larger share of an update
#   BUCKET_CAP_MB DDP gradient bucket size (default 25, fairseq's)
#   DDP_BACKENDS  fairseq's --ddp-backend of the 2-GPU runs, one run each per way of BATCHES (default legacy_ddp):
#                 c10d        torch's DistributedDataParallel, all-reduce of gradient buckets overlapping the
#                             backward (torch.compile splits the layer graphs at the buckets)
#                 legacy_ddp  fairseq's: one all-reduce of all gradients after the backward (batched by the
#                             plugin: batched_copies), the layer graphs whole
#   ONE_GPU_UPDATE_FREQS  the one-GPU runs' --update-freq, one run each (default "1 2"; 1: fairseq-train's default
#                 at the same per-GPU --max-tokens, the baseline of issue 12's words/s target, each update paying
#                 the optimizer's host work for one batch; 2: the same tokens per update and loss curve as 2 GPUs,
#                 the optimizer's host work shared by two batches). Every 2-GPU run is compared with each.
#   BATCHES       how the 2-GPU runs deal batches, one run each (default "fixed"):
#                 fixed    --fix-batches-to-gpus (the plugin's default with layer graphs on several GPUs): each
#                          GPU keeps its batches every epoch (order shuffled per GPU), so that it records the
#                          layer graphs of its batch shapes in two epochs
#                 grouped  --grouped-shuffling --update-epoch-batch-itr False: each GPU keeps its batches too,
#                          and the GPUs' batches of an update are neighbours in length (without the second
#                          flag fairseq rebuilds its iterator and data loader every epoch: 0.40x on 2 x H200)
#                 default  no option: what fairseq-train does without one (the plugin sets --fix-batches-to-gpus
#                          with layer graphs; fairseq's own default, batches dealt anew every epoch, made every
#                          GPU keep meeting shapes it had not recorded: 0.16x over 260 updates on 2 x H200)
set -euo pipefail
data=$1 out=$2
arch=${ARCH:-mega_wmt_en_de} updates=${UPDATES:-300} warmup_updates=${WARMUP_UPDATES:-150}
max_tokens=${MAX_TOKENS:-8192} one_gpu_update_freqs=${ONE_GPU_UPDATE_FREQS:-1 2} repeats=${REPEATS:-1}
bucket=${BUCKET_CAP_MB:-25}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"

others_on_gpus() {  # the processes already computing on a GPU (a leftover run would slow the next one)
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true
}

train() {  # train NAME UPDATES [OPTIONS...]
    local name=$1 run_updates=$2
    shift 2
    local others
    others=$(others_on_gpus)
    [[ -z $others ]] || echo "warning: before $name, other processes compute on the GPUs: $others" >&2
    python3 -m fairseq_cli.train "$data" --user-dir "$repo/mega_fairseq" --arch "$arch" --share-all-embeddings \
        --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --weight-decay 0.0001 --lr 7e-4 \
        --lr-scheduler linear_decay --warmup-updates 500 --total-num-update 2000 --max-update "$run_updates" \
        --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$max_tokens" --fp16 \
        --seed 1 --num-workers 2 --save-dir "$out/$name/checkpoints" --no-save --disable-validation \
        --bucket-cap-mb "$bucket" --log-format json --log-interval 25 "$@" \
        > "$out/$name.log" 2>&1 || { tail -n 30 "$out/$name.log" >&2; exit 1; }
}

dealing_options() {  # the fairseq options of a BATCHES way
    case $1 in
        fixed) echo --fix-batches-to-gpus ;;
        grouped) echo --grouped-shuffling --update-epoch-batch-itr False ;;
        default) ;;
        *) echo "BATCHES: unknown way '$1'; choose from fixed, grouped, default" >&2; return 2 ;;
    esac
}
for batches in ${BATCHES:-fixed}; do dealing_options "$batches" > /dev/null; done
for backend in ${DDP_BACKENDS:-legacy_ddp}; do
    case $backend in
        c10d|legacy_ddp) ;;
        *) echo "DDP_BACKENDS: unknown backend '$backend'; choose from c10d, legacy_ddp" >&2; exit 2 ;;
    esac
done

[[ $max_tokens =~ ^[1-9][0-9]*$ ]] || { echo "MAX_TOKENS: '$max_tokens' is not a positive integer" >&2; exit 2; }
[[ $repeats =~ ^[1-9][0-9]*$ ]] || { echo "REPEATS: '$repeats' is not a positive integer" >&2; exit 2; }
for freq in $one_gpu_update_freqs; do
    [[ $freq =~ ^[1-9][0-9]*$ ]] || { echo "ONE_GPU_UPDATE_FREQS: '$freq' is not a positive integer" >&2; exit 2; }
done

configurations=()  # "NAME UPDATES WARMUP_UPDATES OPTIONS..."
for freq in $one_gpu_update_freqs; do
    name=one_gpu
    [[ $freq == 2 ]] || name=one_gpu_update_freq_$freq
    configurations+=("$name $((updates * 2 / freq)) $((warmup_updates * 2 / freq)) --distributed-world-size 1 \
--update-freq $freq --ddp-backend c10d")
done
for batches in ${BATCHES:-fixed}; do
    for backend in ${DDP_BACKENDS:-legacy_ddp}; do
        name=two_gpus_$batches
        [[ $backend == c10d ]] || name=${name}_$backend
        configurations+=("$name $updates $warmup_updates --distributed-world-size 2 --ddp-backend $backend \
$(dealing_options "$batches")")
    done
done

runs=()
for ((repeat = 1; repeat <= repeats; repeat++)); do
    order=("${configurations[@]}")
    if ((repeat % 2 == 0)); then
        order=()
        for ((i = ${#configurations[@]} - 1; i >= 0; i--)); do order+=("${configurations[i]}"); done
    fi
    for configuration in "${order[@]}"; do
        read -r name run_updates run_warmup options <<< "$configuration"
        ((repeats == 1)) || name=${name}_run$repeat
        train "$name" "$run_updates" $options
        runs+=("$name:$run_warmup")
    done
done

python3 - "$out" "${runs[@]}" <<'EOF'
"""Words/s of every configuration (the mean over its runs of each run's records past its warm-up update), each 2-GPU
configuration's ratio to each one-GPU configuration (and, with repeats, each repeat's), the losses side by side.
Arguments: OUT_DIR RUN:WARMUP_UPDATE... (RUN: a configuration's name, with _runR when repeated)."""
import json
import re
import statistics
import sys

out = sys.argv[1]
warmup = {name: int(update) for name, update in (arg.rsplit(":", 1) for arg in sys.argv[2:])}
names = list(warmup)
configuration = {name: re.sub(r"_run\d+$", "", name) for name in names}
configurations = list(dict.fromkeys(configuration.values()))
runs_of = {config: [name for name in names if configuration[name] == config] for config in configurations}
one_gpu_names = [config for config in configurations if config.startswith("one_gpu")]
two_gpu_names = [config for config in configurations if config not in one_gpu_names]
repeats = len(runs_of[configurations[0]])


def records(name):
    lines = open(f"{out}/{name}.log").read().splitlines()
    return [json.loads(line.split("| train_inner | ", 1)[1]) for line in lines if "| train_inner | " in line]


runs = {name: records(name) for name in names}
past_records = {name: [r for r in recs if int(r["num_updates"]) > warmup[name]] for name, recs in runs.items()}
for name, kept in past_records.items():
    if not kept:
        sys.exit(f"{out}/{name}.log has no record past update {warmup[name]}: raise UPDATES above WARMUP_UPDATES")
past = {name: [float(r["wps"]) for r in kept] for name, kept in past_records.items()}
run_wps = {name: sum(v) / len(v) for name, v in past.items()}


def mean_over_records(value):
    """For each configuration, the mean of value(record) over its runs' records past the warm-up."""
    return {config: statistics.mean(value(r) for name in names for r in past_records[name])
            for config, names in runs_of.items()}


update_ms = mean_over_records(lambda r: 1000 / float(r["ups"]))
update_words = mean_over_records(lambda r: float(r["wpb"]))
wps = {config: sum(run_wps[name] for name in runs) / len(runs) for config, runs in runs_of.items()}
summary = {"wps": wps,
           "wps_range": {config: [min(min(past[name]) for name in runs), max(max(past[name]) for name in runs)]
                         for config, runs in runs_of.items()},
           "scaling": {base: {name: wps[name] / wps[base] for name in two_gpu_names} for base in one_gpu_names},
           "run_wps": run_wps,
           "scaling_by_repeat": {base: {name: [run_wps[two] / run_wps[one]
                                               for one, two in zip(runs_of[base], runs_of[name])]
                                        for name in two_gpu_names} for base in one_gpu_names},
           "update_ms": update_ms, "update_words": update_words, "runs_of": runs_of,
           "warmup_updates": warmup,
           "records": {name: [(int(r["num_updates"]), float(r["wps"])) for r in recs] for name, recs in runs.items()},
           "epochs": {name: [float(r["update"]) for r in recs] for name, recs in runs.items()},
           "losses": {name: [(int(r["num_updates"]), float(r["loss"])) for r in recs] for name, recs in runs.items()}}
json.dump(summary, open(f"{out}/distributed.json", "w"), indent=1)
print("words/s past the warm-up: " + "; ".join(
    f"{config} {wps[config]:.0f} (updates > {warmup[runs_of[config][0]]}"
    + (f"; runs {', '.join(f'{run_wps[name]:.0f}' for name in runs_of[config])})" if repeats > 1 else ")")
    for config in configurations))
print("lowest-highest record: " + "; ".join(
    f"{config} {v[0]:.0f}-{v[1]:.0f}" for config, v in summary["wps_range"].items()))
for base in one_gpu_names:
    print(f"2 GPUs against {base}: " + "; ".join(
        f"{name} {summary['scaling'][base][name]:.2f}x"
        + (f" (by repeat: {', '.join(f'{r:.2f}x' for r in summary['scaling_by_repeat'][base][name])})"
           if repeats > 1 else "") for name in two_gpu_names))
print("an update past the warm-up (ms, target words): " + "; ".join(
    f"{config} {update_ms[config]:.1f} ms, {update_words[config]:,.0f}" for config in configurations))
if "one_gpu_update_freq_1" in one_gpu_names:  # one batch a GPU in both: what 2 GPUs add to an update
    print("2 GPUs' update against one GPU's at --update-freq 1: " + "; ".join(
        f"{name} {update_ms[name] - update_ms['one_gpu_update_freq_1']:+.1f} ms" for name in two_gpu_names))
first_runs = [runs[0] for runs in runs_of.values()]
same_batch = [name for name in first_runs if not name.startswith("one_gpu_update_freq_")]  # as many tokens an update
print("update  " + "  ".join(f"{name:>16}" for name in same_batch) + "   (loss)")
for row in zip(*(summary["losses"][name] for name in same_batch)):
    print(f"{row[0][0]:>6}  " + "  ".join(f"{loss:>16.3f}" for _, loss in row))
EOF
if python3 -c "import matplotlib" 2>/dev/null; then
    python3 "$repo/benchmarks/plot_results.py" distributed "$out/distributed.json" "$out/distributed.png" \
        && echo "wrote $out/distributed.png"
fi
