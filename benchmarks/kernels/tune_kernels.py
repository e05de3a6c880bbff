"""Launch settings of the fused kernels, timed at the layer benchmark's shapes (GPU).

    python benchmarks/kernels/tune_kernels.py [--tokens 32768] [--lengths 1024 4096 16384] [--repeats 20]

For each kernel family the module constants that shape its launches (programs, tile sizes, time
chunks) are swept over a small grid and every setting's GPU time (the kernels' CUDA time per call from
torch.profiler over the repeats; on the CPU the synchronized wall-time median) is printed beside the
current one's, with inputs as the bench_layers Mega layer
feeds them (D 512, H 1024, Z 128, N 16, float32 residual stream and bfloat16 projections as under bf16
autocast). The constants in
``mega_fairseq/ops/triton`` were chosen from this table; the kernels compute the same values at every
setting (the tests run them at several).
"""
import argparse
import itertools

import torch

from bench_layers import median_ms
from profile_layer import kernel_times
from mega_fairseq.ops.triton import bias_activation, ema_scan, gated_update, gates, reset_product

D, H, Z, N, FFN = 512, 1024, 128, 16, 1024
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: Triton's interpreter, to check the script


def kernel_ms(call, repeats: int) -> float:
    """The CUDA time of the kernels call() launches, in ms per call (profile_layer.kernel_times; the host's
    launch time left out, which made wall-time medians of single launches vary by 15% between repeats of
    one setting on an H200); on the CPU the wall-time median."""
    if not torch.cuda.is_available():
        return median_ms(call, repeats=repeats)
    return sum(us for us, _, _ in kernel_times(call, repeats)) / 1e3


def sweep(title: str, module, grid: dict, make_call, repeats: int) -> None:
    """Times make_call() with every combination of the module constants in grid; prints the current
    setting's time and the best ones."""
    names = list(grid)
    current = tuple(getattr(module, name) for name in names)
    call = make_call()
    results = []
    for values in itertools.product(*grid.values()):
        for name, value in zip(names, values):
            setattr(module, name, value)
        try:
            results.append((kernel_ms(call, repeats), values))
        except Exception as error:  # a setting the kernel cannot take (too many registers, say)
            print(f"  {dict(zip(names, values))}: {type(error).__name__}: {str(error)[:100]}")
    for name, value in zip(names, current):
        setattr(module, name, value)
    now = kernel_ms(call, repeats)
    results.sort()
    print(f"{title}: current {dict(zip(names, current))} {now:.4f} ms")
    for ms, values in results[:4]:
        print(f"    {ms:.4f} ms ({now / ms:.2f}x)  {dict(zip(names, values))}")


def gated_update_call(rows: int, gated: bool, forward: bool = False):
    """The backward (or forward) of the block's gated update (with the gradient of its copy, as in a
    post-norm layer) or of the FFN's residual sum, with its layernorm."""
    device = DEVICE
    h = torch.randn(rows, 1, D, device=device, dtype=torch.bfloat16)
    hx = torch.randn_like(h) if gated else None
    u = torch.rand_like(h) if gated else None
    residual = torch.randn(rows, 1, D, device=device)
    bias, weight, norm_bias = (torch.randn(D, device=device) for _ in range(3))
    copy_dtype = torch.bfloat16 if gated else None
    run_forward = lambda: gated_update.gated_update_forward(h, bias, hx, u, residual, weight, norm_bias, 1, 1e-5, 1,
                                                            0.0, False, h, copy_dtype)
    if forward:
        return run_forward
    stats = run_forward()[1]
    grad = torch.randn_like(residual)
    grad_copy = torch.randn_like(h) if gated else None  # the block's output is copied for the FFN's fc1
    return lambda: gated_update.gated_update_backward(grad, h, bias, hx, u, residual, weight, True, stats, 1, 1, 0.0,
                                                      False, h, torch.float32, grad_copy)


def gates_calls(rows: int):
    device = DEVICE
    base = torch.randn(rows, 1, 2 * D + Z + H, device=device, dtype=torch.bfloat16)
    values = torch.randn(rows, 1, H, device=device, dtype=torch.bfloat16)
    base_bias, value_bias = torch.randn(base.size(-1), device=device), torch.randn(H, device=device)
    gamma, beta = torch.randn(2, Z, device=device), torch.randn(2, Z, device=device)
    outputs = gates.mega_gates_forward(base, base_bias, values, value_bias, gamma, beta, 1, 0.0, False, base)
    grads = [torch.randn_like(o) for o in outputs]
    forward = lambda: gates.mega_gates_forward(base, base_bias, values, value_bias, gamma, beta, 1, 0.0, False, base)
    backward = lambda: gates.mega_gates_backward(base, base_bias, values, value_bias, gamma, *grads, 1, 0.0, False,
                                                 base, torch.float32)
    return forward, backward


def bias_activation_call(rows: int):
    device = DEVICE
    x = torch.randn(rows, 1, FFN, device=device, dtype=torch.bfloat16)
    bias, grad = torch.randn(FFN, device=device), torch.randn_like(x)
    return lambda: bias_activation.bias_activation_backward(grad, x, bias, 1, 0.0, False, x, False, torch.float32)


def reset_product_calls(length: int, batch: int):
    device = DEVICE
    out = torch.randn(batch, length, H, device=device, dtype=torch.bfloat16)
    r = torch.randn(length, batch, H, device=device, dtype=torch.bfloat16)
    grad = torch.randn(length, batch, H, device=device, dtype=torch.bfloat16)
    return (lambda: reset_product.reset_product_forward(out, r),
            lambda: reset_product.reset_product_backward(grad, out, r))


def ema_calls(length: int, batch: int, dtype: torch.dtype):
    """The bidirectional EMA layer's forward and backward (D 512, N 16) on x (L, B, D)."""
    device = DEVICE
    x = torch.randn(length, batch, D, device=device, dtype=dtype)
    alpha, delta, beta, gamma = (torch.randn(2 * D, N, device=device) for _ in range(4))
    omega = torch.randn(D, device=device)
    _, y, _ = ema_scan._forward(x, None, alpha, delta, beta, gamma, omega, True, 0, keep_y=True)
    grad = torch.randn(length, batch, D, device=device, dtype=torch.promote_types(dtype, omega.dtype))
    return (lambda: ema_scan._forward(x, None, alpha, delta, beta, gamma, omega, True, 0, keep_y=True),
            lambda: ema_scan._backward(grad, x, None, y, alpha, delta, beta, gamma, omega, True, 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", choices=["block", "ema"], help="sweep only the block's kernels or the EMA's")
    args = parser.parse_args()
    rows, repeats = args.tokens, args.repeats
    torch.manual_seed(0)
    if args.only != "ema":
        sweep_block(rows, args.lengths, repeats)
    if args.only != "block":
        sweep_ema(rows, args.lengths, repeats)


def sweep_block(rows: int, lengths, repeats: int) -> None:
    for gated in (True, False):
        sweep(f"gated_update backward, layernorm, {'gated (block)' if gated else 'residual (FFN)'}", gated_update,
              dict(BACKWARD_PROGRAMS=[512, 1024], BACKWARD_TILE_ELEMENTS=[1024, 2048, 4096], BACKWARD_WARPS=[4, 8],
                   BACKWARD_STAGES=[1, 2]),
              lambda: gated_update_call(rows, gated), repeats)
    sweep("gated_update forward, layernorm, gated", gated_update, dict(TILE_ELEMENTS=[1024, 2048, 4096, 8192]),
          lambda: gated_update_call(rows, True, forward=True), repeats)
    blocks = dict(BLOCK_R=[16, 32, 64], BLOCK_C=[64, 128])
    sweep("mega_gates forward", gates, blocks, lambda: gates_calls(rows)[0], repeats)
    sweep("mega_gates backward", gates, dict(BACKWARD_ROW_PROGRAMS=[64, 128, 256], BACKWARD_BLOCK_R=[32, 64],
                                             BACKWARD_NUM_WARPS=[4, 8], BACKWARD_STAGES=[1, 2, 3]),
          lambda: gates_calls(rows)[1], repeats)
    sweep("bias_activation backward (FFN)", bias_activation, dict(BACKWARD_ROW_PROGRAMS=[64, 128, 256, 512, 1024],
                                                                   BACKWARD_STAGES=[1, 2], **blocks),
          lambda: bias_activation_call(rows), repeats)
    for length in lengths:
        forward, backward = reset_product_calls(length, max(1, rows // length))
        sweep(f"reset_product forward L {length}", reset_product, blocks, lambda: forward, repeats)
        sweep(f"reset_product backward L {length}", reset_product, blocks, lambda: backward, repeats)


def sweep_ema(rows: int, lengths, repeats: int) -> None:
    for length in lengths:
        batch = max(1, rows // length)
        for dtype in (torch.float32, torch.bfloat16):
            forward, backward = ema_calls(length, batch, dtype)
            name = f"EMA L {length} B {batch} {str(dtype)[6:]}"
            warps = [2048, 4096, 8192, 16384, 32768]
            sweep(f"{name} forward", ema_scan, dict(TARGET_WARPS=warps, MAX_ROWS=[1, 2, 4], MIN_CHUNK=[32, 64, 128]),
                  lambda: forward, repeats)
            backward_rows = "MAX_ROWS" if dtype == torch.float32 else "MAX_ROWS_BACKWARD_HALF"
            sweep(f"{name} backward", ema_scan, {"TARGET_WARPS": warps, backward_rows: [1, 2, 4],
                                                 "MIN_BACKWARD_CHUNK": [64, 128, 256]},
                  lambda: backward, repeats)
            sweep(f"{name} forward, register cap", ema_scan, dict(MAX_REGISTERS_FORWARD=[0, 192, 168, 144]),
                  lambda: forward, repeats)
            sweep(f"{name} backward, register caps", ema_scan,
                  dict(MAX_REGISTERS_BACKWARD_STATES=[0, 208, 168], MAX_REGISTERS_BACKWARD=[0, 224, 168]),
                  lambda: backward, repeats)


if __name__ == "__main__":
    main()
