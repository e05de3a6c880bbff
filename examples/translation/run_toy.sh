#!/usr/bin/env bash
# The README's main job, on built-in data: install, generate the toy translation task, train a
# small Mega (about 2-4 CPU minutes), decode the test set with beam search and print its BLEU.
#   WORK_DIR     where data, checkpoints and outputs go (default: work/toy in the repository)
#   MAX_UPDATE   number of training updates (default: 1200)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$repo/scripts/install.sh"
venv=${MEGA_VENV:-$repo/.venv}
export PATH="$venv/bin:$PATH"
work=${WORK_DIR:-$repo/work/toy}
max_update=${MAX_UPDATE:-1200}
mkdir -p "$work"

echo "[toy] generating the toy en->de task in $work/raw"
python "$repo/examples/translation/toy_data.py" "$work/raw"
rm -rf "$work/data-bin"
fairseq-preprocess --source-lang en --target-lang de --joined-dictionary --workers 2 \
    --trainpref "$work/raw/train" --validpref "$work/raw/valid" --testpref "$work/raw/test" \
    --destdir "$work/data-bin" > "$work/preprocess.log" 2>&1

echo "[toy] training a 2+2-layer Mega for $max_update updates (log: $work/train.log)"
rm -rf "$work/checkpoints"
fairseq-train "$work/data-bin" --user-dir "$repo/mega_fairseq" \
    --arch mega_wmt_en_de --encoder-layers 2 --decoder-layers 2 \
    --encoder-embed-dim 64 --encoder-hidden-dim 128 --encoder-ffn-embed-dim 128 \
    --encoder-z-dim 32 --encoder-n-dim 8 --normalize-before --share-all-embeddings \
    --dropout 0.1 --attention-dropout 0.0 --hidden-dropout 0.0 --activation-dropout 0.0 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --lr 3e-3 \
    --lr-scheduler linear_decay --warmup-updates 50 --total-num-update "$max_update" --max-update "$max_update" \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048 \
    --save-dir "$work/checkpoints" --no-epoch-checkpoints --log-format simple --log-interval 100 \
    --seed 1 --num-workers 0 2>&1 | tee "$work/train.log" | grep --line-buffered -E "valid on|done training"

echo "[toy] beam search (beam 5) on the test set"
fairseq-generate "$work/data-bin" --user-dir "$repo/mega_fairseq" --path "$work/checkpoints/checkpoint_best.pt" \
    --beam 5 --lenpen 0.5 --batch-size 128 --scoring sacrebleu > "$work/generate.out" 2>&1
grep -m 3 -A 2 "^S-" "$work/generate.out" | grep -E "^(S|T|H)-" | head -9
tail -n 1 "$work/generate.out"
