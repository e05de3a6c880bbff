# Shared by the language-model recipes (sourced): paths, the environment both read (see the recipes'
# comments), and their two stages, each run only when STAGES (default "train eval") names it:
#   train ORIG_GPUS recipe-flags...   fairseq-train with the flags both original recipes share, then
#                                     the recipe's, then EXTRA_ARGS (later options win); ORIG_GPUS, the
#                                     GPUs of the original run, sets the default of UPDATE_FREQ
#   evaluate VALID_BLOCK              fairseq-eval-lm (documents of --valid-block VALID_BLOCK) and
#                                     python -m mega_fairseq.stream_eval (one stream) on the test split
# The recipe sets data and save (checkpoint directory) before train, and eval_chunk_size,
# block_length and eval_max_tokens before evaluate.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
recipe=${BASH_SOURCE[1]}
stages=${STAGES:-train eval}
python=${PYTHON:-python}
seed=${SEED:-1}
# shell words, so that quoted values work: EXTRA_ARGS="--adam-betas '(0.9, 0.99)'"
eval "extra_args=(${EXTRA_ARGS:-})"
eval "eval_extra_args=(${EVAL_EXTRA_ARGS:-})"
eval "stream_eval_args=(${STREAM_EVAL_ARGS:-})"

train() {
    [[ " $stages " == *" train "* ]] || return 0
    local orig_gpus=$1 gpus update_freq
    shift
    gpus=${GPUS:-$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)}
    update_freq=${UPDATE_FREQ:-$(( (orig_gpus + gpus - 1) / gpus ))}
    mkdir -p "$save"
    # the commands of this run: the recipe, and this file that it sources
    cp "$recipe" "$save/run.sh"
    cp "${BASH_SOURCE[0]}" "$save/common.sh"
    echo "training on $gpus GPU(s) with --update-freq $update_freq (the original: $orig_gpus GPUs, 1)"
    fairseq-train "$data" --user-dir "$repo/mega_fairseq" \
        --seed "$seed" --ddp-backend legacy_ddp \
        --valid-subset valid --task mega_language_modeling \
        --activation-fn silu --attention-activation-fn softmax \
        --decoder-n-dim 16 --normalize-before --no-affine-final-norm \
        --update-freq "$update_freq" \
        --normalization-type layernorm --truncation-length 8192 --rel-pos-bias rotary \
        --optimizer adam --lr 5e-3 --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 0.25 \
        --lr-scheduler linear_decay --total-num-update 400000 --end-learning-rate 0.0 \
        --warmup-updates 24000 --warmup-init-lr 1e-07 \
        --weight-decay 0.1 \
        --max-update 400000 \
        --no-epoch-checkpoints \
        --sample-break-mode complete \
        --valid-block "splits:10" \
        --save-dir "$save" --log-format simple --log-interval 100 --num-workers 0 \
        "$@" ${extra_args[@]+"${extra_args[@]}"}
}

# The recipes' comments above their evaluate line say how this follows the original evaluation.
evaluate() {
    [[ " $stages " == *" eval "* ]] || return 0
    local valid_block=$1 ckpt=${CKPT:-$save/checkpoint_best.pt} overrides=()
    [[ -n "$eval_chunk_size" ]] && overrides=(--model-overrides "{\"decoder_chunk_size\": $eval_chunk_size}")
    fairseq-eval-lm "$data" --user-dir "$repo/mega_fairseq" --task mega_language_modeling \
        --path "$ckpt" --gen-subset test --max-tokens "$eval_max_tokens" --softmax-batch 1024 \
        --sample-break-mode complete --valid-block "$valid_block" \
        ${overrides[@]+"${overrides[@]}"} ${eval_extra_args[@]+"${eval_extra_args[@]}"} \
        2>&1 | tee "$(dirname "$ckpt")/eval_lm.test.log"
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m mega_fairseq.stream_eval "$data" \
        --path "$ckpt" --gen-subset test --block-length "$block_length" --softmax-batch 1024 \
        ${overrides[@]+"${overrides[@]}"} ${stream_eval_args[@]+"${stream_eval_args[@]}"} \
        2>&1 | tee "$(dirname "$ckpt")/stream_eval.test.log"
}
