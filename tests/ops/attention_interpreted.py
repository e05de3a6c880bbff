"""Runs the fused attention kernels through Triton's interpreter on the CPU (TRITON_INTERPRET=1 must be
set before triton is imported, hence a separate process; see test_attention_fused.py).

    TRITON_INTERPRET=1 python tests/attention_interpreted.py

Tiles are shrunk (8 columns, 32 elements) so that tiny sizes still take several row and column blocks.
Prints one JSON line: case name -> largest errors, in float64:
  out_ref   output against the float64 loop reference (rows the spec defines);
  fd_ref    directional derivative (every input and bias parameter) against central differences of the
            float64 reference, relative;
  out, dq, dk, dv, dbias   against the matmul path (the unfused twin), outputs and gradients.
Dropout, the bf16 bias-gradient drift, attention_weights and torch.compile cases report their own
quantities.
"""
import contextlib
import json
import os
import sys

import torch

sys.modules["fairseq"] = None  # the torch-only modules suffice: skip fairseq's import (5 s)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers"))
from mega_fairseq.modules import (Dropout, MegaLayerConfig, MovingAverageGatedAttention,  # noqa: E402
                                  RotaryRelativePositionBias, SimpleRelativePositionBias)
from mega_fairseq.ops import attention  # noqa: E402
from mega_fairseq.ops.attention import chunk_attention  # noqa: E402
from mega_fairseq.ops.triton import chunk_softmax  # noqa: E402
from reference import (chunk_attention_reference, mega_block_reference, randn, random_padding_mask,  # noqa: E402
                       randomize_parameters_, rotary_bias_reference)
from test_attention import specified_rows  # noqa: E402

SMALL_TILES = (8, 32)  # columns, elements: several row and column blocks at tiny sizes
chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS = SMALL_TILES
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


@contextlib.contextmanager
def full_tiles():
    """The GPU's tile sizes (one program per row block, fast in the interpreter) for checks that do not
    need several blocks."""
    chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS = 128, 1024
    try:
        yield
    finally:
        chunk_softmax.MAX_BLOCK_N, chunk_softmax.TILE_ELEMENTS = SMALL_TILES


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
    """The fraction of weights kept (unchunked, no masks: every weight > 0) is 1 - p."""
    q, k = randn(2, length, Z, seed=seed), randn(2, length, Z, seed=seed + 1)
    with full_tiles():
        dropped = recovered_weights("softmax", -1, length, False, None, bias_module("simple", length, seed), q, k,
                                    p, seed)
    return {"kept": float((dropped != 0).double().mean())}


def check_bias_gradient_drift(length=64, seed=35):
    """bf16, softmax, a cotangent on every row: each row of dS sums to 0, so the simple bias's gradient
    (a sum of dS over every row) sums to 0; returns |sum| / norm (weights rounded to bf16 without the
    renormalization of the backward left about 1e-3)."""
    q, k, v = (randn(2, length, dim, seed=seed + n).to(torch.bfloat16) for n, dim in enumerate((Z, Z, H)))
    module = bias_module("simple", 8, seed).float()
    out = chunk_attention(q, k, v, chunk_size=8, attention_fn="softmax", position_bias=module, causal=True,
                          key_padding_mask=random_padding_mask(2, length, seed), impl="triton")[0]
    (out.double() * randn(2, length, H, seed=seed + 9)).sum().backward()
    grad = module.weight.grad.double()
    return {"relative_sum": float(grad.sum().abs() / grad.norm())}


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
                weights = attention.unfused_attention_weights(scores, fn, key_valid, None, bias, Z)
            (weights * cotangent).sum().backward()
            results.append([weights.detach(), scores.grad, bias.grad])
        for name, a, b in zip(("weights", "dscores", "dbias"), *results):
            errors[f"{fn}_{name}"] = largest(a, b)
    return errors


def check_compiled(seed=50):
    """torch.compile(aot_eager, fullgraph, dynamic) over one function calling chunk_attention twice (chunked
    causal softmax with dropout and padding; unchunked laplace with the rotary bias) and attention_weights:
    one graph for lengths 6, 13, 21 and batches 2, 3 (none equal to Z or H: duck sizing would tie them),
    outputs and gradients equal to eager."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    simple, rotary = bias_module("simple", 8, seed), bias_module("rotary", 32, seed + 1)
    dropout = Dropout(0.2)

    def attend(q, k, v, mask, scores, bias):
        chunked = chunk_attention(q, k, v, chunk_size=8, attention_fn="softmax", position_bias=simple, causal=True,
                                  key_padding_mask=mask, weight_dropout=dropout, impl="triton")[0]
        whole = chunk_attention(q, k, v, chunk_size=-1, attention_fn="laplace", position_bias=rotary, causal=False,
                                key_padding_mask=mask, impl="triton")[0]
        weights = attention.fused_attention.fused_attention_weights(scores, "relu2", ~mask.unsqueeze(1), bias, Z)
        return chunked, whole, weights

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True, dynamic=True)
    dynamo.reset()
    counters.clear()
    worst = 0.0
    for length, batch in ((6, 2), (13, 3), (21, 2)):
        inputs = (randn(batch, length, Z, seed=seed + length), randn(batch, length, Z, seed=seed + 1),
                  randn(batch, length, H, seed=seed + 2), randn(batch, length, length, seed=seed + 3),
                  randn(length, length, seed=seed + 4))
        mask = random_padding_mask(batch, length, seed + 5)
        results = []
        for fn in (compiled, attend):
            leaves = [t.clone().requires_grad_() for t in inputs]
            simple.zero_grad()
            rotary.zero_grad()
            torch.manual_seed(seed)
            outputs = fn(*leaves[:3], mask, *leaves[3:])
            sum(out.square().sum() for out in outputs).backward()
            results.append(list(outputs) + [t.grad for t in leaves]
                           + [p.grad.clone() for p in (*simple.parameters(), *rotary.parameters())])
        worst = max([worst] + [largest(a, b) for a, b in zip(*results)])
    return {"largest": worst, "graphs": counters["stats"]["unique_graphs"]}


def check_block_steps(seed=60):
    """A causal Mega block on the fused path, fed in steps (cached keys of the unfinished chunk; over
    several chunks those calls take the matmul path) and whole, against the float64 block reference."""
    errors = {}
    for chunk_size in (-1, 4):
        cfg = MegaLayerConfig(embed_dim=8, hidden_dim=6, ffn_dim=10, z_dim=4, n_dim=3, max_positions=40,
                              chunk_size=chunk_size, attention_impl="triton")
        block = randomize_parameters_(MovingAverageGatedAttention(cfg, bidirectional=False, causal=True).double(),
                                      seed).eval()
        x = randn(15, 2, 8, seed=seed + 1)
        mask = random_padding_mask(2, 15, seed + 2)
        expected = mega_block_reference(block, x, mask)
        state, steps, start = {}, [], 0
        with torch.no_grad():
            whole = block(x, mask)[0]
            for size in (3, 1, 5, 2, 4):
                steps.append(block(x[start:start + size], mask[:, start:start + size], state)[0])
                start += size
        errors[f"chunk{chunk_size}_whole"] = largest(whole, expected)
        errors[f"chunk{chunk_size}_steps"] = largest(torch.cat(steps), expected)
    return errors


def main():
    results = {name: check(*case) for name, case in CASES.items()}
    results["dropout_softmax"] = check_dropout("softmax")
    results["dropout_laplace"] = check_dropout("laplace", chunk_size=4, length=10, causal=False)
    results["dropout_rate"] = check_dropout_rate()
    results["bias_gradient_drift"] = check_bias_gradient_drift()
    results["attention_weights"] = check_attention_weights()
    results["block_steps"] = check_block_steps()
    with full_tiles():
        results["compiled"] = check_compiled()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
