#!/usr/bin/env bash
# The original Mega WMT'16 en-de recipe with stock fairseq commands: train, generate, score.
#   bash examples/translation/wmt16_en_de.sh [DATA_BIN] [SAVE_DIR]
# DATA_BIN comes from `bash scripts/prepare-wmt16-en-de.sh` (default data-bin/wmt16_en_de_bpe32k).
# The original run used 8 GPUs with --max-tokens 8192 each; with fewer GPUs raise --update-freq
# (UPDATE_FREQ=8 on one GPU) to keep 65k tokens per update. Set STAGES to skip steps, e.g.
# STAGES="generate score". FP="--fp16" by default. --fix-batches-to-gpus keeps each GPU's batches every
# epoch, so that each GPU records the layer graphs of its batch shapes once (README, Distributed training).
set -euo pipefail
data=${1:-data-bin/wmt16_en_de_bpe32k}
save=${2:-checkpoints/mega_wmt16_en_de}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stages=${STAGES:-train generate score}
update_freq=${UPDATE_FREQ:-1}
fp=${FP:---fp16}
mkdir -p "$save"

if [[ " $stages " == *" train "* ]]; then
    fairseq-train "$data" --user-dir "$repo/mega_fairseq" \
        --seed 1 --ddp-backend c10d --fix-batches-to-gpus --valid-subset valid -s en -t de \
        --eval-bleu --eval-bleu-remove-bpe '@@ ' --eval-tokenized-bleu --eval-bleu-detok space \
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
        -a mega_wmt_en_de --encoder-layers 6 --decoder-layers 6 \
        --activation-fn silu --attention-activation-fn softmax \
        --encoder-n-dim 16 --encoder-chunk-size -1 \
        --normalization-type layernorm --truncation-length 0 \
        --optimizer adam --lr 1e-3 --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --max-tokens 8192 --batch-size 1024 --share-all-embeddings \
        --dropout 0.15 --attention-dropout 0.1 --hidden-dropout 0.1 --activation-dropout 0.1 --weight-decay 0.05 \
        --lr-scheduler linear_decay --total-num-update 500000 --end-learning-rate 0.0 \
        --warmup-updates 4000 --warmup-init-lr 1e-07 --max-update 500000 \
        --keep-last-epochs 5 --keep-interval-updates 1 --update-freq "$update_freq" --save-interval-updates 5000 \
        --save-dir "$save" --log-format simple --log-interval 100 --num-workers 0 $fp
fi

if [[ " $stages " == *" generate "* ]]; then
    fairseq-generate "$data" --user-dir "$repo/mega_fairseq" --gen-subset test -s en -t de \
        --path "$save/checkpoint_best.pt" --batch-size 300 --remove-bpe '@@ ' --beam 5 --lenpen 0.5 \
        > "$save/gen.out"
fi

if [[ " $stages " == *" score "* ]]; then
    # Tokenized BLEU with compound splitting, as the original evaluation (compound_split_bleu.sh).
    split_compounds() { perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'; }
    grep ^H- "$save/gen.out" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 | split_compounds > "$save/gen.sys"
    grep ^T- "$save/gen.out" | sed 's/^T-//' | sort -n -k1,1 | cut -f2 | split_compounds > "$save/gen.ref"
    echo "compound-split tokenized BLEU:"
    fairseq-score --sys "$save/gen.sys" --ref "$save/gen.ref"
    # SacreBLEU on detokenized output against the raw newstest2014 references kept by the data script.
    grep ^H- "$save/gen.out" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
        | sacremoses -l de detokenize > "$save/gen.detok"
    echo "SacreBLEU (detokenized):"
    sacrebleu "$data/raw/test.de" -i "$save/gen.detok" -m bleu -b
fi
