"""Where one Mega layer's time goes, and what torch.compile changes (GPU).

    python benchmarks/kernels/profile_layer.py [--length 4096] [--tokens 32768] [--chunk 128] [--compile] [--graphs]

1. torch.profiler: CUDA time per kernel of one Mega encoder layer forward+backward (D 512, H 1024,
   FFN 1024, Z 128, N 16, bf16 autocast), grouped into matrix products, the package's Triton kernels
   (EMA, block, attention), softmax, and everything else (elementwise and reductions); then the same
   for the Transformer layer (a kernel total well below the timed forward+backward below means the
   layer waits on the host); with --graphs also both layers as the models train them by default,
   replayed from CUDA graphs (bench_layers' ``*_graphs`` variants: what a replay runs beside the
   eager kernels);
2. forward+backward time of the Mega layer and of fairseq's Transformer layer, eager, and with
   --compile also compiled as ``--compile-layers`` compiles Mega layers (in place, dynamic shapes;
   both layers the same way).

With --settings, instead: the Mega layer's kernel time per step (and its EMA kernels') under each
setting of the fused kernels' launch constants, each setting run twice, alternating, e.g.
``--settings ema_scan.MAX_REGISTERS_FORWARD=0 ema_scan.MAX_REGISTERS_FORWARD=168`` (a setting may
assign several constants, comma-separated). Kernel totals repeat to about 1% where single-launch wall
times vary by 15%.
"""
import argparse
import collections
import importlib

import torch

import bench_layers
from bench_layers import forward_backward, mega_layer, median_ms, transformer_layer


def kernel_group(name: str) -> str:
    """A coarse category for a CUDA kernel name."""
    lowered = name.lower()
    if any(key in lowered for key in ("gemm", "sm90_xmma", "cutlass", "ampere", "nvjet", "cublas")):
        return "matrix products"
    if any(key in lowered for key in ("flash", "fmha", "attention")):
        return "fused attention (PyTorch)"
    if "softmax" in lowered:
        return "softmax"
    if lowered.startswith("_") and lowered.endswith("_kernel"):
        return "Mega Triton kernels"
    if "triton" in lowered:
        return "other triton (compiled)"
    return "elementwise / reductions"


def bf16_step(layer, x):
    """One forward+backward of layer(x) under bf16 autocast from cleared gradients (as after an
    optimizer's zero_grad), as a callable."""
    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            forward_backward(layer, x)()
    return step


def kernel_times(step, steps: int = 1) -> list:
    """(CUDA microseconds per step, launches per step, kernel name) of each kernel step() runs, over
    ``steps`` profiled steps after three unprofiled ones (layer graphs: traced, then warmed up, then
    recorded; the profiled steps replay)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if event.key.startswith("aten::") or event.key.startswith("autograd") or cuda_us == 0:
            continue
        kernels.append((cuda_us / steps, event.count // steps, event.key))
    return kernels


def profile(layer, x) -> None:
    """Print the per-group and top per-kernel CUDA times of one forward+backward."""
    kernels = kernel_times(bf16_step(layer, x))
    groups = collections.Counter()
    for cuda_us, _, name in kernels:
        groups[kernel_group(name)] += cuda_us
    total = sum(groups.values())
    print(f"total kernel time {total / 1e3:.2f} ms")
    for group, us in groups.most_common():
        print(f"  {group:28s} {us / 1e3:7.2f} ms {us / total:5.0%}")
    for us, count, name in sorted(kernels, reverse=True)[:18]:
        print(f"    {us / 1e3:7.3f} ms x{count:<3d} {name[:90]}")


def parse_setting(text: str) -> list:
    """"ema_scan.MAX_REGISTERS_FORWARD=168,gates.BACKWARD_NUM_WARPS=8" -> [(module, name, value), ...]."""
    assignments = []
    for item in text.split(","):
        target, _, value = item.partition("=")
        module_name, _, name = target.strip().rpartition(".")
        try:
            module = importlib.import_module(f"mega_fairseq.ops.triton.{module_name}")
        except ImportError:
            raise SystemExit(f"--settings: no kernel module 'mega_fairseq.ops.triton.{module_name}' ({item!r})")
        if not name or not hasattr(module, name) or not value:
            raise SystemExit(f"--settings: '{item}' is not MODULE.CONSTANT=VALUE of a constant in {module.__name__}")
        current = getattr(module, name)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--settings: '{item}' sets a flag: give True or False")
            assignments.append((module, name, value.lower() in ("true", "1")))
        else:
            assignments.append((module, name, type(current)(value)))
    return assignments


def compare_settings(layer, x, settings: list, steps: int) -> None:
    """The layer's kernel time per step (and its EMA kernels') under each setting, twice, alternating."""
    parsed = [parse_setting(text) for text in settings]
    saved = [(module, name, getattr(module, name)) for assignments in parsed for module, name, _ in assignments]
    step = bf16_step(layer, x)
    try:
        for _ in range(2):
            for text, assignments in zip(settings, parsed):
                for module, name, value in saved:  # each setting starts from the defaults
                    setattr(module, name, value)
                for module, name, value in assignments:
                    setattr(module, name, value)
                kernels = kernel_times(step, steps)
                ema = sum(us for us, _, name in kernels if name.startswith(("_ema_", "_chunk_")))
                print(f"{text}: layer {sum(us for us, _, _ in kernels) / 1e3:.3f} ms, EMA kernels {ema / 1e3:.3f} ms")
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--norm", choices=["post", "pre"], default="post", help="norm placement of both layers")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time both layers under torch.compile")
    parser.add_argument("--graphs", action="store_true", help="also profile and time both layers on layer graphs")
    parser.add_argument("--settings", nargs="+", metavar="MODULE.CONSTANT=VALUE[,...]",
                        help="instead: the Mega layer's kernel time under each setting of the kernels' constants")
    args = parser.parse_args()
    device = torch.device("cuda")
    batch = max(1, args.tokens // args.length)
    x = torch.randn(args.length, batch, 512, device=device, requires_grad=True)
    prenorm = args.norm == "pre"
    if args.settings:
        print(f"Mega layer, L {args.length} B {batch} chunk {args.chunk}, {args.norm}-norm, {args.repeats} steps each")
        compare_settings(mega_layer(args.chunk, args.length, True, device, prenorm), x, args.settings, args.repeats)
        return
    mega, transformer = mega_layer(args.chunk, args.length, True, device, prenorm), transformer_layer(device, prenorm)
    print(f"Mega layer, L {args.length} B {batch} chunk {args.chunk}, {args.norm}-norm")
    profile(mega, x)
    print(f"Transformer layer, L {args.length} B {batch}")
    profile(transformer, x)

    layers = {"mega": mega, "transformer": transformer}
    if args.graphs:
        on_graphs = bench_layers._OnLayerGraphs  # needs fairseq (the models' layer graphs)
        layers["mega_graphs"] = on_graphs(mega_layer(args.chunk, args.length, True, device, prenorm),
                                          bench_layers.encoder_stack, None)
        layers["transformer_graphs"] = on_graphs(transformer_layer(device, prenorm), bench_layers._single_layer_stack)
        for name in ("mega_graphs", "transformer_graphs"):
            print(f"{name}, L {args.length} B {batch}")
            profile(layers[name], x)
    if args.compile:
        for name, build in (("mega", lambda: mega_layer(args.chunk, args.length, True, device, prenorm)),
                            ("transformer", lambda: transformer_layer(device, prenorm))):
            layers[name + "_compiled"] = build()
            layers[name + "_compiled"].compile(dynamic=True)
    for name, layer in layers.items():
        ms = median_ms(bf16_step(layer, x), repeats=args.repeats)
        print(f"{name:22s} {ms:7.2f} ms  {args.length * batch / ms / 1e3:8.0f}k tokens/s")


if __name__ == "__main__":
    main()
