#!/usr/bin/env bash
# Everything that needs one GPU, in one go: the GPU tests (pytest -m gpu, no 2-GPU test), the one-layer
# benchmark (bench_layers.py layer, eager and on layer graphs, under bf16 autocast and with bf16
# parameters; JSON and plots), where the layer's time goes at 1k and 16k tokens per sequence
# (profile_layer.py, both layers), the fused kernels' launch constants at the layer's shapes
# (tune_kernels.py) and LM decoding over 16k tokens (bench_decode.py).
# Tables go to stdout, JSON and plots to OUT_DIR. From cold caches the GPU tests spend minutes compiling
# (Triton, torch.compile): give them TEST_SECONDS (default 600).
#   bash benchmarks/e2e/gpu_checks.sh OUT_DIR [REPEATS]
set -uo pipefail
out=${1:?usage: bash benchmarks/e2e/gpu_checks.sh OUT_DIR [REPEATS]}
repeats=${2:-10}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"
cd "$repo"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== GPU tests"
timeout "${TEST_SECONDS:-600}" python3 -m pytest tests -q -m gpu -p no:cacheprovider -k "not two_gpu" 2>&1 | tail -15
echo "== one layer, bf16, 32768 tokens per batch"
for precision in bf16-autocast bf16; do
    timeout 300 python3 benchmarks/kernels/bench_layers.py layer --lengths 1024 4096 16384 --repeats "$repeats" \
        --precision "$precision" --json "$out/layer_$precision.json" 2>&1 | grep -v INFO
done
echo "== where one layer's time goes"
for length in 1024 16384; do
    (cd benchmarks/kernels && timeout 120 python3 profile_layer.py --length "$length" 2>&1 | grep -v INFO)
done
echo "== the fused kernels' launch constants at the layer's shapes"
timeout 300 python3 benchmarks/kernels/tune_kernels.py 2>&1 | grep -v "INFO\|arning"
echo "== LM decoding, batch 1, 16k tokens"
timeout 300 python3 benchmarks/kernels/bench_decode.py --tokens 16384 --bucket 2048 --chunk 128 \
    --json "$out/decode.json" 2>&1 | grep -v "INFO\|arning"
