#!/usr/bin/env bash
# Two-GPU scaling of fairseq-train on Multi30k: the same model and settings as benchmarks/e2e/e2e_multi30k.sh, once on
# one GPU with --update-freq 2 and once on two GPUs (--distributed-world-size 2, one process a GPU,
# c10d DDP with gradient buckets overlapping the backward), both at the same per-GPU --max-tokens, so
# that every update sees the same number of tokens. Prints words/s of each, the scaling factor, and the
# losses at the logged updates (same data, seed and effective batch: with FIX_BATCHES=0 the same batches
# make each update and the losses agree; with --fix-batches-to-gpus they agree in trend). Writes
# OUT_DIR/distributed.json and OUT_DIR/distributed.png (words/s over updates, when matplotlib is installed).
#   bash benchmarks/e2e/e2e_distributed.sh DATA_BIN OUT_DIR
#   ARCH          mega_wmt_en_de (default) or any other architecture
#   UPDATES       updates per run (default 300); averages past WARMUP_UPDATES (default 150)
#   BUCKET_CAP_MB DDP gradient bucket size (default 25, fairseq's)
#   FIX_BATCHES   1 (default): --fix-batches-to-gpus, each GPU keeps its batches every epoch, so that the
#                 layer graphs of each batch shape are recorded in the first two epochs (without it the
#                 batches move between the GPUs every epoch and each GPU keeps meeting shapes it has not
#                 recorded: 0.16x over 260 updates). 0: fairseq's default, whose losses equal the one-GPU
#                 run's update for update (the same batches in the same updates)
set -euo pipefail
data=$1 out=$2
arch=${ARCH:-mega_wmt_en_de} updates=${UPDATES:-300} warmup_updates=${WARMUP_UPDATES:-150}
bucket=${BUCKET_CAP_MB:-25}
fix_batches=()
[ "${FIX_BATCHES:-1}" = 1 ] && fix_batches=(--fix-batches-to-gpus)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"

train() {  # train NAME [OPTIONS...]
    local name=$1
    shift
    python3 -m fairseq_cli.train "$data" --user-dir "$repo/mega_fairseq" --arch "$arch" --share-all-embeddings \
        --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --weight-decay 0.0001 --lr 7e-4 \
        --lr-scheduler linear_decay --warmup-updates 500 --total-num-update 2000 --max-update "$updates" \
        --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 8192 --fp16 \
        --seed 1 --num-workers 2 --save-dir "$out/$name/checkpoints" --no-save --disable-validation \
        --ddp-backend c10d --bucket-cap-mb "$bucket" --log-format json --log-interval 25 "$@" \
        > "$out/$name.log" 2>&1 || { tail -n 30 "$out/$name.log" >&2; exit 1; }
}

train one_gpu --distributed-world-size 1 --update-freq 2
train two_gpus --distributed-world-size 2 "${fix_batches[@]}"

python3 - "$out" "$warmup_updates" <<'EOF'
"""Words/s of both runs (records past the warm-up), their ratio, and the losses side by side."""
import json
import sys

out, warmup = sys.argv[1], int(sys.argv[2])


def records(name):
    lines = open(f"{out}/{name}.log").read().splitlines()
    return [json.loads(line.split("| train_inner | ", 1)[1]) for line in lines if "| train_inner | " in line]


runs = {name: records(name) for name in ("one_gpu", "two_gpus")}
wps = {name: sum(float(r["wps"]) for r in recs if int(r["num_updates"]) > warmup)
       / max(1, sum(int(r["num_updates"]) > warmup for r in recs)) for name, recs in runs.items()}
summary = {"wps": wps, "scaling": wps["two_gpus"] / wps["one_gpu"], "warmup_updates": warmup,
           "records": {name: [(int(r["num_updates"]), float(r["wps"])) for r in recs] for name, recs in runs.items()},
           "losses": {name: [(int(r["num_updates"]), float(r["loss"])) for r in recs] for name, recs in runs.items()}}
json.dump(summary, open(f"{out}/distributed.json", "w"), indent=1)
print(f"words/s: one GPU (--update-freq 2) {wps['one_gpu']:.0f}, two GPUs {wps['two_gpus']:.0f}: "
      f"{summary['scaling']:.2f}x")
for (update, one), (_, two) in zip(summary["losses"]["one_gpu"], summary["losses"]["two_gpus"]):
    print(f"update {update:>5}: loss {one:.3f} (one GPU) {two:.3f} (two GPUs)")
EOF
if python3 -c "import matplotlib" 2>/dev/null; then
    python3 "$repo/benchmarks/plot_results.py" distributed "$out/distributed.json" "$out/distributed.png" \
        && echo "wrote $out/distributed.png"
fi
