#!/usr/bin/env bash
# Pathfinder (32 x 32 = 1024 pixels), the original Mega recipe.
#   DATA=work/lra/pathfinder32 bash examples/lra/pathfinder.sh [extra fairseq-train flags]
# DATA: scripts/prepare-lra.py pathfinder --input lra_release/pathfinder32 --resolution 32 --out work/lra/pathfinder32
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA=${DATA:-work/lra/pathfinder32}
need_data "$DATA" "run scripts/prepare-lra.py pathfinder --input lra_release/pathfinder32 --resolution 32 --out $DATA"
train pathfinder32 "$DATA" lra-image -a "${ARCH:-mega_lra_pf32}" --input-type image \
    --pixel-normalization 0.5 0.5 \
    --encoder-layers 6 --n-dim 16 --chunk-size "${CHUNK:-1024}" \
    --activation-fn silu --attention-activation-fn laplace --norm-type batchnorm --sen-rep-type mp \
    --encoder-normalize-before \
    --lr 0.01 --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 \
    --batch-size 128 --update-freq 1 --max-update 250000 \
    --total-num-update 250000 --warmup-updates 50000 --max-sentences-valid 512 "$@"
