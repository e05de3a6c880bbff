#!/usr/bin/env bash
# Text (IMDB, byte level, 4k), the original Mega recipe.
#   DATA=work/lra/imdb bash examples/lra/imdb.sh [extra fairseq-train flags]
# DATA: scripts/prepare-lra.py imdb --input aclImdb --out work/lra/imdb
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA=${DATA:-work/lra/imdb}
need_data "$DATA" "run scripts/prepare-lra.py imdb --input aclImdb --out $DATA"
train imdb "$DATA" lra-text -a "${ARCH:-mega_lra_imdb}" --input-type text \
    --encoder-layers 4 --n-dim 16 --chunk-size "${CHUNK:--1}" \
    --activation-fn silu --attention-activation-fn softmax --norm-type scalenorm --sen-rep-type mp \
    --lr 0.004 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 \
    --batch-size 25 --update-freq 2 --max-update 25000 --required-batch-size-multiple 1 \
    --total-num-update 25000 --warmup-updates 10000 --max-sentences-valid 100 "$@"
