#!/usr/bin/env bash
# Language modeling on the English side of Multi30k: a Mega LM vs a same-size fairseq transformer_lm,
# trained for the same number of updates with the same settings; validation and test perplexity.
#   bash benchmarks/e2e/multi30k_lm.sh mega|transformer DATA_BIN OUT_DIR MAX_UPDATE
# DATA_BIN comes from scripts/prepare-multi30k.sh; its English side (joint sentencepiece pieces)
# is used as the LM corpus. Blocks of 512 tokens across sentences; the Mega attends in chunks of 128.
# Sizes: Mega LM D 512, H 1024, FFN 1024, Z 128, N 16, 6 layers; transformer_lm D 512, FFN 2048, 8 heads, 6 layers.
# Training runs on one GPU whatever the machine has (fairseq-train would otherwise take every visible GPU and
# multiply the batch; the published figures are one-GPU runs).
set -euo pipefail
model=$1 data=$2 out=$3 max_update=$4
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lm_data="$out/lm-data"
mkdir -p "$lm_data"
cp "$data/dict.en.txt" "$lm_data/dict.txt"
for split in train valid test; do
    for ext in bin idx; do cp "$data/$split.en-de.en.$ext" "$lm_data/$split.$ext"; done
done

case "$model" in
    mega) arch=(--arch mega_lm --decoder-hidden-dim 1024 --decoder-ffn-embed-dim 1024 --decoder-chunk-size 128
                --normalize-before --truncation-length 0) ;;
    transformer) arch=(--arch transformer_lm --decoder-normalize-before) ;;
    *) echo "unknown model '$model': use mega or transformer" >&2; exit 2 ;;
esac

python3 -m fairseq_cli.train "$lm_data" --user-dir "$repo/mega_fairseq" --task language_modeling "${arch[@]}" \
    --tokens-per-sample 512 --sample-break-mode none --share-decoder-input-output-embed \
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --weight-decay 0.01 \
    --lr 5e-4 --lr-scheduler linear_decay --warmup-updates 300 --total-num-update "$max_update" \
    --max-update "$max_update" --dropout 0.3 --criterion cross_entropy --max-tokens 8192 --fp16 --seed 1 \
    --distributed-world-size 1 --save-dir "$out/checkpoints" --no-epoch-checkpoints --save-interval 1000 --validate-interval 1000 \
    --log-format simple --log-interval 200 2>&1 | tee "$out/train.log" | grep -E "train_inner|valid on|done training|num. shared"

for split in valid test; do
    echo "$model $split:"
    python3 -m fairseq_cli.eval_lm "$lm_data" --user-dir "$repo/mega_fairseq" --path "$out/checkpoints/checkpoint_last.pt" \
        --gen-subset "$split" --tokens-per-sample 512 --max-tokens 8192 --fp16 2>&1 | grep -E "Evaluated|Loss"
done
