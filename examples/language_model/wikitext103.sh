#!/usr/bin/env bash
# The original Mega WikiText-103 recipe (facebookresearch/mega examples/mega/README.lm.md) with stock
# fairseq commands plus --user-dir mega_fairseq: train, then evaluate the test set.
#
#   bash scripts/prepare-wikitext-103.sh                       # -> data-bin/wikitext-103
#   bash examples/language_model/wikitext103.sh [DATA_BIN] [SAVE_DIR]
#
# Environment:
#   STAGES           stages to run, default "train eval"
#   GPUS             GPUs fairseq-train uses (default: all visible, as fairseq does); only sets the
#                    default of UPDATE_FREQ
#   UPDATE_FREQ      gradient accumulation; the original ran 24 GPUs x 6144 tokens with
#                    --update-freq 1, so the default is ceil(24 / GPUS) (24 on one GPU)
#   SEED             default 1
#   MAX_TOKENS_VALID validation batch size in tokens (default 32768, see below)
#   CKPT             checkpoint to evaluate (default SAVE_DIR/checkpoint_best.pt)
#   EVAL_CHUNK_SIZE  attention chunk at test time (default 2048, as the original; empty: as trained)
#   BLOCK_LENGTH     tokens per forward pass of stream_eval (default 2048; memory only)
#   EVAL_MAX_TOKENS  fairseq-eval-lm batch size in tokens (default 32768: one test block, see below)
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
#                                 must hold one block: splits:10 of the WikiText-103 valid set
#                                 (217,646 tokens) are 21,765-token blocks. The original raised it
#                                 internally; the plugin stops with a clear message when it is too small.
#   every other option is the original's (those the enwik8 recipe shares are in common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
data=${1:-data-bin/wikitext-103}
save=${2:-checkpoints/mega_wikitext103}

# the original ran on 24 GPUs
train 24 --max-tokens-valid "${MAX_TOKENS_VALID:-32768}" \
    -a mega_lm_adaptive_big --max-target-positions 8096 --decoder-hidden-dim 2048 \
    --decoder-chunk-size 1024 --max-tokens 6144 \
    --variant-block-multiple-min 2 --variant-block-multiple-max 6 \
    --criterion adaptive_loss \
    --dropout 0.3 --attention-dropout 0.1 --hidden-dropout 0.1

# The original evaluation (fairseq_cli/eval_mega_lm.py of the Mega repository):
#   --gen-subset test --max-tokens 5000000 --test-chunk-size 2048 --chunk-nums 2 --softmax-batch 1024
#   --sample-break-mode complete --valid-block "splits:10"
#   --model-overrides '{"decoder_chunk_size": 2048, "max_tokens_valid": 5000000}'
# cut the test split into 10 documents (--valid-block splits:10) and scored each one 2 x 2048 tokens
# at a time (--chunk-nums x --test-chunk-size) with the state carried within the document, attending
# in chunks of 2048 (--test-chunk-size / decoder_chunk_size override; training used 1024).
# Here:
#  1. fairseq-eval-lm with the same --valid-block, --sample-break-mode, --softmax-batch and
#     decoder_chunk_size override scores each of the 10 documents in one forward pass: the same
#     context for every token as the original's carried pieces. One pass per batch also means that
#     --max-tokens bounds the memory: the default EVAL_MAX_TOKENS holds one document (24,557 tokens of
#     the test split) per batch; the original's 5000000 would put every document into one forward pass.
#  2. python -m mega_fairseq.stream_eval scores the whole test split as one stream with carried state
#     (the EMA state and the unfinished attention chunk), so no reset at the 9 document borders;
#     --block-length is the piece size (the original's chunk-nums x test-chunk-size) and changes
#     memory and speed only, not the result; --model-overrides '{"decoder_chunk_size": 2048}' as above.
#     (stream_eval's --max-tokens means "score only the first N tokens": not the original's batch size.)
eval_chunk_size=${EVAL_CHUNK_SIZE-2048}
block_length=${BLOCK_LENGTH:-2048}
eval_max_tokens=${EVAL_MAX_TOKENS:-32768}
evaluate "splits:10"
