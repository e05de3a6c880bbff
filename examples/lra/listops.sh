#!/usr/bin/env bash
# ListOps (LRA), the original Mega recipe (examples/mega/README.lra.md of facebookresearch/mega).
#   bash examples/lra/listops.sh [extra fairseq-train flags]
# Data: DATA (prepared with scripts/prepare-lra.py listops); by default ListOps is generated with LRA's
# definition and sizes (scripts/generate-listops.py, 96,000 / 2,000 / 2,000 examples, about 2 minutes)
# into work/lra/listops-raw and prepared into work/lra/listops. LISTOPS_TRAIN, LISTOPS_VALID,
# LISTOPS_TEST, LISTOPS_MIN_LENGTH, LISTOPS_MAX_LENGTH change the generated data.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ -z "${DATA:-}" ]; then
    DATA=work/lra/listops
    if [ ! -f "$DATA/label-bin/dict.txt" ]; then
        "$PYTHON" "$REPO/scripts/generate-listops.py" --out-dir work/lra/listops-raw --seed "$SEED" \
            --train "${LISTOPS_TRAIN:-96000}" --valid "${LISTOPS_VALID:-2000}" --test "${LISTOPS_TEST:-2000}" \
            --min-length "${LISTOPS_MIN_LENGTH:-500}" --max-length "${LISTOPS_MAX_LENGTH:-2000}"
        "$PYTHON" "$REPO/scripts/prepare-lra.py" listops --input work/lra/listops-raw --out "$DATA"
    fi
fi
need_data "$DATA" "run scripts/prepare-lra.py listops"
train listops "$DATA" lra-text -a "${ARCH:-mega_lra_listop}" --input-type text \
    --encoder-layers 6 --n-dim 16 --chunk-size "${CHUNK:--1}" \
    --activation-fn silu --attention-activation-fn softmax --norm-type layernorm --sen-rep-type mp \
    --lr 0.001 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 \
    --batch-size 64 --update-freq 1 --max-update 90000 --max-sentences-valid 256 \
    --total-num-update 90000 --warmup-updates 3000 --required-batch-size-multiple 1 "$@"
