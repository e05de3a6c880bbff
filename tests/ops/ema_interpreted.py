"""Runs the fused EMA kernels through Triton's interpreter on the CPU (TRITON_INTERPRET=1 must be
set before triton is imported, hence a separate process; see test_ema_fused.py).

    TRITON_INTERPRET=1 python tests/ema_interpreted.py

Prints one JSON line: check name -> {quantity: value}; errors are the largest error relative to
the float64 reference (or to the eager result), counts and flags are plain numbers. Sizes are tiny
but cover every code path: one chunk and several (chunk lengths shrunk), more chunks than the prefix
scan loads at once (19 and 10, not multiples of its 4), a last chunk and an 8-step group cut by the
sequence end, several row and channel blocks with masked tails, padding, both directions, truncation
below and at the length, carried states, the custom operators compiled.
"""
import contextlib
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers"))
from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig, MultiDimensionalEMA  # noqa: E402,E501
from mega_fairseq.ops.triton import ema_scan  # noqa: E402
from reference import ema_module_reference, f64, randn, random_padding_mask, randomize_parameters_  # noqa: E402

PARAMETERS = ("alpha", "delta", "beta", "gamma", "omega")

LAYER_CASES = {  # name: (length, batch, dim, ndim, bidirectional, truncation, padded, several chunks)
    "short_causal": (13, 2, 5, 4, False, None, False, False),
    "short_bidirectional_truncated_padded": (13, 5, 6, 4, True, 4, True, False),
    "short_truncation_not_below_length": (9, 2, 3, 2, False, 9, True, False),
    "long_causal_truncated_padded": (37, 2, 3, 8, False, 11, True, True),
    "long_bidirectional_truncated_padded": (21, 3, 33, 2, True, 5, True, True),
    "many_chunks_bidirectional_truncated_padded": (150, 2, 5, 4, True, 40, True, True),
    "several_chunks_causal_padded": (37, 2, 3, 8, False, None, True, True),
    "many_chunks_bidirectional_padded": (70, 2, 5, 4, True, None, True, True),
}


@contextlib.contextmanager
def short_chunks(enabled: bool = True):
    """Forward chunks of 8 steps and backward chunks of 16, so that a few dozen steps take the
    several-chunk path (chunk states, prefix, chunk pass), with programs of up to 4 batch rows (the
    default is fewer: the one-chunk cases run those) and the launches' register caps set (the
    interpreter takes the option; ptxas honours it on a GPU)."""
    names = ("MIN_CHUNK", "MIN_BACKWARD_CHUNK", "MAX_ROWS", "MAX_ROWS_BACKWARD_HALF", "MAX_REGISTERS_FORWARD",
             "MAX_REGISTERS_BACKWARD_STATES", "MAX_REGISTERS_BACKWARD")
    saved = [getattr(ema_scan, name) for name in names]
    if enabled:
        for name, value in zip(names, (8, 16, 4, 4, 128, 208, 168)):
            setattr(ema_scan, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(ema_scan, name, value)


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


def check_layer(length, batch, dim, ndim, bidirectional, truncation, padded, several_chunks, seed=0):
    """Output and gradients (x and every parameter) of the fused EMA layer in float32."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, ndim, bidirectional, truncation, impl="triton"), seed)
    x = randn(length, batch, dim, seed=seed + 1).float().requires_grad_()
    mask = random_padding_mask(batch, length, seed=seed + 2) if padded else None
    weight = randn(length, batch, dim, seed=seed + 3)
    with short_chunks(several_chunks):
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


def check_layer_with_copy(length, batch, dim, ndim, bidirectional, truncation, padded, several_chunks, seed=21):
    """The module's forward_and_input under float16 autocast (float32 x and parameters), through the fused
    scan: its output in float16 (within float16 rounding), the copy exactly x in float16, and x's gradient
    summing both paths, and every parameter's, against the float64 lag sum (the output weights exact in
    float16, so that the float16 gradients the backward receives are exact)."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, ndim, bidirectional, truncation, impl="triton"), seed)
    x = randn(length, batch, dim, seed=seed + 1).float().requires_grad_()
    mask = random_padding_mask(batch, length, seed=seed + 2) if padded else None
    weights = [randn(length, batch, dim, seed=seed + 3 + i).half().double() for i in range(2)]
    with short_chunks(several_chunks), torch.autocast("cpu", dtype=torch.float16):
        out, x_copy = ema.forward_and_input(x, mask)
    ((out.double() * weights[0]).sum() + (x_copy.double() * weights[1]).sum()).backward()
    x64 = f64(x).requires_grad_()
    params64 = [f64(getattr(ema, name)).requires_grad_() for name in PARAMETERS]
    expected = lag_sum_reference(x64, *params64, bidirectional, truncation, mask)
    (expected * weights[0] + x64 * weights[1]).sum().backward()
    errors = {"y": largest_error(out, expected), "copy": largest_error(x_copy, x.half()),
              "dx": largest_error(x.grad, x64.grad),
              "float16_outputs": int(out.dtype == x_copy.dtype == torch.float16)}
    for name, param64 in zip(PARAMETERS, params64):
        errors["d" + name] = largest_error(getattr(ema, name).grad, param64.grad)
    return errors


def check_copy_gradient_alone(seed=25):
    """When only the copy of x has a gradient (the EMA's output unused), eagerly and through the custom
    operator: x's gradient is the copy's, exactly, and every parameter's is zero."""
    ema = randomize_parameters_(MultiDimensionalEMA(5, 4, bidirectional=True, impl="triton"), seed)
    params = [getattr(ema, name) for name in PARAMETERS]
    weight = randn(9, 2, 5, seed=seed).half()

    def eager(x):
        with torch.autocast("cpu", dtype=torch.float16):
            return ema.forward_and_input(x)[1]

    def operator(x):
        return torch.ops.mega.ema_layer.default(x, None, *params, True, 0, torch.float16, torch.float16)[2]

    errors = {}
    for name, copy_of in (("eager", eager), ("operator", operator)):
        ema.zero_grad()
        x = randn(9, 2, 5, seed=seed + 1).float().requires_grad_()
        (copy_of(x) * weight).float().sum().backward()
        errors[name + "_dx"] = largest_error(x.grad, weight.double())
        errors[name + "_params"] = max(float(p.grad.abs().max()) for p in params)
    return errors


def check_carried_state(batch=2, dim=5, ndim=4, seed=5):
    """A causal EMA fed in parts [1, 13, 1, 5, 1, 12, 45] with a carried state (a fresh start, several
    chunks from a state, one-step launches, one chunk from a state, more chunks than the prefix scan
    loads at once; padded) equals the float64
    recurrence over the whole sequence; the state is one tensor updated in place; a (B, D) step
    equals the (1, B, D) one."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, ndim, impl="triton"), seed)
    sizes = [1, 13, 1, 5, 1, 12, 45]
    x = randn(sum(sizes), batch, dim, seed=seed + 1).float()
    mask = random_padding_mask(batch, sum(sizes), seed=seed + 2, min_real=20)
    state, parts, position, buffers = {}, [], 0, set()
    with torch.no_grad(), short_chunks():
        for size in sizes:
            parts.append(ema(x[position: position + size], mask[:, position: position + size], state=state))
            buffers.add((id(state["ema_hidden"]), state["ema_hidden"].data_ptr()))
            position += size
        hidden = state["ema_hidden"].clone()
        params = [getattr(ema, name) for name in PARAMETERS]
        step_2d, _ = ema_scan.fused_ema_with_state(x[-1], None, *params, hidden.clone())
        step_3d, _ = ema_scan.fused_ema_with_state(x[-1:], None, *params, hidden.clone())
    expected, expected_hidden = ema_module_reference(ema, x, mask)
    return {"y": largest_error(torch.cat(parts), expected), "hidden": largest_error(state["ema_hidden"],
                                                                                     expected_hidden),
            "state_buffers": len(buffers), "step_2d_vs_3d": largest_error(step_2d, step_3d[0])}


def check_compiled_layer(seed=11):
    """A function calling the fused EMA (bidirectional, truncated, padded) compiled with
    fullgraph=True, dynamic=True (aot_eager: the custom operators traced) gives the eager outputs
    and gradients at two lengths and batch sizes (one chunk, several chunks), compiled once."""
    ema = randomize_parameters_(MultiDimensionalEMA(5, 4, bidirectional=True, truncation=6, impl="triton"), seed)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x, mask: ema(x, mask) * 2.0, backend=counter, fullgraph=True, dynamic=True)
    errors = []
    with short_chunks():
        for length, batch in ((7, 2), (20, 3)):
            x = randn(length, batch, 5, seed=seed + length).float()
            mask = random_padding_mask(batch, length, seed=seed + length)
            weight = randn(length, batch, 5, seed=seed).float()
            results = []
            for fn in (compiled, lambda x, mask: ema(x, mask) * 2.0):
                ema.zero_grad()
                x_grad = x.clone().requires_grad_()
                out = fn(x_grad, mask)
                (out * weight).sum().backward()
                results.append([out, x_grad.grad] + [p.grad.clone() for p in ema.parameters()])
            errors += [largest_error(a, b) for a, b in zip(*results)]
    return {"largest": max(errors), "compilations": counter.frame_count}


def check_compiled_copy(seed=23):
    """forward_and_input under float16 autocast, compiled with fullgraph=True, dynamic=True (aot_eager:
    the custom operators with the copy traced), gives the eager outputs and gradients at two lengths."""
    ema = randomize_parameters_(MultiDimensionalEMA(5, 4, bidirectional=True, truncation=6, impl="triton"), seed)
    counter = CompileCounterWithBackend("aot_eager")

    def run(x, mask):
        with torch.autocast("cpu", dtype=torch.float16):
            return ema.forward_and_input(x, mask)

    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    errors = []
    with short_chunks():
        for length, batch in ((7, 2), (20, 3)):
            x = randn(length, batch, 5, seed=seed + length).float()
            mask = random_padding_mask(batch, length, seed=seed + length)
            weights = [randn(length, batch, 5, seed=seed + i).half() for i in range(2)]
            results = []
            for fn in (compiled, run):
                ema.zero_grad()
                x_grad = x.clone().requires_grad_()
                out, x_copy = fn(x_grad, mask)
                ((out * weights[0]).float().sum() + (x_copy * weights[1]).float().sum()).backward()
                results.append([out, x_copy, x_grad.grad] + [p.grad.clone() for p in ema.parameters()])
            errors += [largest_error(a, b) for a, b in zip(*results)]
    return {"largest": max(errors), "compilations": counter.frame_count}


def check_compiled_steps(seed=13):
    """Decoding steps from a carried state compiled with fullgraph=True, dynamic=True (the mutating
    custom operator) equal the eager steps, the state updated in place; compiled twice (the first
    step finds no state)."""
    ema = randomize_parameters_(MultiDimensionalEMA(5, 4, impl="triton"), seed)
    counter = CompileCounterWithBackend("aot_eager")
    def step(x, state):
        return ema(x, None, state)

    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    x = randn(4, 3, 5, seed=seed).float()
    states = {}, {}
    outputs, buffers = ([], []), set()
    with torch.no_grad():
        for t in range(4):
            for fn, state, out in zip((compiled, step), states, outputs):
                out.append(fn(x[t: t + 1], state))
            buffers.add(states[0]["ema_hidden"].data_ptr())
    return {"y": largest_error(torch.cat(outputs[0]), torch.cat(outputs[1])),
            "hidden": largest_error(states[0]["ema_hidden"], states[1]["ema_hidden"]),
            "state_buffers": len(buffers), "compilations": counter.frame_count}


def check_opcheck(seed=17):
    """torch.library.opcheck of both custom operators (schema, autograd registration, fake tensors,
    AOT dispatch with dynamic shapes): the number of its checks that did not succeed."""
    x = randn(6, 2, 5, seed=seed).float().requires_grad_()
    mask = random_padding_mask(2, 6, seed=seed)
    params = [randn(*shape, seed=seed + i).float().requires_grad_()
              for i, shape in enumerate([(10, 4)] * 4 + [(5,)])]
    layer = torch.library.opcheck(torch.ops.mega.ema_layer.default, (x, mask, *params, True, 3, None, None))
    copying = torch.library.opcheck(torch.ops.mega.ema_layer.default,
                                    (x, mask, *params, True, 3, torch.float16, torch.float16))
    state = randn(2, 5, 4, seed=seed).float()
    steps = torch.library.opcheck(torch.ops.mega.ema_with_state.default,
                                  (x.detach(), mask, *[p.detach()[:5] for p in params[:4]], params[4].detach(),
                                   state, True))
    results = list(layer.values()) + list(copying.values()) + list(steps.values())
    return {"failed": sum(result != "SUCCESS" for result in results)}


def check_encoder_layer_graph_breaks(seed=19):
    """A whole encoder layer on the fused EMA (bidirectional, truncated, padded) traced by dynamo:
    its number of graph breaks."""
    cfg = MegaLayerConfig(8, 16, 16, 8, 4, 8, max_positions=64, role="encoder", ema_impl="triton", truncation=5)
    layer = MegaEncoderLayer(cfg)
    explanation = torch._dynamo.explain(layer)(randn(21, 3, 8, seed=seed).float(), random_padding_mask(3, 21, seed))
    return {"graph_breaks": explanation.graph_break_count}


def check_decoder_steps(length=21, batch=2, seed=9):
    """A chunked decoder layer fed in steps of 1 and several (the carried EMA state through the fused
    kernels) equals its full forward pass."""
    cfg = MegaLayerConfig(8, 16, 16, 8, 4, max_positions=64, ema_impl="triton", chunk_size=8, role="decoder")
    torch.manual_seed(seed)
    layer = randomize_parameters_(MegaDecoderLayer(cfg), seed).eval()
    x = randn(length, batch, 8, seed=seed + 1).float()
    memory = randn(5, batch, 8, seed=seed + 2).float()
    with torch.no_grad():
        full = layer(x, memory)[0]
        self_state, cross_state, parts, position = {}, {}, [], 0
        for size in [1, 9, 1, 10]:
            parts.append(layer(x[position: position + size], memory, None, None, self_state, cross_state,
                               position_offset=position)[0])
            position += size
    return {"largest": largest_error(torch.cat(parts), full)}


def main():
    results = {name: check_layer(*case) for name, case in LAYER_CASES.items()}
    joint, ema_scan.JOINT_CHUNK_STATES = ema_scan.JOINT_CHUNK_STATES, False
    try:
        results["many_chunks_bidirectional_padded_per_direction"] = check_layer(
            *LAYER_CASES["many_chunks_bidirectional_padded"])
    finally:
        ema_scan.JOINT_CHUNK_STATES = joint
    results["copy_short_causal"] = check_layer_with_copy(13, 2, 5, 4, False, None, False, False)
    results["copy_long_bidirectional_truncated_padded"] = check_layer_with_copy(21, 3, 33, 2, True, 5, True, True)
    results["copy_gradient_alone"] = check_copy_gradient_alone()
    results["carried_state"] = check_carried_state()
    results["compiled_layer"] = check_compiled_layer()
    results["compiled_copy"] = check_compiled_copy()
    results["compiled_steps"] = check_compiled_steps()
    results["opcheck"] = check_opcheck()
    results["encoder_layer"] = check_encoder_layer_graph_breaks()
    results["decoder_steps"] = check_decoder_steps()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
