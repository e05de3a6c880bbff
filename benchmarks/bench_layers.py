"""Speed and memory of the Mega EMA and layer against baselines measured in the same run.

    python benchmarks/bench_layers.py ema   [--lengths 1024 4096 16384 65536] [--batch 8 --dim 1024]
    python benchmarks/bench_layers.py layer [--lengths 512 1024 4096 16384 32768] [--tokens 32768]

``ema``: forward+backward of the bidirectional and causal EMA (FFT path) at B x D channels:
median time, peak memory, and achieved bandwidth (x and y read/written once each way, forward and
backward) against a device-to-device copy measured in the same run (the memory-traffic floor).
``layer``: forward+backward of one Mega encoder layer (D 512, H 1024, Z 128, N 16; chunk 128 and
unchunked) and of PyTorch's TransformerEncoderLayer (D 512, 8 heads, FFN 2048, fused attention)
at a fixed token budget per batch, under bf16 autocast on a GPU: tokens/s, peak memory, ratio.
Needs torch only (not fairseq). On a CPU it runs with the sizes given (for checking the script).
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn

from mega_fairseq.modules import MegaEncoderLayer, MegaLayerConfig, MultiDimensionalEMA


def device_and_dtype():
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.bfloat16


def median_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of fn() in milliseconds (device-synchronized)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mib(fn) -> float:
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def copy_bandwidth_gbs(device, nbytes: int = 2 ** 30) -> float:
    """Device-to-device copy bandwidth, bytes read plus bytes written per second (GB/s)."""
    source = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / ms / 1e6


def forward_backward(module, x, **kwargs):
    def run():
        out = module(x, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
    return run


def bench_ema(args):
    device, dtype = device_and_dtype()
    bandwidth = copy_bandwidth_gbs(device, nbytes=2 ** 30 if device.type == "cuda" else 2 ** 24)
    rows = []
    for length in args.lengths:
        for bidirectional in (True, False):
            ema = MultiDimensionalEMA(args.dim, args.ndim, bidirectional=bidirectional).to(device)
            x = torch.randn(length, args.batch, args.dim, device=device, dtype=dtype, requires_grad=True)
            run = forward_backward(ema, x)
            ms = median_ms(run, repeats=args.repeats)
            moved = 4 * x.numel() * x.element_size()  # x and y in the forward, dy and dx in the backward
            rows.append({"L": length, "bidirectional": bidirectional, "ms": ms, "peak_MiB": peak_memory_mib(run),
                         "GB/s": moved / ms / 1e6, "of_copy_bw": moved / ms / 1e6 / bandwidth})
    return {"device": str(device), "copy_GBps": bandwidth, "rows": rows}


def bench_layer(args):
    device, dtype = device_and_dtype()
    rows = []
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        x = torch.randn(length, batch, 512, device=device, requires_grad=True)
        layers = {
            "transformer": nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, activation="relu").to(device),
            "mega_chunk128": MegaEncoderLayer(MegaLayerConfig(512, 1024, 1024, 128, 16, 128)).to(device),
            "mega_unchunked": MegaEncoderLayer(MegaLayerConfig(512, 1024, 1024, 128, 16, -1,
                                                               max_positions=length)).to(device),
        }
        row = {"L": length, "batch": batch}
        for name, layer in layers.items():
            def run(layer=layer):
                with torch.autocast(device_type=device.type, dtype=dtype):
                    forward_backward(layer, x)()
            try:
                ms = median_ms(run, repeats=args.repeats)
                row[name] = {"tokens/s": length * batch / ms * 1e3, "ms": ms, "peak_MiB": peak_memory_mib(run)}
            except torch.OutOfMemoryError:
                row[name] = {"tokens/s": float("nan"), "ms": float("nan"), "peak_MiB": float("inf")}
                torch.cuda.empty_cache()
        for name in ("mega_chunk128", "mega_unchunked"):
            row[name]["x_transformer"] = row[name]["tokens/s"] / row["transformer"]["tokens/s"]
        rows.append(row)
    return {"device": str(device), "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ema", "layer"])
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=8, help="ema: batch size")
    parser.add_argument("--dim", type=int, default=1024, help="ema: channels")
    parser.add_argument("--ndim", type=int, default=16, help="ema: EMA order N")
    parser.add_argument("--tokens", type=int, default=32768, help="layer: tokens per batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.lengths is None:
        args.lengths = [1024, 4096, 16384, 65536] if args.what == "ema" else [512, 1024, 4096, 16384, 32768]
    results = bench_ema(args) if args.what == "ema" else bench_layer(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
