#!/usr/bin/env bash
# Image (CIFAR-10, grayscale, 1024 pixels), the original Mega recipe.
#   DATA=work/lra/cifar10 bash examples/lra/cifar10.sh [extra fairseq-train flags]
# DATA: scripts/prepare-lra.py cifar10 --input cifar-10-python.tar.gz --out work/lra/cifar10
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA=${DATA:-work/lra/cifar10}
need_data "$DATA" "run scripts/prepare-lra.py cifar10 --input cifar-10-python.tar.gz --out $DATA"
train cifar10 "$DATA" lra-image -a "${ARCH:-mega_lra_cifar10}" --input-type image \
    --pixel-normalization 0.48 0.24 \
    --encoder-layers 8 --n-dim 16 --chunk-size "${CHUNK:-1024}" \
    --activation-fn silu --attention-activation-fn laplace --norm-type batchnorm --sen-rep-type mp \
    --encoder-normalize-before \
    --lr 0.01 --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.02 \
    --batch-size 50 --update-freq 1 --max-update 180000 \
    --total-num-update 180000 --warmup-updates 9000 --required-batch-size-multiple 1 "$@"
