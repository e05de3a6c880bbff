"""Where the fused EMA's time goes, on short real batches and on long sequences (GPU).

    python benchmarks/kernels/profile_ema.py [--length 16384] [--batch 8] [--dim 1024]

1. A Multi30k batch (L 30, B 300, D 512, bidirectional, fp16 module): one EMA layer forward+backward,
   fused vs FFT: host ms (time to issue the work, no synchronization), wall ms (synchronized) and
   the number of kernel launches;
2. the same figures for a long causal layer (--length, --batch, --dim; bf16 input, fp32 module),
   and torch.profiler tables of its fused forward+backward (CUDA time per kernel, host time per op);
The launch constants (batch rows per program, chunk lengths, total warps) are swept by
``tune_kernels.py --only ema``."""
import argparse
import time

import torch

from mega_fairseq.modules import MultiDimensionalEMA


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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
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

if __name__ == "__main__":
    main()
