#!/usr/bin/env bash
# Multi30k en->de: train one model for a fixed number of updates, decode test_2016_flickr with
# beam 5, score detokenized output with sacreBLEU. Run once per model with the same MAX_UPDATE.
#   bash benchmarks/e2e/multi30k_translation.sh mega|transformer DATA_BIN OUT_DIR MAX_UPDATE [STOP_HOURS]
# DATA_BIN comes from scripts/prepare-multi30k.sh (sentencepiece BPE, raw references in DATA_BIN/raw).
# Both models share every optimization setting; the Mega is sized to the Transformer
# (transformer_iwslt_de_en, 6+6 layers, D 512): Mega D 512, H 512, FFN 640, Z 128, N 16.
# STOP_HOURS (optional) stops early on a time budget; the log then says how many updates ran.
# Training runs on one GPU whatever the machine has (fairseq-train would otherwise take every visible
# GPU, which multiplies the batch and changes the run; the published figures are one-GPU runs).
set -euo pipefail
model=$1 data=$2 out=$3 max_update=$4 stop_hours=${5:-0}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"

case "$model" in
    mega) arch=(--arch mega_wmt_en_de --encoder-hidden-dim 512 --encoder-ffn-embed-dim 640) ;;
    transformer) arch=(--arch transformer_iwslt_de_en) ;;
    *) echo "unknown model '$model': use mega or transformer" >&2; exit 2 ;;
esac

python3 -m fairseq_cli.train "$data" --user-dir "$repo/mega_fairseq" "${arch[@]}" --share-all-embeddings \
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --weight-decay 0.0001 \
    --lr 7e-4 --lr-scheduler linear_decay --warmup-updates 500 --total-num-update "$max_update" \
    --max-update "$max_update" --stop-time-hours "$stop_hours" \
    --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 8192 --fp16 --seed 1 --num-workers 2 --distributed-world-size 1 \
    --save-dir "$out/checkpoints" --no-epoch-checkpoints --save-interval 1000 --validate-interval 1000 \
    --log-format simple --log-interval 200 2>&1 | tee "$out/train.log" | grep -E "train_inner|valid on|done training|num. model params"

python3 -m fairseq_cli.generate "$data" --user-dir "$repo/mega_fairseq" --path "$out/checkpoints/checkpoint_last.pt" \
    --gen-subset test --beam 5 --lenpen 1.0 --batch-size 128 --remove-bpe sentencepiece \
    --fp16 > "$out/generate.out" 2>&1
grep "^H-" "$out/generate.out" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 > "$out/test.hyp"
echo "$model: $(grep -c . "$out/test.hyp") hypotheses, updates $(grep -o 'num_updates [0-9]*' "$out/train.log" | tail -1)"
grep "Translated" "$out/generate.out" | sed 's/.*INFO | //'
python3 -m sacrebleu "$data/raw/test.de" -i "$out/test.hyp" -m bleu -w 2 | tee "$out/sacrebleu.json"
