#!/usr/bin/env bash
# The original Mega enwik8 recipe (facebookresearch/mega examples/mega/README.lm.md) with stock
# fairseq commands plus --user-dir mega_fairseq: train, then evaluate the test set.
#
#   bash scripts/prepare-enwik8.sh                             # -> data-bin/enwik8
#   bash examples/language_model/enwik8.sh [DATA_BIN] [SAVE_DIR]
#
# enwik8 is byte-level data: the base-2 loss both evaluations print ("Loss (base 2)") is bits per
# byte (bpc), the figure the paper reports.
#
# Environment:
#   STAGES           stages to run, default "train eval"
#   GPUS             GPUs fairseq-train uses (default: all visible, as fairseq does); only sets the
#                    default of UPDATE_FREQ
#   UPDATE_FREQ      gradient accumulation; the original ran 8 GPUs x 8192 tokens with
#                    --update-freq 1, so the default is ceil(8 / GPUS) (8 on one GPU)
#   SEED             default 1
#   MAX_TOKENS_VALID validation batch size in tokens (default 524288, see below)
#   CKPT             checkpoint to evaluate (default SAVE_DIR/checkpoint_best.pt)
#   EVAL_CHUNK_SIZE  attention chunk at test time (default 4096, as the original; empty: as trained)
#   BLOCK_LENGTH     tokens per forward pass of stream_eval (default 4096; memory only)
#   EVAL_MAX_TOKENS  fairseq-eval-lm batch size in tokens (default 131072: one test block, see below)
#   EXTRA_ARGS       appended to fairseq-train (later options win), e.g. tiny dims for a smoke test
#   EVAL_EXTRA_ARGS  appended to fairseq-eval-lm (e.g. --cpu)
#   STREAM_EVAL_ARGS appended to python -m mega_fairseq.stream_eval (e.g. --cpu)
#   PYTHON           interpreter for python -m mega_fairseq.stream_eval (default python)
#
# From the original command to this one:
#   --task language_modeling      -> --task mega_language_modeling (the plugin's task: it adds the
#                                    recipe's --variant-block-multiple-min/max and --valid-block)
#   --ddp-backend no_c10d         -> --ddp-backend legacy_ddp (fairseq's current name for it)
#   --max-tokens-valid (new)      validation scores each --valid-block block in one pass, so a batch
#                                 must hold one block: splits:10 of the enwik8 valid set (5,000,000
#                                 bytes, one token each) are blocks of about 500,000 tokens. The
#                                 original raised it internally; the plugin stops with a clear
#                                 message when it is too small. Such a block of mega_lm_enwik8_base
#                                 needs roughly 27 GiB in one forward pass (extrapolated from CPU runs
#                                 of 8k and 32k tokens); for less, add e.g. EXTRA_ARGS="--valid-block
#                                 splits:20 --max-tokens-valid 262144".
#   every other option is the original's.
set -euo pipefail
data=${1:-data-bin/enwik8}
save=${2:-checkpoints/mega_enwik8}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stages=${STAGES:-train eval}
python=${PYTHON:-python}
seed=${SEED:-1}
orig_gpus=8
gpus=${GPUS:-$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)}
update_freq=${UPDATE_FREQ:-$(( (orig_gpus + gpus - 1) / gpus ))}
max_tokens_valid=${MAX_TOKENS_VALID:-524288}
ckpt=${CKPT:-$save/checkpoint_best.pt}
eval_chunk_size=${EVAL_CHUNK_SIZE-4096}
block_length=${BLOCK_LENGTH:-4096}
eval_max_tokens=${EVAL_MAX_TOKENS:-131072}
# shell words, so that quoted values work: EXTRA_ARGS="--adam-betas '(0.9, 0.99)'"
eval "extra_args=(${EXTRA_ARGS:-})"
eval "eval_extra_args=(${EVAL_EXTRA_ARGS:-})"
eval "stream_eval_args=(${STREAM_EVAL_ARGS:-})"

if [[ " $stages " == *" train "* ]]; then
    mkdir -p "$save"
    cp "${BASH_SOURCE[0]}" "$save/run.sh"
    echo "training on $gpus GPU(s) with --update-freq $update_freq (the original: $orig_gpus GPUs, 1)"
    fairseq-train "$data" --user-dir "$repo/mega_fairseq" \
        --seed "$seed" --ddp-backend legacy_ddp --max-target-positions 10384 \
        --valid-subset valid --task mega_language_modeling -a mega_lm_enwik8_base \
        --activation-fn silu --attention-activation-fn softmax \
        --decoder-n-dim 16 --decoder-chunk-size 2048 --normalize-before --no-affine-final-norm \
        --max-tokens 8192 --update-freq "$update_freq" \
        --variant-block-multiple-min 2 --variant-block-multiple-max 4 \
        --normalization-type layernorm --truncation-length 8192 --rel-pos-bias rotary \
        --optimizer adam --lr 5e-3 --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 0.25 \
        --lr-scheduler linear_decay --total-num-update 400000 --end-learning-rate 0.0 \
        --warmup-updates 24000 --warmup-init-lr 1e-07 \
        --criterion cross_entropy --share-decoder-input-output-embed \
        --dropout 0.1 --attention-dropout 0.0 --hidden-dropout 0.0 --weight-decay 0.1 \
        --max-update 400000 \
        --no-epoch-checkpoints \
        --sample-break-mode complete \
        --valid-block "splits:10" --max-tokens-valid "$max_tokens_valid" \
        --save-dir "$save" --log-format simple --log-interval 100 --num-workers 0 \
        ${extra_args[@]+"${extra_args[@]}"}
fi

# The original evaluation (fairseq_cli/eval_mega_lm.py of the Mega repository):
#   --gen-subset test --max-tokens 10000000 --test-chunk-size 4096 --chunk-nums 3 --softmax-batch 1024
#   --sample-break-mode complete --valid-block "splits:50"
#   --model-overrides '{"decoder_chunk_size": 4096, "max_tokens_valid": 1000000}'
# cut the test split into 50 documents (--valid-block splits:50) and scored each one 3 x 4096 tokens
# at a time (--chunk-nums x --test-chunk-size) with the state carried within the document, attending
# in chunks of 4096 (--test-chunk-size / decoder_chunk_size override; training used 2048).
# Here:
#  1. fairseq-eval-lm with the same --valid-block, --sample-break-mode, --softmax-batch and
#     decoder_chunk_size override scores each of the 50 documents in one forward pass: the same
#     context for every token as the original's carried pieces. One pass per batch also means that
#     --max-tokens bounds the memory: the default EVAL_MAX_TOKENS holds one document (100,001 tokens of
#     the test split) per batch; the original's 10000000 would put every document into one forward pass.
#  2. python -m mega_fairseq.stream_eval scores the whole test split as one stream with carried state
#     (the EMA state and the unfinished attention chunk), so no reset at the 49 document borders;
#     --block-length is the piece size (the original's chunk-nums x test-chunk-size) and changes
#     memory and speed only, not the result; --model-overrides '{"decoder_chunk_size": 4096}' as above.
#     (stream_eval's --max-tokens means "score only the first N tokens": not the original's batch size.)
if [[ " $stages " == *" eval "* ]]; then
    overrides=()
    [[ -n "$eval_chunk_size" ]] && overrides=(--model-overrides "{\"decoder_chunk_size\": $eval_chunk_size}")
    fairseq-eval-lm "$data" --user-dir "$repo/mega_fairseq" --task mega_language_modeling \
        --path "$ckpt" --gen-subset test --max-tokens "$eval_max_tokens" --softmax-batch 1024 \
        --sample-break-mode complete --valid-block "splits:50" \
        ${overrides[@]+"${overrides[@]}"} ${eval_extra_args[@]+"${eval_extra_args[@]}"} \
        2>&1 | tee "$(dirname "$ckpt")/eval_lm.test.log"
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m mega_fairseq.stream_eval "$data" \
        --path "$ckpt" --gen-subset test --block-length "$block_length" --softmax-batch 1024 \
        ${overrides[@]+"${overrides[@]}"} ${stream_eval_args[@]+"${stream_eval_args[@]}"} \
        2>&1 | tee "$(dirname "$ckpt")/stream_eval.test.log"
fi
