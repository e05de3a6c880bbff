"""The SDPA path of chunk_attention (impl="sdpa") against float64 references, forward and gradients.

The gradients are checked against ``softmax_reference``, a differentiable loop over rows written
here from the formulas (the shared reference detaches its inputs); its forward is itself checked
against mega_fairseq/ops/attention_ref.py. GPU tests compare sdpa with matmul in bf16 and skip without CUDA.
"""
import math

import pytest
import torch

from mega_fairseq.modules import (Dropout, MegaConfigError, MegaLayerConfig, MovingAverageGatedAttention,
                                  SimpleRelativePositionBias, chunk_attention)
from mega_fairseq.ops import attention
from mega_fairseq.ops.attention import select_attention_impl
from reference import TOL, chunk_attention_reference, mega_block_reference, query_chunk, randn, \
    random_padding_mask, randomize_parameters_, specified_rows

Z, H = 4, 3
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def softmax_reference(q, k, v, table, chunk_size, causal, mask):
    """Differentiable float64 loop: q (B, Lq, Z), k (B, Lk, Z), v (B, Lk, H), table (T, T) bias by
    in-chunk positions, mask (B, Lk) True at pads or None. Returns (B, Lq, H)."""
    batch, query_length, z_dim = q.shape
    key_length = k.size(1)
    chunk = key_length if chunk_size < 0 else chunk_size
    rows = []
    for b in range(batch):
        for r in range(query_length):
            position = key_length - query_length + r
            start, stop, i = query_chunk(position, chunk, key_length)
            seen = [j for j in range(start, stop) if not causal or j <= position]
            allowed = [j for j in seen if mask is None or not mask[b, j]] or seen
            scores = torch.stack([q[b, r] @ k[b, j] / math.sqrt(z_dim) + table[i, j - start] for j in allowed])
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            rows.append(sum(w * v[b, j] for w, j in zip(weights, allowed)))
    return torch.stack(rows).view(batch, query_length, -1)


def table_bias(table):
    return lambda query_length, key_length, offset: table[offset:offset + query_length, :key_length]


def leaves(batch, query_length, key_length, seed, z_dim=Z, h_dim=H, dtype=torch.float64, device=CPU):
    """Fresh random q, k, v and a bias table (64 x 64), all requiring grad."""
    tensors = [randn(batch, query_length, z_dim, seed=seed), randn(batch, key_length, z_dim, seed=seed + 1),
               randn(batch, key_length, h_dim, seed=seed + 2), randn(64, 64, seed=seed + 3, scale=0.5)]
    return [t.to(device, dtype).requires_grad_() for t in tensors]


def run(impl, q, k, v, table, chunk_size, causal, mask=None, **options):
    out, _ = chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn="softmax", position_bias=table_bias(table),
                             causal=causal, key_padding_mask=mask, impl=impl, **options)
    return out


def output_and_grads(fn, inputs, rows, seed):
    """fn(*inputs) -> (B, Lq, H); returns it and the gradients of a random projection of its rows."""
    out = fn(*inputs)
    cotangent = randn(*out.shape, seed=seed).to(out.dtype) * rows.unsqueeze(-1)
    grads = torch.autograd.grad((out * cotangent).sum(), inputs)
    return out.detach(), grads


def check_against_reference(batch, query_length, key_length, chunk_size, causal, mask, seed, **options):
    q, k, v, table = leaves(batch, query_length, key_length, seed)
    rows = specified_rows("softmax", causal, mask, batch, query_length, key_length, chunk_size)
    out, grads = output_and_grads(lambda *t: run("sdpa", *t, chunk_size, causal, mask, **options),
                                  (q, k, v, table), rows, seed)
    expected, expected_grads = output_and_grads(lambda *t: softmax_reference(*t, chunk_size, causal, mask),
                                                (q, k, v, table), rows, seed)
    shared, _ = chunk_attention_reference(q, k, v, chunk_size, "softmax", lambda i, j: float(table[i, j].detach()),
                                          causal, mask)
    assert out.shape == (batch, query_length, H)
    torch.testing.assert_close(expected[rows], shared[rows], rtol=0.0, atol=TOL)
    torch.testing.assert_close(out[rows], expected[rows], rtol=0.0, atol=TOL)
    for name, grad, expected_grad in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0.0, atol=TOL, msg=f"gradient of {name}")
    torch.testing.assert_close(grads[3], expected_grads[3], rtol=0.0, atol=TOL, msg="gradient of the bias")


# ------------------------------------------------------------------ sdpa vs the float64 references


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 7, 13, 33])
@pytest.mark.parametrize("chunk_size", [-1, 1, 3, 4, 50])
def test_sdpa_matches_reference(chunk_size, length, causal, padded):
    seed = 23 * length + chunk_size
    mask = random_padding_mask(3, length, seed) if padded else None
    check_against_reference(3, length, length, chunk_size, causal, mask, seed)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [12, 13])
def test_sdpa_fully_padded_chunks_and_rows(length, causal):
    """Chunks that are all padding (middle, last, short last), left padding and a pad inside a chunk."""
    mask = torch.zeros(4, length, dtype=torch.bool)
    mask[0, 4:8] = True
    mask[1, 8:] = True
    mask[2, :6] = True
    mask[3, 1] = mask[3, 10:] = True
    check_against_reference(4, length, length, 4, causal, mask, 100 + length)
    check_against_reference(4, length, length, -1, causal, mask, 200 + length)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_length, query_length, chunk_size", [
    (13, 1, -1), (13, 5, -1), (3, 1, 4), (4, 2, 4), (7, 5, 4), (9, 6, 4), (9, 9, 4), (12, 10, 3), (6, 4, 3),
    (11, 1, 50), (10, 3, 8),
])
def test_sdpa_fewer_queries_than_keys(key_length, query_length, chunk_size, causal):
    """Incremental decoding: the queries are the last Lq key positions."""
    seed = 41 * key_length + query_length
    check_against_reference(2, query_length, key_length, chunk_size, causal,
                            random_padding_mask(2, key_length, seed), seed)


@pytest.mark.parametrize("batch, length, chunk_size, z_dim, h_dim", [
    (1, 37, 8, 8, 16), (2, 64, 16, 16, 5), (3, 50, -1, 6, 12),
])
def test_sdpa_equals_matmul_on_larger_random_inputs(batch, length, chunk_size, z_dim, h_dim):
    """Fresh sizes, H != Z, both directions: sdpa and the matmul path agree in float64, gradients too."""
    for causal in (False, True):
        seed = batch * length + z_dim
        inputs = leaves(batch, length, length, seed, z_dim, h_dim)
        mask = random_padding_mask(batch, length, seed)
        rows = torch.ones(batch, length, dtype=torch.bool)
        results = [output_and_grads(lambda *t: run(impl, *t, chunk_size, causal, mask), inputs, rows, seed)
                   for impl in ("sdpa", "matmul")]
        (out, grads), (expected, expected_grads) = results
        torch.testing.assert_close(out, expected, rtol=0.0, atol=TOL)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=0.0, atol=TOL)


def test_sdpa_gradient_reaches_position_bias_parameters():
    """Through the real bias module (an indexed parameter) the gradients equal the matmul path's."""
    length, chunk_size = 11, 4
    q, k, v, _ = leaves(2, length, length, 3)
    mask = random_padding_mask(2, length, 3)
    grads = {}
    for impl in ("sdpa", "matmul"):
        bias = SimpleRelativePositionBias(chunk_size).double()
        randomize_parameters_(bias, 5)
        out, _ = chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn="softmax", position_bias=bias,
                                 causal=True, key_padding_mask=mask, impl=impl)
        out.square().sum().backward()
        grads[impl] = bias.weight.grad
    assert grads["sdpa"].abs().sum() > 0
    torch.testing.assert_close(grads["sdpa"], grads["matmul"], rtol=0.0, atol=TOL)


def test_sdpa_float32_keeps_dtype():
    q, k, v, table = (t.detach().float() for t in leaves(2, 13, 13, 6))
    mask = random_padding_mask(2, 13, 6)
    out = run("sdpa", q, k, v, table, 4, True, mask)
    assert out.dtype == torch.float32
    expected = softmax_reference(q.double(), k.double(), v.double(), table.double(), 4, True, mask)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("dropout", [Dropout(0.0), Dropout(0.5).eval()])
def test_sdpa_without_effective_dropout_is_exact(dropout):
    check_against_reference(2, 13, 13, 4, True, random_padding_mask(2, 13, 8), 8, weight_dropout=dropout)


def test_sdpa_dropout_is_unbiased():
    """Training-mode Dropout(p) is passed to SDPA: outputs are random, their mean is the exact output."""
    copies, length = 4000, 6
    torch.manual_seed(0)
    q, k, v, table = (t.detach() for t in leaves(1, length, length, 9))
    q, k, v = (t.expand(copies, -1, -1) for t in (q, k, v))
    dropout = Dropout(0.3).train()
    out = run("sdpa", q, k, v, table, 3, True, weight_dropout=dropout)
    exact = run("sdpa", q[:1], k[:1], v[:1], table, 3, True)
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out.mean(0), exact[0], rtol=0.0, atol=0.1)


# ------------------------------------------------------------------ the Mega block with sdpa


@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_block_with_sdpa_matches_block_reference(causal, chunk_size):
    cfg = MegaLayerConfig(embed_dim=8, hidden_dim=6, ffn_dim=10, z_dim=4, n_dim=3, max_positions=40,
                          chunk_size=chunk_size, attention_impl="sdpa")
    block = MovingAverageGatedAttention(cfg, bidirectional=not causal, causal=causal).double()
    randomize_parameters_(block, 2).eval()
    x = randn(15, 2, 8, seed=2)
    mask = random_padding_mask(2, 15, 2)
    rows = specified_rows("softmax", causal, mask, 2, 15, 15, chunk_size).t()
    expected = mega_block_reference(block, x, mask)
    torch.testing.assert_close(block(x, mask)[0][rows], expected[rows], rtol=0.0, atol=TOL)
    if causal:
        state, steps, start = {}, [], 0
        for size in (3, 1, 5, 2, 4):
            steps.append(block(x[start:start + size], mask[:, start:start + size], state)[0])
            start += size
        torch.testing.assert_close(torch.cat(steps), expected, rtol=0.0, atol=TOL)


# ------------------------------------------------------------------ selection and errors


@pytest.mark.parametrize("device, attention_fn, head_dim, return_weights, dropout, expected", [
    (CUDA, "softmax", 128, False, None, "sdpa"),
    (CUDA, "softmax", 16, False, None, "sdpa"),
    (CPU, "softmax", 128, False, None, "matmul"),
    (CUDA, "softmax", 129, False, None, "matmul"),
    (CUDA, "softmax", 1024, False, None, "matmul"),
    ("cuda:1", "softmax", 64, False, Dropout(0.1), "sdpa"),
    (CUDA, "softmax", 64, False, Dropout(0.1).eval(), "sdpa"),
    (CUDA, "softmax", 64, False, Dropout(0.1, feature=True), "matmul"),
    (CUDA, "softmax", 64, False, lambda w: w, "matmul"),
    (CUDA, "laplace", 64, False, None, "matmul"),
    (CUDA, "relu2", 64, False, None, "matmul"),
    (CUDA, "softmax", 64, True, None, "matmul"),
])
def test_auto_selection(monkeypatch, device, attention_fn, head_dim, return_weights, dropout, expected):
    """head_dim = max(Z, H): the fused kernel is slower than matmul beyond 128 (see attention.py). Without
    triton (with it, "triton" replaces matmul on CUDA: test_attention_fused.py)."""
    monkeypatch.setattr(attention, "triton_available", lambda: False)
    options = {} if dropout is None else dict(weight_dropout=dropout)
    assert select_attention_impl("auto", attention_fn, device, head_dim, return_weights, **options) == expected
    assert select_attention_impl("matmul", attention_fn, device, head_dim, return_weights, **options) == "matmul"


def test_auto_uses_matmul_on_cpu(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("SDPA called")
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", forbidden)
    q, k, v, table = leaves(2, 9, 9, 1)
    run("auto", q, k, v, table, 4, True)
    with pytest.raises(AssertionError, match="SDPA called"):
        run("sdpa", q, k, v, table, 4, True)


@pytest.mark.parametrize("impl, options, message", [
    ("fast", {}, "unknown value 'fast' for --attention-impl; choose one of auto, matmul, sdpa, triton"),
    ("SDPA", {}, "--attention-impl"),
    ("sdpa", dict(attention_fn="laplace"), "--attention-impl sdpa needs softmax attention .*laplace"),
    ("sdpa", dict(return_weights=True), "--attention-impl sdpa needs that the attention weights are not returned"),
    ("sdpa", dict(weight_dropout=Dropout(0.1, feature=True)), "--attention-impl sdpa needs no dropout or a plain"),
    ("auto", dict(attention_fn="sigmoid"), "--attention-activation-fn"),
])
def test_bad_impl_raises(impl, options, message):
    q, k, v, table = leaves(1, 5, 5, 0)
    arguments = dict(chunk_size=4, attention_fn="softmax", position_bias=table_bias(table), causal=True)
    arguments.update(options)
    with pytest.raises(MegaConfigError, match=message):
        chunk_attention(q, k, v, impl=impl, **arguments)


@pytest.mark.parametrize("options, message", [
    (dict(attention_impl="flash"), "--attention-impl"),
    (dict(attention_impl="sdpa", attention_fn="relu2"), "--attention-impl sdpa needs softmax attention"),
])
def test_block_checks_attention_impl_when_built(options, message):
    with pytest.raises(MegaConfigError, match=message):
        cfg = MegaLayerConfig(embed_dim=8, hidden_dim=6, z_dim=4, n_dim=2, **options)
        MovingAverageGatedAttention(cfg, bidirectional=True, causal=False)


# ------------------------------------------------------------------ GPU: bf16 sdpa vs matmul


def relative_error(actual, expected):
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGpu:
    @pytest.mark.parametrize("causal", [False, True])
    def test_bf16_sdpa_matches_matmul(self, causal):
        """B 2, L 1000, Z 128, H 1024, chunk 128 (the last chunk short), padding: both bf16 paths
        are within bf16 rounding of a float32 matmul run on the same inputs."""
        batch, length, chunk_size = 2, 1000, 128
        q, k, v, _ = leaves(batch, length, length, 0, z_dim=128, h_dim=1024, dtype=torch.bfloat16, device=CUDA)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=CUDA)
        mask[1, 700:] = True
        results = {}
        for impl, dtype in (("sdpa", torch.bfloat16), ("matmul", torch.bfloat16), ("reference", torch.float32)):
            bias = SimpleRelativePositionBias(chunk_size).to(CUDA)
            randomize_parameters_(bias, 1)
            inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
            out, _ = chunk_attention(*inputs, chunk_size=chunk_size, attention_fn="softmax", position_bias=bias,
                                     causal=causal, key_padding_mask=mask,
                                     impl="matmul" if impl == "reference" else impl)
            out.float().square().sum().backward()
            assert out.dtype == dtype
            results[impl] = [out] + [t.grad for t in inputs] + [bias.weight.grad]
        for name, sdpa, matmul, reference in zip(("out", "q", "k", "v", "bias"), *results.values()):
            matmul_error = relative_error(matmul, reference)
            assert relative_error(sdpa, reference) < max(2 * matmul_error, 1e-2), name

    def test_efficient_backend_takes_the_mask_gradient_and_wide_values(self):
        """The fused memory-efficient kernel alone runs the sdpa path (H != Z, odd lengths, padding)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for length, chunk_size in ((1000, 128), (37, -1), (45, 16)):
            q, k, v, _ = leaves(2, length, length, length, z_dim=128, h_dim=1024, dtype=torch.bfloat16, device=CUDA)
            table = torch.randn(1000, 1000, device=CUDA, requires_grad=True)
            mask = torch.zeros(2, length, dtype=torch.bool, device=CUDA)
            mask[1, length // 2:] = True
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                out = run("sdpa", q, k, v, table, chunk_size, True, mask)
                out.float().sum().backward()
            expected = run("matmul", *(t.detach().float() for t in (q, k, v, table)), chunk_size, True, mask)
            assert relative_error(out, expected) < 1e-2
            assert table.grad is not None and torch.isfinite(table.grad).all()

    def test_block_under_autocast(self):
        cfg = MegaLayerConfig(embed_dim=64, hidden_dim=256, z_dim=32, n_dim=4, chunk_size=16, attention_impl="sdpa")
        block = MovingAverageGatedAttention(cfg, bidirectional=False, causal=True).to(CUDA)
        x = torch.randn(50, 2, 64, device=CUDA, generator=torch.Generator(CUDA).manual_seed(0))
        outputs = {}
        for impl in ("sdpa", "matmul"):
            block.attention_impl = impl
            block.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out, _ = block(x)
            out.float().square().sum().backward()
            outputs[impl] = (out, block.rel_pos_bias.weight.grad.clone())
        assert relative_error(outputs["sdpa"][0], outputs["matmul"][0]) < 2e-2
        assert relative_error(outputs["sdpa"][1], outputs["matmul"][1]) < 5e-2
