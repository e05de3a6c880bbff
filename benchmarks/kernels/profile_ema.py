"""Where the fused EMA's time goes, and how the launch shape changes it (GPU).

    python benchmarks/kernels/profile_ema.py [--length 16384] [--batch 8] [--dim 1024] [--sweep]

1. torch.profiler: CUDA time per kernel, and the host (CPU) time per operation, of one causal EMA layer forward+backward (bf16 input);
2. forward+backward time of the layer, FFT path and fused, the fused one for channels per program
   (BLOCK_D) x total warps (TARGET_PROGRAMS)."""
import argparse
import time

import torch

from mega_fairseq.modules import MultiDimensionalEMA
from mega_fairseq.ops.triton import ema_scan as ema_triton


def timed_ms(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--sweep", action="store_true", help="also sweep the launch shape")
    args = parser.parse_args()
    x = torch.randn(args.length, args.batch, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    layers = {impl: MultiDimensionalEMA(args.dim, 16, impl=impl).cuda() for impl in ("fft", "triton")}

    def layer_step(impl):
        layers[impl](x).float().sum().backward()

    layer_step("triton")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        layer_step("triton")
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))

    print(f"L {args.length} B {args.batch} D {args.dim}: layer fft {timed_ms(lambda: layer_step('fft')):.2f} ms, "
          f"layer triton {timed_ms(lambda: layer_step('triton')):.2f} ms")
    for block in (32, 64, 128) if args.sweep else ():
        for programs in (2048, 8192, 32768):
            ema_triton.BLOCK_D, ema_triton.TARGET_PROGRAMS = block, programs
            print(f"BLOCK_D {block:4d} warps {programs:6d}: fused layer fwd+bwd "
                  f"{timed_ms(lambda: layer_step('triton')):7.2f} ms")


if __name__ == "__main__":
    main()
