"""Runs the fused attention kernels through Triton's interpreter on the CPU (TRITON_INTERPRET=1 must be
set before triton is imported, hence a separate process; see test_attention_fused.py).

    TRITON_INTERPRET=1 python tests/attention_interpreted.py

Tiles are shrunk (8 columns, 32 elements) so that tiny sizes still take several row and column blocks.
Prints one JSON line: case name -> largest errors, in float64:
  out_ref   output against the float64 loop reference (rows the spec defines);
  fd_ref    directional derivative (every input and bias parameter) against central differences of the
            float64 reference, relative;
  out, dq, dk, dv, dbias   against the matmul path (the unfused twin), outputs and gradients.
Dropout, attention_weights and torch.compile cases report their own quantities.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from mega_fairseq.modules import Dropout, RotaryRelativePositionBias, SimpleRelativePositionBias  # noqa: E402
from mega_fairseq.ops import attention  # noqa: E402
from mega_fairseq.ops.attention import chunk_attention  # noqa: E402
from mega_fairseq.ops.triton import chunk_softmax  # noqa: E402
from reference import (chunk_attention_reference, randn, random_padding_mask, randomize_parameters_,  # noqa: E402
                       rotary_bias_reference)
from test_attention import specified_rows  # noqa: E402

chunk_softmax.MAX_BLOCK_N = 8
chunk_softmax.TILE_ELEMENTS = 32
torch.set_num_threads(1)
Z, H = 4, 5

# name: (attention_fn, chunk_size, key_length, query_length, causal, padding, bias kind)
CASES = {
    "softmax_unchunked_causal_allpad_row": ("softmax", -1, 19, 19, True, "all_pad_row", "simple"),
    "softmax_chunked_tail_rotary": ("softmax", 8, 21, 21, False, "random", "rotary"),
    "softmax_chunked_left_padding": ("softmax", 4, 10, 10, True, "left", "simple"),
    "softmax_fewer_queries": ("softmax", -1, 13, 3, True, "random", "rotary"),
    "softmax_chunk_longer_than_sequence": ("softmax", 16, 9, 9, False, "all_pad_row", "simple"),
    "softmax_single_position": ("softmax", -1, 1, 1, True, None, "simple"),
    "laplace_chunked_tail_causal": ("laplace", 8, 21, 21, True, "random", "simple"),
    "laplace_unchunked_padded_rotary": ("laplace", -1, 11, 11, False, "all_pad_row", "rotary"),
    "laplace_fewer_queries": ("laplace", -1, 12, 5, False, "random", "simple"),
    "relu2_chunked_tail_unpadded": ("relu2", 4, 10, 10, False, None, "simple"),
    "relu2_unchunked_causal_rotary": ("relu2", -1, 19, 19, True, "random", "rotary"),
    "cached_keys_over_chunks_fall_back": ("softmax", 4, 9, 6, True, "random", "simple"),
}


def largest(a, b) -> float:
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def padding(kind, batch, length, seed):
    if kind is None:
        return None
    mask = random_padding_mask(batch, length, seed)
    if kind == "all_pad_row":
        mask[-1] = True
    elif kind == "left":
        mask[1, :6] = True
    return mask


def bias_module(kind, positions, seed):
    module = SimpleRelativePositionBias(positions) if kind == "simple" else RotaryRelativePositionBias(Z, positions)
    return randomize_parameters_(module.double(), seed)


def bias_entry(module):
    """bias(i, j) of the module, from the float64 references."""
    if isinstance(module, SimpleRelativePositionBias):
        positions = module.max_positions
        weight = module.weight.detach()
        return lambda i, j: float(weight[positions - 1 + j - i])
    table = rotary_bias_reference(module.alpha, module.beta, module.max_positions, module.max_positions)
    return lambda i, j: float(table[i, j])


def run(impl, q, k, v, module, fn, chunk_size, causal, mask, cotangent, **options):
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    module.zero_grad()
    out, _ = chunk_attention(*inputs, chunk_size=chunk_size, attention_fn=fn, position_bias=module, causal=causal,
                             key_padding_mask=mask, impl=impl, **options)
    (out * cotangent).sum().backward()
    grads = [t.grad for t in inputs] + [p.grad.clone() for p in module.parameters()]
    return out.detach(), grads


def reference_loss(q, k, v, module, fn, chunk_size, causal, mask, cotangent):
    out, _ = chunk_attention_reference(q, k, v, chunk_size, fn, bias_entry(module), causal, mask)
    return float((out * cotangent).sum()), out


def check(fn, chunk_size, key_length, query_length, causal, pad, bias_kind, seed=0):
    batch = 3
    q, k, v = randn(batch, query_length, Z, seed=seed), randn(batch, key_length, Z, seed=seed + 1), \
        randn(batch, key_length, H, seed=seed + 2)
    mask = padding(pad, batch, key_length, seed + 3)
    module = bias_module(bias_kind, key_length if chunk_size < 0 else chunk_size, seed + 4)
    rows = torch.ones(batch, query_length, dtype=torch.bool)
    if query_length == key_length:
        rows = specified_rows(fn, causal, mask, batch, query_length, key_length, chunk_size)
    cotangent = randn(batch, query_length, H, seed=seed + 5) * rows.unsqueeze(-1)
    out, grads = run("triton", q, k, v, module, fn, chunk_size, causal, mask, cotangent)
    twin, twin_grads = run("matmul", q, k, v, module, fn, chunk_size, causal, mask, cotangent)
    errors = {"out": largest(out, twin)}
    for name, grad, twin_grad in zip(("dq", "dk", "dv", "dbias", "dbias2"), grads, twin_grads):
        errors[name] = largest(grad, twin_grad)
    _, expected = reference_loss(q, k, v, module, fn, chunk_size, causal, mask, cotangent)
    errors["out_ref"] = largest(out[rows], expected[rows])
    # directional derivative against central differences of the reference
    params = list(module.parameters())
    directions = [randn(*t.shape, seed=seed + 10 + n) for n, t in enumerate([q, k, v] + params)]
    eps = 1e-6
    losses = []
    for sign in (1.0, -1.0):
        shifted = [t + sign * eps * d for t, d in zip((q, k, v), directions)]
        with torch.no_grad():
            for p, d in zip(params, directions[3:]):
                p.add_(sign * eps * d)
        losses.append(reference_loss(*shifted, module, fn, chunk_size, causal, mask, cotangent)[0])
        with torch.no_grad():
            for p, d in zip(params, directions[3:]):
                p.sub_(sign * eps * d)
    numeric = (losses[0] - losses[1]) / (2 * eps)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, directions)))
    errors["fd_ref"] = abs(numeric - analytic) / max(abs(numeric), 1.0)
    return errors


def recovered_weights(fn, chunk_size, length, causal, mask, module, q, k, p, seed):
    """The dropped weights (B, L, chunk) of the fused path, read back through identity values."""
    chunk = length if chunk_size < 0 else chunk_size
    eye = torch.eye(chunk, dtype=torch.float64).repeat(-(-length // chunk), 1)[:length]
    torch.manual_seed(seed)
    out, _ = chunk_attention(q, k, eye.expand(q.size(0), -1, -1), chunk_size=chunk_size, attention_fn=fn,
                             position_bias=module, causal=causal, key_padding_mask=mask,
                             weight_dropout=Dropout(p), impl="triton")
    return out


def check_dropout(fn, chunk_size=8, length=13, causal=True, p=0.3, seed=20):
    """Same seed, same result; the backward pass uses the forward's mask: gradients equal those of the
    matmul path with that mask (read back through identity values) as its dropout."""
    batch = 2
    q, k, v = randn(batch, length, Z, seed=seed), randn(batch, length, Z, seed=seed + 1), \
        randn(batch, length, H, seed=seed + 2)
    mask = random_padding_mask(batch, length, seed + 3)
    module = bias_module("simple", chunk_size, seed + 4)
    dropout = Dropout(p)
    cotangent = randn(batch, length, H, seed=seed + 5)
    torch.manual_seed(seed)
    out, grads = run("triton", q, k, v, module, fn, chunk_size, causal, mask, cotangent, weight_dropout=dropout)
    torch.manual_seed(seed)
    again, _ = run("triton", q, k, v, module, fn, chunk_size, causal, mask, cotangent, weight_dropout=dropout)
    other, _ = run("triton", q, k, v, module, fn, chunk_size, causal, mask, cotangent, weight_dropout=dropout)
    dropped = recovered_weights(fn, chunk_size, length, causal, mask, module, q, k, p, seed)
    p32 = float(torch.tensor(p, dtype=torch.float32))
    chunks = -(-length // chunk_size)
    padded = torch.nn.functional.pad(dropped, (0, 0, 0, chunks * chunk_size - length), value=1.0)
    keep = (padded != 0).view(batch, chunks, chunk_size, chunk_size)
    twin, twin_grads = run("matmul", q, k, v, module, fn, chunk_size, causal, mask, cotangent,
                           weight_dropout=lambda w: w * keep / (1.0 - p32))
    errors = {"repeat": largest(out, again), "other_seed_differs": float(not torch.equal(out, other)),
              "out": largest(out, twin)}
    for name, grad, twin_grad in zip(("dq", "dk", "dv", "dbias"), grads, twin_grads):
        errors[name] = largest(grad, twin_grad)
    return errors


def check_dropout_rate(p=0.3, length=64, seed=30):
    """The fraction of weights kept (unchunked, no masks: every weight > 0) is 1 - p (full-size tiles,
    for speed)."""
    q, k = randn(2, length, Z, seed=seed), randn(2, length, Z, seed=seed + 1)
    small_tiles = chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS
    chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS = 128, 1024
    dropped = recovered_weights("softmax", -1, length, False, None, bias_module("simple", length, seed), q, k, p,
                                seed)
    chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS = small_tiles
    return {"kept": float((dropped != 0).double().mean())}


def check_attention_weights(seed=40):
    """attention_weights on given scores (cross-attention: bias matrix, key mask, no causal mask)."""
    errors = {}
    for fn in ("softmax", "laplace", "relu2"):
        scores = randn(3, 7, 11, seed=seed).requires_grad_()
        bias = randn(7, 11, seed=seed + 1).requires_grad_()
        key_valid = ~random_padding_mask(3, 11, seed + 2).unsqueeze(1)
        key_valid[2] = False
        cotangent = randn(3, 7, 11, seed=seed + 3)
        results = []
        for fused in (True, False):
            scores.grad = bias.grad = None
            if fused:
                weights = attention.fused_attention.fused_attention_weights(scores, fn, key_valid, bias, Z)
            else:
                weights = attention.attention_weights(scores, fn, key_valid, None, bias, Z)
            (weights * cotangent).sum().backward()
            results.append([weights.detach(), scores.grad, bias.grad])
        for name, a, b in zip(("weights", "dscores", "dbias"), *results):
            errors[f"{fn}_{name}"] = largest(a, b)
    return errors


def check_compiled(seed=50):
    """torch.compile(aot_eager, fullgraph, dynamic) over chunk_attention (chunked causal softmax with dropout
    and padding; unchunked laplace with the rotary bias) and attention_weights: one graph for lengths
    6, 13, 21 and batches 2, 3 (none equal to Z or H: duck sizing would tie them), outputs and gradients
    equal to eager."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    errors = {}
    settings = {"softmax_chunked": ("softmax", 8, True, "simple", 0.2), "laplace_unchunked": ("laplace", -1, False,
                                                                                             "rotary", 0.0)}
    for name, (fn, chunk_size, causal, bias_kind, p) in settings.items():
        module = bias_module(bias_kind, 32 if chunk_size < 0 else chunk_size, seed)
        dropout = Dropout(p)

        def attend(q, k, v, mask):
            return chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn=fn, position_bias=module,
                                   causal=causal, key_padding_mask=mask, weight_dropout=dropout, impl="triton")[0]
        compiled = torch.compile(attend, backend="aot_eager", fullgraph=True, dynamic=True)
        dynamo.reset()
        counters.clear()
        worst = 0.0
        for length, batch in ((6, 2), (13, 3), (21, 2)):
            inputs = (randn(batch, length, Z, seed=seed + length), randn(batch, length, Z, seed=seed + 1),
                      randn(batch, length, H, seed=seed + 2))
            mask = random_padding_mask(batch, length, seed + 3)
            results = []
            for fn_ in (compiled, attend):
                leaves = [t.clone().requires_grad_() for t in inputs]
                module.zero_grad()
                torch.manual_seed(seed)
                out = fn_(*leaves, mask)
                out.square().sum().backward()
                results.append([out] + [t.grad for t in leaves] + [p.grad.clone() for p in module.parameters()])
            worst = max([worst] + [largest(a, b) for a, b in zip(*results)])
        errors[name] = worst
        errors[name + "_graphs"] = counters["stats"]["unique_graphs"]

    def weights_fn(scores, key_valid, bias):
        return attention.fused_attention.fused_attention_weights(scores, "softmax", key_valid, bias, Z)
    compiled = torch.compile(weights_fn, backend="aot_eager", fullgraph=True, dynamic=True)
    dynamo.reset()
    counters.clear()
    worst = 0.0
    for target, source in ((3, 5), (6, 9)):
        scores = randn(2, target, source, seed=seed + target).requires_grad_()
        bias = randn(target, source, seed=seed).requires_grad_()
        key_valid = ~random_padding_mask(2, source, seed).unsqueeze(1)
        results = []
        for fn_ in (compiled, weights_fn):
            scores.grad = bias.grad = None
            weights = fn_(scores, key_valid, bias)
            weights.square().sum().backward()
            results.append([weights, scores.grad, bias.grad])
        worst = max([worst] + [largest(a, b) for a, b in zip(*results)])
    errors["attention_weights"] = worst
    errors["attention_weights_graphs"] = counters["stats"]["unique_graphs"]
    return errors


def main():
    results = {name: check(*case) for name, case in CASES.items()}
    results["dropout_softmax"] = check_dropout("softmax")
    results["dropout_laplace"] = check_dropout("laplace", chunk_size=4, length=10, causal=False)
    results["dropout_rate"] = check_dropout_rate()
    results["attention_weights"] = check_attention_weights()
    results["compiled"] = check_compiled()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
