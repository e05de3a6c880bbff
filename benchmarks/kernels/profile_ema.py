"""Where the fused EMA's time goes, on short real batches and on long sequences (GPU).

    python benchmarks/kernels/profile_ema.py [--length 16384] [--batch 8] [--dim 1024] [--sweep]

1. A Multi30k batch (L 30, B 300, D 512, bidirectional, fp16 module): one EMA layer forward+backward,
   fused vs FFT: host ms (time to issue the work, no synchronization), wall ms (synchronized) and
   the number of kernel launches;
2. the same figures for a long causal layer (--length, --batch, --dim; bf16 input, fp32 module),
   and torch.profiler tables of its fused forward+backward (CUDA time per kernel, host time per op);
3. --sweep: forward+backward time of the long fused layer for batch rows per program (MAX_ROWS) x
   total warps (TARGET_WARPS);
4. --sweep-layer: the EMA of the layer benchmark (bench_layers.py layer: D 512, N 16, bidirectional, bf16
   input, 32,768 tokens at L 1k / 4k / 16k) for the backward's shortest chunk (MIN_BACKWARD_CHUNK) x
   total warps (TARGET_WARPS): the launch plan only, the same compiled kernels."""
import argparse
import time

import torch

from mega_fairseq.modules import MultiDimensionalEMA
from mega_fairseq.ops.triton import ema_scan as ema_triton


def timed_ms(fn, repeats=20):
    """(host ms, wall ms) per call: the time to issue fn's work, and to finish it."""
    fn()
    torch.cuda.synchronize()
    host = 0.0
    start = time.perf_counter()
    for _ in range(repeats):
        issue = time.perf_counter()
        fn()
        host += time.perf_counter() - issue
    torch.cuda.synchronize()
    return host / repeats * 1e3, (time.perf_counter() - start) / repeats * 1e3


def kernel_launches(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def layer_step(layer, x, mask, grad):
    """Forward+backward of one EMA layer: the gradients of x and the parameters, nothing else."""
    def step():
        out = layer(x, mask)
        torch.autograd.grad(out, [x, *layer.parameters()], grad)
    return step


def compare(name, length, batch, dim, bidirectional, module_dtype, input_dtype, padded):
    x = torch.randn(length, batch, dim, device="cuda", dtype=input_dtype, requires_grad=True)
    mask = None
    if padded:  # sentence lengths spread over the batch, as fairseq's length-sorted batches
        lengths = torch.randint(length // 2, length + 1, (batch,), device="cuda")
        mask = torch.arange(length, device="cuda")[None, :] >= lengths[:, None]
    steps = {}
    for impl in ("fft", "triton"):
        layer = MultiDimensionalEMA(dim, 16, bidirectional=bidirectional, impl=impl).cuda().to(module_dtype)
        grad = torch.randn(length, batch, dim, device="cuda", dtype=torch.promote_types(input_dtype, module_dtype))
        steps[impl] = layer_step(layer, x, mask, grad)
        host, wall = timed_ms(steps[impl])
        print(f"{name} L {length} B {batch} D {dim} {'bidirectional' if bidirectional else 'causal'}: {impl:6s} "
              f"host {host:6.3f} ms, wall {wall:6.3f} ms, {kernel_launches(steps[impl]):3d} kernel launches")
    return steps["triton"]


def sweep_layer_plan(tokens: int = 32768, dim: int = 512) -> None:
    """Fused EMA forward+backward (wall ms) at the layer benchmark's shapes for each launch plan."""
    saved = ema_triton.MIN_BACKWARD_CHUNK, ema_triton.TARGET_WARPS
    for length in (1024, 4096, 16384):
        batch = tokens // length
        x = torch.randn(length, batch, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        layer = MultiDimensionalEMA(dim, 16, bidirectional=True, impl="triton").cuda()
        step = layer_step(layer, x, None, torch.randn(length, batch, dim, device="cuda"))
        cells = []
        for backward_chunk in (64, 128, 256):
            for warps in (8192, 32768):
                ema_triton.MIN_BACKWARD_CHUNK, ema_triton.TARGET_WARPS = backward_chunk, warps
                cells.append(f"{backward_chunk}/{warps}: {timed_ms(step)[1]:6.3f}")
        ema_triton.MIN_BACKWARD_CHUNK, ema_triton.TARGET_WARPS = saved
        print(f"EMA L {length} B {batch} D {dim} (MIN_BACKWARD_CHUNK/TARGET_WARPS: ms) " + " | ".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--sweep", action="store_true", help="also sweep the launch shape")
    parser.add_argument("--sweep-layer", action="store_true",
                        help="also sweep the plan at the layer benchmark's shapes")
    args = parser.parse_args()

    compare("Multi30k", 30, 300, 512, True, torch.float16, torch.float16, padded=True)
    fused_step = compare("long", args.length, args.batch, args.dim, False, torch.float32, torch.bfloat16,
                         padded=False)

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fused_step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))

    if args.sweep_layer:
        sweep_layer_plan()
    for rows in (1, 2, 4, 8) if args.sweep else ():
        for warps in (2048, 8192, 32768):
            ema_triton.MAX_ROWS, ema_triton.TARGET_WARPS = rows, warps
            print(f"MAX_ROWS {rows} TARGET_WARPS {warps:6d}: fused layer fwd+bwd "
                  f"{timed_ms(fused_step)[1]:7.2f} ms")


if __name__ == "__main__":
    main()
