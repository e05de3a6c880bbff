"""chunk_attention against the per-chunk, per-row loop reference of mega_fairseq/ops/attention_ref.py."""
import math

import pytest
import torch

from mega_fairseq.modules import chunk_attention
from reference import TOL, chunk_attention_reference, randn, random_padding_mask, specified_rows

FUNCTIONS = ["softmax", "laplace", "relu2"]
Z, H = 4, 3


def bias_table(size: int = 40, seed: int = 0) -> torch.Tensor:
    """An arbitrary (not Toeplitz) bias matrix: the module must read bias[i, j] for query
    position i and key position j inside the chunk."""
    return randn(size, size, seed=seed, scale=0.5)


def table_bias(table):
    """position_bias(query_length, key_length, offset) callable backed by a fixed table."""
    return lambda query_length, key_length, offset: table[offset:offset + query_length, :key_length]


def inputs(batch, query_length, key_length, seed):
    """Random q (B, Lq, Z), k (B, Lk, Z), v (B, Lk, H)."""
    return (randn(batch, query_length, Z, seed=seed), randn(batch, key_length, Z, seed=seed + 1),
            randn(batch, key_length, H, seed=seed + 2))


def run_module(q, k, v, chunk_size, attention_fn, table, causal, mask=None):
    return chunk_attention(q, k, v, chunk_size=chunk_size, attention_fn=attention_fn,
                           position_bias=table_bias(table), causal=causal, key_padding_mask=mask,
                           return_weights=True)


def run_reference(q, k, v, chunk_size, attention_fn, table, causal, mask=None):
    return chunk_attention_reference(q, k, v, chunk_size, attention_fn, lambda i, j: table[i, j], causal, mask)


def dense_weights(weights, query_length, key_length):
    """Module weights (B, nC, Cq, Ck) -> (B, Lq, Lk), query r at key position Lk - Lq + r."""
    batch, num_chunks, rows, chunk = weights.shape
    dense = torch.zeros(batch, query_length, key_length, dtype=weights.dtype)
    for r in range(query_length):
        position = key_length - query_length + r
        if num_chunks == 1:
            dense[:, r] = weights[:, 0, r, :key_length]
        else:
            c, row = divmod(position, chunk)
            stop = min((c + 1) * chunk, key_length)
            dense[:, r, c * chunk:stop] = weights[:, c, row, :stop - c * chunk]
    return dense


def assert_close(actual, expected, tol):
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol)


def assert_rows_close(out, weights, expected, expected_weights, attention_fn, causal, mask, chunk_size):
    """Compare outputs (B, Lq, H) and dense weights (B, Lq, Lk) on the specified rows."""
    query_length, key_length = expected_weights.shape[1:]
    rows = specified_rows(attention_fn, causal, mask, expected.size(0), query_length, key_length, chunk_size)
    tol = TOL
    assert_close(out[rows], expected[rows], tol)
    assert_close(dense_weights(weights, query_length, key_length)[rows], expected_weights[rows], tol)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 7, 13, 33])
@pytest.mark.parametrize("chunk_size", [-1, 1, 3, 4, 50])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_chunk_attention_matches_reference(attention_fn, chunk_size, length, causal, padded):
    seed = 17 * length + chunk_size
    q, k, v = inputs(2, length, length, seed)
    mask = random_padding_mask(2, length, seed) if padded else None
    table = bias_table(seed=seed)
    out, weights = run_module(q, k, v, chunk_size, attention_fn, table, causal, mask)
    expected, expected_weights = run_reference(q, k, v, chunk_size, attention_fn, table, causal, mask)
    assert out.shape == (2, length, H)
    assert_rows_close(out, weights, expected, expected_weights, attention_fn, causal, mask, chunk_size)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
@pytest.mark.parametrize("key_length, query_length, chunk_size", [
    (13, 1, -1), (13, 5, -1), (3, 1, 4), (4, 2, 4), (7, 5, 4), (9, 6, 4), (9, 9, 4), (12, 10, 3), (6, 4, 3),
    (11, 1, 50),
])
def test_fewer_queries_than_keys(key_length, query_length, chunk_size, attention_fn, causal):
    """Incremental form: the queries are the last Lq key positions (with chunks, the keys start
    at a chunk border and fewer than one chunk of them precede the first query)."""
    seed = 31 * key_length + query_length
    q, k, v = inputs(2, query_length, key_length, seed)
    mask = random_padding_mask(2, key_length, seed)
    table = bias_table(seed=seed)
    out, weights = run_module(q, k, v, chunk_size, attention_fn, table, causal, mask)
    expected, expected_weights = run_reference(q, k, v, chunk_size, attention_fn, table, causal, mask)
    assert out.shape == (2, query_length, H)
    assert_rows_close(out, weights, expected, expected_weights, attention_fn, causal, mask, chunk_size)


def test_too_many_cached_keys_raise():
    q, k, v = inputs(1, 2, 9, 0)
    with pytest.raises(ValueError, match="chunk"):
        run_module(q, k, v, 4, "softmax", bias_table(), True)
    with pytest.raises(ValueError, match="5 queries for only 3 keys"):
        run_module(*inputs(1, 5, 3, 0), -1, "softmax", bias_table(), True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_weights_of_padded_keys_are_exactly_zero(attention_fn, causal):
    length, chunk_size = 13, 4
    q, k, v = inputs(3, length, length, 5)
    mask = torch.zeros(3, length, dtype=torch.bool)
    mask[0, 2] = mask[0, 9:] = True  # a pad inside a chunk and a padded tail
    mask[1, 5:] = True
    mask[2, ::3] = True
    _, weights = run_module(q, k, v, chunk_size, attention_fn, bias_table(), causal, mask)
    dense = dense_weights(weights, length, length)
    for b in range(3):
        for i in range(length):
            if mask[b, i]:  # a padded query may fall back to an unmasked row; its output is discarded
                continue
            assert torch.all(dense[b, i][mask[b]] == 0.0)
    # padded keys contribute nothing: changing their values leaves real outputs unchanged
    v2 = torch.where(mask.unsqueeze(-1), randn(3, length, H, seed=9) * 100, v)
    out, _ = run_module(q, k, v, chunk_size, attention_fn, bias_table(), causal, mask)
    out2, _ = run_module(q, k, v2, chunk_size, attention_fn, bias_table(), causal, mask)
    assert torch.equal(out[~mask], out2[~mask])


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_all_padding_chunk_row_is_left_unmasked(causal):
    """Rows of a chunk whose keys are all padding: no padding mask (causal mask kept), no NaN."""
    length, chunk_size = 12, 4
    q, k, v = inputs(2, length, length, 7)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, 4:8] = True  # middle chunk of row 0 entirely padding
    mask[1, 8:] = True  # last chunk of row 1 entirely padding
    table = bias_table(seed=7)
    out, weights = run_module(q, k, v, chunk_size, "softmax", table, causal, mask)
    assert not torch.isnan(out).any() and not torch.isnan(weights).any()
    unmasked, _ = run_module(q, k, v, chunk_size, "softmax", table, causal, None)
    for b, chunk in ((0, 1), (1, 2)):
        rows = slice(chunk * chunk_size, (chunk + 1) * chunk_size)
        torch.testing.assert_close(out[b, rows], unmasked[b, rows], rtol=0.0, atol=1e-12)
        torch.testing.assert_close(weights[b, chunk].sum(-1), torch.ones(chunk_size, dtype=torch.float64))
    expected, _ = run_reference(q, k, v, chunk_size, "softmax", table, causal, mask)
    assert_close(out, expected, TOL)


def test_softmax_left_padding_causal_row_keeps_causal_mask():
    """A padding query before every real key (left padding): the row ignores the padding mask
    but keeps the causal one, so query 0 attends to key 0 only."""
    length = 6
    q, k, v = inputs(1, length, length, 8)
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[0, :2] = True
    out, weights = run_module(q, k, v, -1, "softmax", bias_table(), True, mask)
    assert not torch.isnan(out).any()
    assert weights[0, 0, 0, 0] == 1.0 and torch.all(weights[0, 0, 0, 1:] == 0.0)
    torch.testing.assert_close(out[0, 0], v[0, 0], rtol=0.0, atol=1e-12)
    # row 1 (also padding) has no allowed key either: causal softmax over keys 0, 1
    assert torch.all(weights[0, 0, 1, :2] > 0) and torch.all(weights[0, 0, 1, 2:] == 0)


@pytest.mark.parametrize("attention_fn", FUNCTIONS)
@pytest.mark.parametrize("causal", [False, True])
def test_all_padding_sequence_gives_no_nan(attention_fn, causal):
    q, k, v = inputs(2, 7, 7, 4)
    mask = torch.ones(2, 7, dtype=torch.bool)
    for chunk_size in (-1, 3):
        out, weights = run_module(q, k, v, chunk_size, attention_fn, bias_table(), causal, mask)
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()


@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_relu2_laplace_normalizer(chunk_size, causal):
    """n = number of non-pad keys of the chunk (non-causal) or i + 1 (causal, pads included),
    read back from relu2 weights w = (q.k / n)^2 with zero bias and q.k > 0."""
    length = 10
    q = torch.ones(2, length, Z, dtype=torch.float64)
    k = torch.rand(2, length, Z, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    v = randn(2, length, H, seed=1)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, 1] = mask[0, 6] = True
    mask[1, 7:] = True
    zeros = torch.zeros(40, 40, dtype=torch.float64)
    _, weights = run_module(q, k, v, chunk_size, "relu2", zeros, causal, mask)
    dense = dense_weights(weights, length, length)
    chunk = length if chunk_size < 0 else chunk_size
    for b in range(2):
        for i in range(length):
            start = (i // chunk) * chunk
            stop = min(start + chunk, length)
            expected_n = (i - start + 1) if causal else int((~mask[b, start:stop]).sum())
            for j in range(start, stop):
                if mask[b, j] or (causal and j > i):
                    assert dense[b, i, j] == 0.0
                    continue
                dot = float(q[b, i] @ k[b, j])
                n = dot / math.sqrt(float(dense[b, i, j]))
                assert n == pytest.approx(expected_n, rel=1e-12)


@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_attention_never_crosses_chunk_borders(attention_fn):
    length, chunk_size = 12, 4
    q, k, v = inputs(1, length, length, 11)
    out, _ = run_module(q, k, v, chunk_size, attention_fn, bias_table(), False)
    k2, v2 = k.clone(), v.clone()
    k2[:, 4:8] += 5.0
    v2[:, 4:8] -= 3.0
    out2, _ = run_module(q, k2, v2, chunk_size, attention_fn, bias_table(), False)
    assert torch.equal(out[:, :4], out2[:, :4]) and torch.equal(out[:, 8:], out2[:, 8:])
    assert not torch.allclose(out[:, 4:8], out2[:, 4:8])


@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_float32_inputs(attention_fn):
    length, chunk_size = 13, 4
    q, k, v = inputs(2, length, length, 12)
    mask = random_padding_mask(2, length, 12)
    table = bias_table(seed=12)
    expected, _ = run_reference(q, k, v, chunk_size, attention_fn, table, True, mask)
    out, _ = run_module(q.float(), k.float(), v.float(), chunk_size, attention_fn, table.float(), True, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
