#!/usr/bin/env bash
# Path-X (Pathfinder 128 x 128 = 16384 pixels), the original Mega recipe (8 GPUs: batch 2 x 8 GPUs x
# update-freq 8; on one GPU add --update-freq 64). syncbatchnorm synchronizes over the GPUs.
#   DATA=work/lra/pathfinder128 bash examples/lra/pathx.sh [extra fairseq-train flags]
# DATA: scripts/prepare-lra.py pathfinder --input lra_release/pathfinder128 --resolution 128 --out work/lra/pathfinder128
# WARMUP: the original recipe leaves --warmup-updates to the user; 25000 (a fifth of the run, as for
# Pathfinder) is our default.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA=${DATA:-work/lra/pathfinder128}
need_data "$DATA" "run scripts/prepare-lra.py pathfinder --input lra_release/pathfinder128 --resolution 128 --out $DATA"
train pathx "$DATA" lra-image -a "${ARCH:-mega_lra_pf128}" --input-type image \
    --pixel-normalization 0.5 0.5 \
    --encoder-layers 4 --n-dim 16 --chunk-size "${CHUNK:-16384}" \
    --activation-fn silu --attention-activation-fn laplace --norm-type syncbatchnorm --sen-rep-type mp \
    --encoder-normalize-before \
    --lr 0.01 --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 \
    --batch-size 2 --update-freq 8 --max-update 125000 \
    --total-num-update 125000 --warmup-updates "${WARMUP:-25000}" --warmup-power 2 --max-sentences-valid 12 "$@"
