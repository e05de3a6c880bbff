#!/usr/bin/env bash
# Retrieval (AAN, two byte-level documents of 4k), the original Mega recipe.
#   DATA=work/lra/aan bash examples/lra/aan.sh [extra fairseq-train flags]
# DATA: scripts/prepare-lra.py aan --input lra_release/tsv_data --out work/lra/aan
# The classifier sees [u, v, u*v, u-v] (LRA's); --pair-features concat gives the original code's [v, u].
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA=${DATA:-work/lra/aan}
need_data "$DATA" "run scripts/prepare-lra.py aan --input lra_release/tsv_data --out $DATA"
train aan "$DATA" lra-text -a "${ARCH:-mega_lra_aan}" --input-type text \
    --encoder-layers 6 --n-dim 16 --chunk-size "${CHUNK:--1}" \
    --activation-fn silu --attention-activation-fn softmax --norm-type scalenorm --sen-rep-type mp \
    --lr 0.003 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.04 \
    --batch-size 8 --update-freq 8 --max-update 91960 \
    --total-num-update 91960 --warmup-updates 10000 --max-sentences-valid 64 "$@"
