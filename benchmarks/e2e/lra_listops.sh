#!/usr/bin/env bash
# Mega vs the Transformer baseline on generated ListOps (LRA's definition), same data, same recipe
# (examples/lra/listops.sh, the original Mega flags), same number of updates; prints both accuracies.
#   bash benchmarks/e2e/lra_listops.sh OUT_DIR [MAX_UPDATE]          (MAX_UPDATE default 5000)
# The two runs differ by the architecture only: mega_lra_listop vs transformer_lra_listop (fairseq's
# Transformer encoder layers). Each is trained with fairseq-train, its best checkpoint (validation
# accuracy) evaluated on the test split with fairseq-validate.
# Environment:
#   TRAIN VALID TEST            generated examples (default 96000 2000 2000, LRA's sizes; about 2 min)
#   MIN_LENGTH MAX_LENGTH       token lengths, exclusive (default 500 2000, LRA's); DEPTH ARGS (10 10)
#   WARMUP                      warmup updates (default MAX_UPDATE / 30, the recipe's 3000 of 90000)
#   FP16                        1: --fp16 for both (default 1 with a CUDA GPU, else 0)
#   COMMON_ARGS                 extra fairseq-train flags for both runs (e.g. smaller models on a CPU)
#   MEGA_ARGS TRANSFORMER_ARGS  extra flags for one run; the Transformer's default
#                               "--batch-size 32 --update-freq 2" keeps the recipe's 64 examples per
#                               update with half the attention memory
#   GEN_JOBS                    processes generating the data (default 1)
#   PARALLEL                    1: train both models at the same time (one GPU has room for both)
#   PYTHON                      (default python3)
# Writes OUT_DIR/{listops-raw,data} and OUT_DIR/{mega,transformer}/{checkpoints,train.log}, and
# OUT_DIR/summary.json.
set -euo pipefail
out=${1:?usage: bash benchmarks/e2e/lra_listops.sh OUT_DIR [MAX_UPDATE]}
max_update=${2:-5000}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-python3}
warmup=${WARMUP:-$(( max_update / 30 > 0 ? max_update / 30 : 1 ))}
if [ -z "${FP16:-}" ]; then
    FP16=$("$python" -c "import torch; print(int(torch.cuda.is_available()))")
fi
fp16=(); [ "$FP16" = 1 ] && fp16=(--fp16)
transformer_args=${TRANSFORMER_ARGS---batch-size 32 --update-freq 2}
mkdir -p "$out"

if [ ! -f "$out/data/label-bin/dict.txt" ]; then
    "$python" "$repo/scripts/generate-listops.py" --out-dir "$out/listops-raw" --seed 1 \
        --train "${TRAIN:-96000}" --valid "${VALID:-2000}" --test "${TEST:-2000}" \
        --min-length "${MIN_LENGTH:-500}" --max-length "${MAX_LENGTH:-2000}" \
        --max-depth "${DEPTH:-10}" --max-args "${ARGS:-10}" --jobs "${GEN_JOBS:-1}"
    "$python" "$repo/scripts/prepare-lra.py" listops --input "$out/listops-raw" --out "$out/data"
fi

train_one() {
    local model=$1 arch extra start
    case $model in
        mega) arch=mega_lra_listop extra=${MEGA_ARGS:-} ;;
        transformer) arch=transformer_lra_listop extra=$transformer_args ;;
    esac
    mkdir -p "$out/$model"
    start=$(date +%s)
    # shellcheck disable=SC2086  # COMMON_ARGS and the per-model flags are word lists
    ARCH=$arch DATA="$out/data" SAVE="$out/$model/checkpoints" PYTHON="$python" SEED=1 \
        bash "$repo/examples/lra/listops.sh" --max-update "$max_update" --total-num-update "$max_update" \
        --warmup-updates "$warmup" --no-epoch-checkpoints "${fp16[@]}" ${COMMON_ARGS:-} $extra \
        > "$out/$model/train.log" 2>&1 || { tail -30 "$out/$model/train.log" >&2; return 1; }
    echo "$(( $(date +%s) - start ))" > "$out/$model/seconds"
}

if [ "${PARALLEL:-0}" = 1 ]; then
    train_one mega & mega_pid=$!
    train_one transformer & transformer_pid=$!
    wait "$mega_pid" && wait "$transformer_pid"
else
    train_one mega
    train_one transformer
fi

"$python" - "$out" "$max_update" <<'EOF'
import json, re, sys
out, max_update = sys.argv[1], int(sys.argv[2])
summary = {}
for model in ("mega", "transformer"):
    log = open(f"{out}/{model}/train.log", encoding="utf-8").read()
    valid = [float(a) for a in re.findall(r"valid on 'valid' subset \| .*?accuracy ([\d.]+)", log)]
    test = re.findall(r"valid on 'test' subset \| loss ([\d.]+) \| accuracy ([\d.]+)", log)
    updates = re.findall(r"num_updates (\d+)", log)
    params = re.search(r"num\. shared model params: ([\d,]+)", log)
    summary[model] = {
        "arch": {"mega": "mega_lra_listop", "transformer": "transformer_lra_listop"}[model],
        "parameters": int(params.group(1).replace(",", "")) if params else None,
        "updates": int(updates[-1]) if updates else 0,
        "best_valid_accuracy": max(valid) if valid else None,
        "test_accuracy": float(test[-1][1]) if test else None,
        "train_and_eval_seconds": int(open(f"{out}/{model}/seconds").read()),
    }
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"ListOps, {max_update} updates, same data and recipe (test accuracy of the best-validation checkpoint):")
for model, row in summary.items():
    print(f"  {model:12s} {row['arch']:24s} params {row['parameters']:>11,}  updates {row['updates']:>6}  "
          f"valid {row['best_valid_accuracy']:6.2f}  test {row['test_accuracy']:6.2f}  "
          f"({row['train_and_eval_seconds']} s)")
EOF
