#!/usr/bin/env bash
# Raw Speech Commands (SC10, 16 kHz waveforms of 16000 samples), the original Mega recipes
# (examples/mega/README.sc.md of facebookresearch/mega): MODEL=base (default, lr 0.01) or big (lr 0.008).
#   DATA=work/speech_commands bash examples/speech_commands/sc_raw.sh [extra fairseq-train flags]
#   ARCHIVE=speech_commands_v0.02.tar.gz bash examples/speech_commands/sc_raw.sh   # prepare first
# DATA holds raw/ (scripts/prepare-speech-commands.py); add --sc-all-classes --sentence-class-num 35 for
# all 35 words (prepared with --all-classes), --sc-sample-rate 8000 to resample, --sc-dropped-rate 50 for
# the dropped-samples setting. SAVE, SEED, PYTHON as the LRA recipes.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
SEED=${SEED:-1}
DATA=${DATA:-work/speech_commands}
case "${MODEL:-base}" in
    base) arch=mega_sc_raw_base lr=0.01 ;;
    big) arch=mega_sc_raw_big lr=0.008 ;;
    *) echo "MODEL must be base or big, got '$MODEL'" >&2; exit 2 ;;
esac
if [ -n "${ARCHIVE:-}" ] && [ ! -f "$DATA/raw/classes.txt" ]; then
    "$PYTHON" "$REPO/scripts/prepare-speech-commands.py" --input "$ARCHIVE" --out "$DATA"
fi
if [ ! -d "$DATA" ]; then
    echo "missing data directory '$DATA': run scripts/prepare-speech-commands.py --input ARCHIVE --out $DATA" >&2
    exit 2
fi
SAVE=${SAVE:-checkpoints/sc_raw_${MODEL:-base}}
mkdir -p "$SAVE"
"$PYTHON" -m fairseq_cli.train "$DATA" --user-dir "$REPO/mega_fairseq" \
    --seed "$SEED" --ddp-backend c10d --find-unused-parameters \
    -a "$arch" --task speech_commands --encoder-normalize-before \
    --criterion lra_cross_entropy --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
    --optimizer adam --lr "$lr" --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 \
    --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 \
    --batch-size 20 --sentence-avg --update-freq 1 --max-update 250000 \
    --lr-scheduler linear_decay --total-num-update 250000 --end-learning-rate 0.0 \
    --warmup-updates 10000 --warmup-init-lr 1e-07 --keep-last-epochs 1 --required-batch-size-multiple 1 \
    --save-dir "$SAVE" --log-format simple --log-interval 100 --num-workers 0 \
    --sentence-class-num 10 --max-positions 16000 --sc-dropped-rate 0. "$@"
"$PYTHON" -m fairseq_cli.validate "$DATA" --user-dir "$REPO/mega_fairseq" --task speech_commands --path "$SAVE/checkpoint_best.pt" \
    --valid-subset test --batch-size 20 --criterion lra_cross_entropy --num-workers 0
