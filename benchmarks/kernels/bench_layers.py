"""Speed and memory of the Mega EMA and layer against baselines measured in the same run.

    python benchmarks/kernels/bench_layers.py ema   [--lengths 1024 4096 16384 65536] [--batch 8 --dim 1024]
    python benchmarks/kernels/bench_layers.py layer [--lengths 512 1024 4096 16384 32768] [--tokens 32768]

``ema``: forward+backward of the bidirectional and causal EMA at B x D channels, the FFT path
(reference) and the fused Triton scan: median time, peak memory, and achieved bandwidth (x and y
read/written once each way, forward and backward) against a device-to-device copy measured in
the same run (the memory-traffic floor); speedup of the scan over the FFT.
``layer``: forward+backward of one Mega encoder layer (D 512, H 1024, FFN 1024, Z 128, N 16;
chunk 128 and unchunked) with automatic kernel selection and with the original algorithm (FFT
EMA, attention by matmul), and of fairseq's TransformerEncoderLayer (D 512, 8 heads, FFN 2048,
PyTorch's fused attention; PyTorch's layer without fairseq), both post-norm as the translation models
train them (--norm pre: both pre-norm), at a fixed token budget per batch,
under bf16 autocast on a GPU (or, --precision bf16, with bf16 parameters as fairseq's --fp16 trains):
tokens/s, peak memory, ratios to the Transformer and the original. Each layer is timed two ways:
synchronized after every step (median; the host's launch time of each step shows) and pipelined
(steps issued back to back, one synchronization at the end, as a training loop runs them); the
table prints both, synchronized/pipelined.
On a GPU, the chunked Mega layer and the Transformer layer also run as the models' training runs them
by default (``--layer-graphs auto``): traced once by torch.compile and replayed from CUDA graphs
(``*_graphs``; the Transformer layer the same way, for a like-for-like baseline). Their peak memory is
not measured: a replay allocates nothing, its memory is the graphs' pool, reserved when recording.
On a CPU it runs with the sizes given (for checking the script).
With --json, ``layer`` also writes a plot beside it (tokens/s and peak memory against L; the same name,
.png; needs matplotlib, see benchmarks/plot_results.py).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

from mega_fairseq.modules import MegaEncoderLayer, MegaLayerConfig, MultiDimensionalEMA
from mega_fairseq.ops.triton import ema_scan as ema_triton

try:  # the layer graphs live in the fairseq models; without fairseq the *_graphs variants are left out
    from mega_fairseq.models.compile import compiled_stack, encoder_stack
except ImportError:
    compiled_stack = None


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


def pipelined_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Mean wall time of fn() in milliseconds over ``repeats`` calls issued back to back with one
    device synchronization at the end, as a training loop issues its steps: the host prepares the
    next call while the device runs the last."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) * 1e3 / repeats


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
    """module(x) forward and the backward of its sum, as a callable. The module's input is a view of x: not
    a leaf, as the embeddings' output in a model is, so that its gradient flows on (as into fairseq's
    embedding backward) and reaches x.grad without a leaf's treatment in the module (layer graphs copy
    leaves' gradients out of their memory pool)."""
    def run():
        out = module(x.view_as(x), **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
    return run


def ema_impls(device) -> list:
    """The FFT reference, plus the fused scan where it can run."""
    return ["fft", "triton"] if device.type == "cuda" and ema_triton.triton_available() else ["fft"]


def bench_ema(args):
    """EMA forward+backward at B x D channels, FFT path vs fused scan, against copy bandwidth."""
    device, dtype = device_and_dtype()
    bandwidth = copy_bandwidth_gbs(device, nbytes=2 ** 30 if device.type == "cuda" else 2 ** 24)
    rows = []
    for length in args.lengths:
        for bidirectional in (True, False):
            x = torch.randn(length, args.batch, args.dim, device=device, dtype=dtype, requires_grad=True)
            moved = 4 * x.numel() * x.element_size()  # x and y in the forward, dy and dx in the backward
            row = {"L": length, "bidirectional": bidirectional}
            for impl in ema_impls(device):
                ema = MultiDimensionalEMA(args.dim, args.ndim, bidirectional=bidirectional, impl=impl).to(device)
                run = forward_backward(ema, x)
                try:
                    ms = median_ms(run, repeats=args.repeats)
                    row[impl] = {"ms": ms, "peak_MiB": peak_memory_mib(run), "GB/s": moved / ms / 1e6,
                                 "of_copy_bw": moved / ms / 1e6 / bandwidth}
                except torch.OutOfMemoryError:
                    row[impl] = {"ms": float("nan"), "peak_MiB": float("inf")}
                    torch.cuda.empty_cache()
            if "triton" in row:
                row["speedup"] = row["fft"]["ms"] / row["triton"]["ms"]
            rows.append(row)
    return {"device": str(device), "copy_GBps": bandwidth, "rows": rows}


def transformer_layer(device, prenorm: bool = False) -> nn.Module:
    """fairseq's TransformerEncoderLayer (D 512, 8 heads, FFN 2048; PyTorch's fused attention through
    F.multi_head_attention_forward), or PyTorch's own layer when fairseq is missing; post-norm as
    fairseq builds it by default, pre-norm with ``prenorm``."""
    try:
        from fairseq.models.transformer import TransformerConfig
        from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
    except ImportError:
        return nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, activation="relu",
                                          norm_first=prenorm).to(device)
    cfg = TransformerConfig()
    cfg.encoder.embed_dim, cfg.encoder.attention_heads, cfg.encoder.ffn_embed_dim = 512, 8, 2048
    cfg.encoder.normalize_before = prenorm
    cfg.dropout = cfg.attention_dropout = cfg.activation_dropout = 0.0
    layer = TransformerEncoderLayerBase(cfg).to(device)
    return _PaddingFree(layer)


class _PaddingFree(nn.Module):
    """Calls a fairseq encoder layer without a padding mask."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, None)


def mega_layer(chunk: int, length: int, fast: bool, device, prenorm: bool = False) -> nn.Module:
    """Mega encoder layer D 512, H 1024, FFN 1024, Z 128, N 16, post-norm (as the translation models
    train it) or pre-norm; fast: automatic kernel selection, else the original algorithm (FFT EMA,
    attention by matmul)."""
    impls = dict(ema_impl="auto", attention_impl="auto") if fast else dict(ema_impl="fft", attention_impl="matmul")
    cfg = MegaLayerConfig(512, 1024, 1024, 128, 16, chunk, max_positions=max(length, 1), prenorm=prenorm, **impls)
    return MegaEncoderLayer(cfg).to(device)


class _OnLayerGraphs(nn.Module):
    """A layer run as the models run their layer stacks in training (``--layer-graphs auto``): ``stack``
    over a one-layer list, traced by torch.compile and replayed from CUDA graphs (models/compile.py)."""

    def __init__(self, layer: nn.Module, stack, *stack_arguments):
        super().__init__()
        self.layers = nn.ModuleList([layer])
        self.stack, self.stack_arguments = stack, stack_arguments

    def forward(self, x):
        return compiled_stack(self.stack)(self.layers, x, *self.stack_arguments)


def _single_layer_stack(layers: nn.ModuleList, x):
    """A stack of one layer called as layer(x) (the Transformer layer, for _OnLayerGraphs)."""
    return layers[0](x)


def bench_layer(args):
    """One layer forward+backward at a fixed token budget per batch: under bf16 autocast (float32
    parameters), or with --precision bf16 every layer's parameters and the input in bf16 (as fairseq's
    --fp16 / --bf16 train: half-precision parameters, float32 master weights in the optimizer)."""
    device, dtype = device_and_dtype()
    half = args.precision == "bf16"
    rows = []
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        x = torch.randn(length, batch, 512, device=device, dtype=dtype if half else torch.float32, requires_grad=True)
        prenorm = args.norm == "pre"
        layers = {"transformer": lambda: transformer_layer(device, prenorm)}
        for chunk, label in ((128, "mega_chunk128"), (-1, "mega_unchunked")):
            layers[label] = lambda chunk=chunk: mega_layer(chunk, length, True, device, prenorm)
            layers[label + "_original"] = lambda chunk=chunk: mega_layer(chunk, length, False, device, prenorm)
        if device.type == "cuda" and compiled_stack is not None:
            layers["transformer_graphs"] = lambda: _OnLayerGraphs(transformer_layer(device, prenorm),
                                                                  _single_layer_stack)
            layers["mega_chunk128_graphs"] = lambda: _OnLayerGraphs(mega_layer(128, length, True, device, prenorm),
                                                                    encoder_stack, None)
        row = {"L": length, "batch": batch}
        for name, build in layers.items():
            layer = build().to(dtype) if half else build()

            def run(layer=layer):
                layer.zero_grad(set_to_none=True)  # as the optimizer does: graph replays own their outputs
                x.grad = None
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=not half):
                    forward_backward(layer, x)()
            try:
                ms = median_ms(run, repeats=args.repeats)
                ms_pipelined = pipelined_ms(run, repeats=args.repeats)
                peak = float("nan") if name.endswith("_graphs") else peak_memory_mib(run)
                row[name] = {"tokens/s": length * batch / ms * 1e3, "ms": ms, "peak_MiB": peak,
                             "tokens/s_pipelined": length * batch / ms_pipelined * 1e3, "ms_pipelined": ms_pipelined}
            except torch.OutOfMemoryError:
                row[name] = {"tokens/s": float("nan"), "ms": float("nan"), "peak_MiB": float("inf"),
                             "tokens/s_pipelined": float("nan"), "ms_pipelined": float("nan")}
            except Exception as error:  # a graph variant that cannot run is reported, not fatal
                if not name.endswith("_graphs"):
                    raise
                row[name] = {"tokens/s": float("nan"), "ms": float("nan"), "peak_MiB": float("nan"),
                             "tokens/s_pipelined": float("nan"), "ms_pipelined": float("nan"),
                             "error": f"{type(error).__name__}: {error}"[:300]}
            del layer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for speed, suffix in (("tokens/s", ""), ("tokens/s_pipelined", "_pipelined")):
            for name in ("mega_chunk128", "mega_unchunked"):
                row[name]["x_transformer" + suffix] = row[name][speed] / row["transformer"][speed]
                row[name]["x_original" + suffix] = row[name][speed] / row[name + "_original"][speed]
            if "mega_chunk128_graphs" in row:
                graphs = row["mega_chunk128_graphs"]
                graphs["x_transformer" + suffix] = graphs[speed] / row["transformer"][speed]
                graphs["x_transformer_graphs" + suffix] = graphs[speed] / row["transformer_graphs"][speed]
        rows.append(row)
    return {"device": str(device), "precision": args.precision, "norm": args.norm, "rows": rows}


def print_table(what: str, results: dict) -> None:
    """A short human-readable table of the results."""
    if what == "ema":
        print(f"copy bandwidth {results['copy_GBps']:.0f} GB/s")
        for row in results["rows"]:
            parts = [f"L={row['L']:>6} {'bi ' if row['bidirectional'] else 'uni'}"]
            for impl in ("fft", "triton"):
                if impl in row:
                    r = row[impl]
                    parts.append(f"{impl} {r['ms']:8.2f} ms {r['peak_MiB']:8.0f} MiB {r.get('of_copy_bw', 0):5.0%} bw")
            if "speedup" in row:
                parts.append(f"speedup {row['speedup']:.1f}x")
            print(" | ".join(parts))
        return
    for row in results["rows"]:
        parts = [f"L={row['L']:>6} B={row['batch']:>3}"]
        for name, r in row.items():
            if isinstance(r, dict):
                ratios = ("x_transformer", "x_transformer_graphs", "x_original")
                extra = "".join(f" {key} {r[key]:.2f}/{r[key + '_pipelined']:.2f}" for key in ratios if key in r)
                parts.append(f"{name} {r['tokens/s'] / 1e3:7.1f}k/{r['tokens/s_pipelined'] / 1e3:.1f}k tok/s "
                             f"{r['peak_MiB']:7.0f} MiB{extra}")
        print(" | ".join(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ema", "layer"])
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=8, help="ema: batch size")
    parser.add_argument("--dim", type=int, default=1024, help="ema: channels")
    parser.add_argument("--ndim", type=int, default=16, help="ema: EMA order N")
    parser.add_argument("--tokens", type=int, default=32768, help="layer: tokens per batch")
    parser.add_argument("--precision", choices=["bf16-autocast", "bf16"], default="bf16-autocast",
                        help="layer: bf16 autocast over float32 parameters, or bf16 parameters and input")
    parser.add_argument("--norm", choices=["post", "pre"], default="post",
                        help="layer: where both layers put their norms (post: as fairseq's Transformer and the "
                             "Mega translation models default to)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.lengths is None:
        args.lengths = [1024, 4096, 16384, 65536] if args.what == "ema" else [512, 1024, 4096, 16384, 32768]
    results = bench_ema(args) if args.what == "ema" else bench_layer(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_table(args.what, results)
    if args.json and args.what == "layer":
        write_plot(results, os.path.splitext(args.json)[0] + ".png")


def write_plot(results: dict, path: str) -> None:
    """The layer plot of benchmarks/plot_results.py, when matplotlib is installed."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        from plot_results import plot_layer
    except ImportError as error:
        print(f"no plot ({error})")
        return
    plot_layer(results, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
