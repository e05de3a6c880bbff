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
#   every other option is the original's (those the WikiText-103 recipe shares are in common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
data=${1:-data-bin/enwik8}
save=${2:-checkpoints/mega_enwik8}

# the original ran on 8 GPUs
train 8 --max-tokens-valid "${MAX_TOKENS_VALID:-524288}" \
    -a mega_lm_enwik8_base --max-target-positions 10384 \
    --decoder-chunk-size 2048 --max-tokens 8192 \
    --variant-block-multiple-min 2 --variant-block-multiple-max 4 \
    --criterion cross_entropy --share-decoder-input-output-embed \
    --dropout 0.1 --attention-dropout 0.0 --hidden-dropout 0.0

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
eval_chunk_size=${EVAL_CHUNK_SIZE-4096}
block_length=${BLOCK_LENGTH:-4096}
eval_max_tokens=${EVAL_MAX_TOKENS:-131072}
evaluate "splits:50"
