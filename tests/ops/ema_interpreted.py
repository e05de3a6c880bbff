"""Runs the fused EMA kernels through Triton's interpreter on the CPU (TRITON_INTERPRET=1 must be
set before triton is imported, hence a separate process; see test_ema_fused.py).

    TRITON_INTERPRET=1 python tests/ema_interpreted.py

Prints one JSON line: case name -> largest error of the output, of dx and of the parameter
gradients against the float64 loop reference, and of the carried state."""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers"))
from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig, MultiDimensionalEMA  # noqa: E402
from reference import ema_module_reference, f64, randn, random_padding_mask, randomize_parameters_  # noqa: E402

PARAMETERS = ("alpha", "delta", "beta", "gamma", "omega")

CASES = {  # name: (length, batch, dim, ndim, bidirectional, truncation, padded)
    "causal": (70, 2, 5, 4, False, None, False),
    "causal_truncated_padded": (133, 2, 3, 8, False, 9, True),
    "bidirectional_padded": (67, 3, 6, 4, True, None, True),
    "bidirectional_truncated": (70, 1, 33, 2, True, 64, False),
}


def largest_error(actual, expected) -> float:
    return float((f64(actual) - f64(expected)).abs().max() / f64(expected).abs().max().clamp(min=1.0))


def lag_sum_reference(x, alpha, delta, beta, gamma, omega, bidirectional, truncation, padding_mask):
    """Differentiable float64 EMA layer as a direct sum over lags: y[t] = sum_j k[j] x[t - j]
    (+ sum_m k'[m] x[t + m] backward), k[j] = sqrt(1/N) sum_n gamma p beta q^j, j < K."""
    length, _, dim = x.shape
    signal = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    lags = min(truncation or length, length)
    powers = q.unsqueeze(-1) ** torch.arange(lags, dtype=q.dtype)
    kernel = math.sqrt(1.0 / q.size(1)) * (gamma * p * beta).unsqueeze(-1).mul(powers).sum(1)  # (D', K)
    y = torch.zeros_like(x)
    for lag in range(lags):
        y = y + kernel[:dim, lag] * F.pad(signal, (0, 0, 0, 0, lag, 0))[:length]
        if bidirectional:
            y = y + kernel[dim:, lag] * F.pad(signal, (0, 0, 0, 0, 0, lag))[lag:]
    return F.silu(y + omega * x)


def check(length, batch, dim, ndim, bidirectional, truncation, padded, seed=0):
    """Output and gradients (x and every parameter) of the fused EMA layer in float32."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, ndim, bidirectional, truncation, impl="triton"), seed)
    x = randn(length, batch, dim, seed=seed + 1).float().requires_grad_()
    mask = random_padding_mask(batch, length, seed=seed + 2) if padded else None
    weight = randn(length, batch, dim, seed=seed + 3)
    y = ema(x, mask)
    (y.double() * weight).sum().backward()
    x64 = f64(x).requires_grad_()
    params64 = [f64(getattr(ema, name)).requires_grad_() for name in PARAMETERS]
    expected = lag_sum_reference(x64, *params64, bidirectional, truncation, mask)
    (expected * weight).sum().backward()
    errors = {"y": largest_error(y, expected), "dx": largest_error(x.grad, x64.grad)}
    for name, param64 in zip(PARAMETERS, params64):
        errors["d" + name] = largest_error(getattr(ema, name).grad, param64.grad)
    return errors


def check_state(length=150, split=70, batch=2, dim=5, ndim=4, seed=5):
    """Two calls with a carried state equal one pass (and the loop reference's last state)."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, ndim, impl="triton"), seed)
    x = randn(length, batch, dim, seed=seed + 1).float()
    state = {}
    with torch.no_grad():
        parts = [ema(x[:split], state=state), ema(x[split:], state=state)]
    expected, hidden = ema_module_reference(ema, x)
    return {"y": largest_error(torch.cat(parts), expected), "hidden": largest_error(state["ema_hidden"], hidden)}


def layer_pair(layer_class, seed, **options):
    """The same random layer with the fused and with the FFT EMA (float32)."""
    layers = []
    for impl in ("triton", "fft"):
        cfg = MegaLayerConfig(8, 16, 16, 8, 4, max_positions=128, ema_impl=impl, **options)
        torch.manual_seed(seed)
        layers.append(randomize_parameters_(layer_class(cfg), seed).eval())
    return layers


def check_encoder_layer(length=75, batch=3, seed=7):
    """A chunked encoder layer (bidirectional EMA, truncated, padded): outputs and all gradients."""
    fused, reference = layer_pair(MegaEncoderLayer, seed, chunk_size=16, truncation=20)
    x = randn(length, batch, 8, seed=seed + 1).float()
    mask = random_padding_mask(batch, length, seed=seed + 2)
    outputs = []
    for layer in (fused, reference):
        x_grad = x.clone().requires_grad_()
        y = layer(x_grad, mask)
        (y * randn(length, batch, 8, seed=seed + 3).float()).sum().backward()
        outputs.append([y, x_grad.grad] + [p.grad for p in layer.parameters()])
    return {"largest": max(largest_error(a, b) for a, b in zip(*outputs))}


def check_decoder_steps(length=70, batch=2, seed=9):
    """A chunked decoder layer fed in steps of 1 and 9 (carried EMA state through the fused scan and
    the one-step recurrence) equals its full forward pass."""
    fused, _ = layer_pair(MegaDecoderLayer, seed, chunk_size=16, role="decoder")
    x = randn(length, batch, 8, seed=seed + 1).float()
    memory = randn(11, batch, 8, seed=seed + 2).float()
    with torch.no_grad():
        full = fused(x, memory)[0]
        self_state, cross_state, parts, position = {}, {}, [], 0
        for size in [1, 9, 1, 1, 30, 28]:
            parts.append(fused(x[position: position + size], memory, None, None, self_state, cross_state,
                               position_offset=position)[0])
            position += size
    return {"largest": largest_error(torch.cat(parts), full)}


def check_compiled_encoder_layer(batch=2, seed=11):
    """The fused-EMA encoder layer compiled as --compile-layers does (dynamic shapes; aot_eager here,
    the fused EMA between the compiled graphs) equals the eager layer at two lengths."""
    eager, _ = layer_pair(MegaEncoderLayer, seed, chunk_size=16)
    compiled, _ = layer_pair(MegaEncoderLayer, seed, chunk_size=16)
    compiled.compile(dynamic=True, backend="aot_eager")
    errors = []
    for length in (37, 70):
        x = randn(length, batch, 8, seed=seed + length).float()
        mask = random_padding_mask(batch, length, seed=seed + length)
        outputs = []
        for layer in (compiled, eager):
            layer.zero_grad()
            x_grad = x.clone().requires_grad_()
            y = layer(x_grad, mask)
            y.square().sum().backward()
            outputs.append([y, x_grad.grad] + [p.grad for p in layer.parameters()])
        errors += [largest_error(a, b) for a, b in zip(*outputs)]
    return {"largest": max(errors)}


def main():
    results = {name: check(*case) for name, case in CASES.items()}
    results["carried_state"] = check_state()
    results["encoder_layer"] = check_encoder_layer()
    results["decoder_steps"] = check_decoder_steps()
    results["compiled_encoder_layer"] = check_compiled_encoder_layer()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
