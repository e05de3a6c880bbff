#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU tests (pytest -m gpu), then benchmarks 1-3
# (bench_layers.py ema / layer, bench_attention.py when present) and the layer profile with
# torch.compile (profile_layer.py --compile, as --compile-layers compiles). Tables go to stdout, JSON
# to OUT_DIR. The compile tests and the compiled profile spend minutes compiling on a cold machine.
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
timeout 600 python3 -m pytest tests -q -m gpu -p no:cacheprovider 2>&1 | tail -15
echo "== benchmark 1: EMA, B x D = 8 x 1024"
timeout 200 python3 benchmarks/kernels/bench_layers.py ema --repeats "$repeats" --json "$out/ema.json" 2>&1 | grep -v INFO
echo "== benchmarks 2-3: one layer, bf16, 32768 tokens per batch"
timeout 300 python3 benchmarks/kernels/bench_layers.py layer --repeats "$repeats" --json "$out/layer.json" 2>&1 | grep -v INFO
if [ -f benchmarks/kernels/bench_attention.py ]; then
    echo "== chunked attention: matmul vs sdpa"
    timeout 200 python3 benchmarks/kernels/bench_attention.py --json "$out/attention.json" 2>&1 | grep -v INFO
fi
echo "== one layer at L 4096: where the time goes, eager and compiled"
(cd benchmarks/kernels && timeout 400 python3 profile_layer.py --length 4096 --compile 2>&1 | grep -v INFO)
