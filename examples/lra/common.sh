# Shared by the LRA recipes (sourced): paths, the Python to run, and `train`, which runs fairseq-train
# with the settings every original LRA recipe shares, then the recipe's flags, then the caller's
# extra arguments (so any flag can be overridden: `bash examples/lra/listops.sh --max-update 1000`).
#   DATA   the prepared data directory (scripts/prepare-lra.py); the recipes say what they use by default
#   SAVE   checkpoint directory (default: checkpoints/<recipe>)
#   SEED   (default 1);  CHUNK  Mega's --chunk-size (default: the recipe's, -1 = no chunks)
#   ARCH   the architecture (default: the recipe's Mega; e.g. transformer_lra_listop for the baseline)
#   PYTHON (default python3)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
SEED=${SEED:-1}

# train NAME DATA TASK recipe-flags... extra-flags...: fairseq-train, then fairseq-validate of the best
# checkpoint on the test split
train() {
    local name=$1 data=$2 task=$3
    shift 3
    local save=${SAVE:-checkpoints/$name}
    mkdir -p "$save"
    "$PYTHON" -m fairseq_cli.train "$data" --user-dir "$REPO/mega_fairseq" --task "$task" \
        --seed "$SEED" --ddp-backend c10d --find-unused-parameters \
        --criterion lra_cross_entropy --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
        --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 \
        --sentence-avg --lr-scheduler linear_decay --end-learning-rate 0.0 --warmup-init-lr 1e-07 \
        --keep-last-epochs 1 --save-dir "$save" --log-format simple --log-interval 100 --num-workers 0 \
        "$@"
    "$PYTHON" -m fairseq_cli.validate "$data" --user-dir "$REPO/mega_fairseq" --task "$task" \
        --path "$save/checkpoint_best.pt" \
        --valid-subset test --batch-size 16 --criterion lra_cross_entropy --num-workers 0
}

# need_data DIR HINT: stop with a message when a prepared data directory is missing
need_data() {
    if [ ! -d "$1" ]; then
        echo "missing data directory '$1': $2" >&2
        exit 2
    fi
}
