"""Speed and memory of chunk_attention: the matmul path against the fused SDPA path.

    python benchmarks/kernels/bench_attention.py [--lengths 512 1024 ... 32768] [--chunks 128 512] [--tokens 32768]

Forward+backward of softmax chunk attention (Z 128, H 1024, simple relative position bias) at a
fixed token budget B x L, causal and not, bf16 on a GPU (float32 on a CPU, for checking the script
at small sizes): median time, peak memory, and the ratios sdpa / matmul (below 1: sdpa is better).
``--padded`` right-pads half of the sequences, which makes the additive mask (B, nC, C, C) instead
of a broadcast (C, C). ``--h-dim 128`` shows the narrow heads for which "auto" picks sdpa.
Needs torch only (not fairseq); run from the repository root with PYTHONPATH=. if not installed.
"""
import argparse
import json

import torch

from bench_layers import median_ms, peak_memory_mib
from mega_fairseq.modules import SimpleRelativePositionBias, chunk_attention

IMPLS = ("matmul", "sdpa")


def forward_backward(impl, q, k, v, bias, chunk_size, causal, mask, grad_out):
    def run():
        for t in (q, k, v, bias.weight):
            t.grad = None
        out, _ = chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn="softmax", position_bias=bias,
                                 causal=causal, key_padding_mask=mask, impl=impl)
        out.backward(grad_out)
    return run


def measure(args, length, chunk_size, causal, device, dtype):
    """Times and peak memory of both implementations at one size."""
    batch = max(1, args.tokens // length)
    q = torch.randn(batch, length, args.z_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, length, args.z_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, length, args.h_dim, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(batch, length, args.h_dim, device=device, dtype=dtype)
    bias = SimpleRelativePositionBias(length if chunk_size < 0 else min(chunk_size, length)).to(device)
    mask = None
    if args.padded:
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        mask[batch // 2:, length - length // 4:] = True
    row = {"L": length, "batch": batch, "chunk": chunk_size, "causal": causal}
    for impl in IMPLS:
        run = forward_backward(impl, q, k, v, bias, chunk_size, causal, mask, grad_out)
        try:
            row[impl] = {"ms": median_ms(run, repeats=args.repeats), "peak_MiB": peak_memory_mib(run)}
        except torch.OutOfMemoryError:
            row[impl] = {"ms": float("nan"), "peak_MiB": float("inf")}
            torch.cuda.empty_cache()
    row["time_ratio"] = row["sdpa"]["ms"] / row["matmul"]["ms"]
    row["memory_ratio"] = row["sdpa"]["peak_MiB"] / row["matmul"]["peak_MiB"]
    return row


def print_table(rows):
    print(f"{'L':>6} {'B':>4} {'chunk':>5} {'causal':>6} | {'matmul ms':>9} {'sdpa ms':>9} {'ratio':>6} | "
          f"{'matmul MiB':>10} {'sdpa MiB':>10} {'ratio':>6}")
    for row in rows:
        matmul, sdpa = row["matmul"], row["sdpa"]
        print(f"{row['L']:>6} {row['batch']:>4} {row['chunk']:>5} {str(row['causal']):>6} | "
              f"{matmul['ms']:>9.2f} {sdpa['ms']:>9.2f} {row['time_ratio']:>6.2f} | "
              f"{matmul['peak_MiB']:>10.0f} {sdpa['peak_MiB']:>10.0f} {row['memory_ratio']:>6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 512], help="chunk sizes (-1: unchunked)")
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per batch, B x L")
    parser.add_argument("--z-dim", type=int, default=128)
    parser.add_argument("--h-dim", type=int, default=1024)
    parser.add_argument("--padded", action="store_true", help="right-pad half of the sequences")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [measure(args, length, chunk_size, causal, device, dtype)
            for length in args.lengths for chunk_size in args.chunks for causal in (False, True)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, {dtype}, torch {torch.__version__}, Z {args.z_dim}, H {args.h_dim}, "
          f"{args.tokens} tokens per batch{', padded' if args.padded else ''}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "dtype": str(dtype), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
