"""Speed and memory of chunk_attention: the matmul path against the fused paths (SDPA, Triton).

    python benchmarks/kernels/bench_attention.py [--lengths 512 1024 ... 32768] [--chunks 128 512] [--tokens 32768]
    python benchmarks/kernels/bench_attention.py --multi30k

Forward+backward of chunk attention (Z 128, H 1024, simple relative position bias; softmax unless
``--attention-fn``) at a fixed token budget B x L, causal and not, bf16 on a GPU (float32 on a CPU, for
checking the script at small sizes): median time, peak memory, and the ratios sdpa / matmul and
triton / matmul (below 1: better than matmul). ``--padded`` right-pads half of the sequences, which
makes SDPA's additive mask (B, nC, C, C) instead of a broadcast (C, C). ``--h-dim 128`` shows the narrow
heads for which "auto" picks sdpa; "auto" picks triton for wider heads and for laplace / relu2.

``--multi30k``: the shape of a Multi30k training batch (B 300, L 30, unchunked, Z 128, H 1024, fp16,
sentences right-padded to lengths 10-30), encoder (bidirectional) and decoder (causal) self-attention,
with and without attention dropout: device-synchronized ms per forward+backward, host ms (the time until
the calls return, launched on an idle GPU: what a host-bound training step pays) and the kernels
launched (CUDA profiler). Needs torch only (not fairseq); run from the repository root with PYTHONPATH=.
if not installed.
"""
import argparse
import json
import statistics
import time

import torch

from bench_layers import median_ms, peak_memory_mib, sync
from mega_fairseq.modules import Dropout, SimpleRelativePositionBias, chunk_attention
from mega_fairseq.ops.triton import fused_attention

IMPLS = ("matmul", "sdpa", "triton")


def available_impls(device, attention_fn):
    impls = ["matmul"]
    if attention_fn == "softmax":
        impls.append("sdpa")
    if fused_attention.usable_on(device) is None:
        impls.append("triton")
    return impls


def forward_backward(impl, q, k, v, bias, chunk_size, causal, mask, grad_out, attention_fn="softmax",
                     dropout=0.0):
    weight_dropout = Dropout(dropout).train()

    def run():
        for t in (q, k, v, bias.weight):
            t.grad = None
        out, _ = chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn=attention_fn, position_bias=bias,
                                 causal=causal, key_padding_mask=mask, weight_dropout=weight_dropout, impl=impl)
        out.backward(grad_out)
    return run


def inputs(batch, length, z_dim, h_dim, device, dtype):
    """q, k (B, L, Z) and v (B, L, H) as the Mega block hands them over (transposes of (L, B, .) tensors),
    and the output gradient."""
    q, k, v = (torch.randn(length, batch, dim, device=device, dtype=dtype).transpose(0, 1).requires_grad_()
               for dim in (z_dim, z_dim, h_dim))
    return q, k, v, torch.randn(batch, length, h_dim, device=device, dtype=dtype)


def measure(args, length, chunk_size, causal, device, dtype):
    """Times and peak memory of every implementation at one size."""
    batch = max(1, args.tokens // length)
    q, k, v, grad_out = inputs(batch, length, args.z_dim, args.h_dim, device, dtype)
    bias = SimpleRelativePositionBias(length if chunk_size < 0 else min(chunk_size, length)).to(device)
    mask = None
    if args.padded:
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        mask[batch // 2:, length - length // 4:] = True
    row = {"L": length, "batch": batch, "chunk": chunk_size, "causal": causal}
    for impl in available_impls(device, args.attention_fn):
        run = forward_backward(impl, q, k, v, bias, chunk_size, causal, mask, grad_out, args.attention_fn)
        try:
            row[impl] = {"ms": median_ms(run, repeats=args.repeats), "peak_MiB": peak_memory_mib(run)}
        except torch.OutOfMemoryError:
            row[impl] = {"ms": float("nan"), "peak_MiB": float("inf")}
            torch.cuda.empty_cache()
    for impl in IMPLS[1:]:
        if impl in row:
            row[f"{impl}_time_ratio"] = row[impl]["ms"] / row["matmul"]["ms"]
            row[f"{impl}_memory_ratio"] = row[impl]["peak_MiB"] / row["matmul"]["peak_MiB"]
    return row


def print_table(rows):
    impls = [impl for impl in IMPLS if impl in rows[0]]
    print(f"{'L':>6} {'B':>4} {'chunk':>5} {'causal':>6} | " + " ".join(f"{impl + ' ms':>10}" for impl in impls)
          + " | " + " ".join(f"{impl + ' MiB':>11}" for impl in impls) + " | ratios to matmul (time, memory)")
    for row in rows:
        ratios = "  ".join(f"{impl} {row[impl + '_time_ratio']:.2f} {row[impl + '_memory_ratio']:.2f}"
                           for impl in impls[1:])
        print(f"{row['L']:>6} {row['batch']:>4} {row['chunk']:>5} {str(row['causal']):>6} | "
              + " ".join(f"{row[impl]['ms']:>10.2f}" for impl in impls) + " | "
              + " ".join(f"{row[impl]['peak_MiB']:>11.0f}" for impl in impls) + f" | {ratios}")


def host_ms(fn, repeats: int) -> float:
    """Median time until fn() returns, each call started on an idle device."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    sync()
    return statistics.median(times)


def kernel_launches(fn) -> int:
    """Kernels (and memsets / copies) fn() runs on the GPU, counted by the profiler (0 on a CPU)."""
    if not torch.cuda.is_available():
        return 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        fn()
        sync()
    return sum(1 for event in profile.events() if "cuda" in str(getattr(event, "device_type", "")).lower())


def multi30k(args, device):
    """B 300, L 30, unchunked, Z 128, H 1024, fp16 (float32 on a CPU): ms, host ms and launches."""
    batch, length = 300, 30
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    q, k, v, grad_out = inputs(batch, length, args.z_dim, args.h_dim, device, dtype)
    bias = SimpleRelativePositionBias(length).to(device, dtype)
    lengths = torch.randint(10, length + 1, (batch,), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(length) >= lengths.unsqueeze(1)).to(device)
    rows = []
    for causal in (False, True):
        for dropout in (0.0, 0.1):
            row = {"causal": causal, "attention_dropout": dropout}
            for impl in available_impls(device, "softmax"):
                run = forward_backward(impl, q, k, v, bias, -1, causal, mask, grad_out, dropout=dropout)
                row[impl] = {"ms": median_ms(run, repeats=args.repeats), "host_ms": host_ms(run, args.repeats),
                             "launches": kernel_launches(run)}
            rows.append(row)
    print(f"{'causal':>6} {'dropout':>7} | " + " | ".join(f"{impl:>27}" for impl in IMPLS))
    for row in rows:
        cells = [f"{row[impl]['ms']:6.3f} ms {row[impl]['host_ms']:6.3f} host {row[impl]['launches']:3d} k"
                 if impl in row else f"{'-':>27}" for impl in IMPLS]
        print(f"{str(row['causal']):>6} {row['attention_dropout']:>7} | " + " | ".join(cells))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 512], help="chunk sizes (-1: unchunked)")
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per batch, B x L")
    parser.add_argument("--z-dim", type=int, default=128)
    parser.add_argument("--h-dim", type=int, default=1024)
    parser.add_argument("--attention-fn", default="softmax", choices=["softmax", "laplace", "relu2"])
    parser.add_argument("--padded", action="store_true", help="right-pad half of the sequences")
    parser.add_argument("--multi30k", action="store_true", help="only the Multi30k batch shape, with host time")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    if args.multi30k:
        print(f"# {name}, torch {torch.__version__}, Multi30k batch: B 300, L 30, unchunked, Z {args.z_dim}, "
              f"H {args.h_dim}, padded, forward+backward")
        results = {"device": name, "multi30k": multi30k(args, device)}
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        rows = [measure(args, length, chunk_size, causal, device, dtype)
                for length in args.lengths for chunk_size in args.chunks for causal in (False, True)]
        print(f"# {name}, {dtype}, torch {torch.__version__}, {args.attention_fn}, Z {args.z_dim}, H {args.h_dim}, "
              f"{args.tokens} tokens per batch{', padded' if args.padded else ''}")
        print_table(rows)
        results = {"device": name, "dtype": str(dtype), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
