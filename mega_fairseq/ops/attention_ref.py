"""Chunked single-head attention row by row, in float64 (docs/math.md, section 2).

Where the paper is silent the references follow the choices of docs/math.md, section 5:
softmax rows with no allowed key drop the padding mask (keep the causal one); the laplace / relu2
normalizer is i + 1 with a causal mask, else the non-pad keys of the chunk.
Shapes: B batch, L length, Z query/key width, H value width.
"""
import math
from typing import Callable

import torch

from .ref_utils import DTYPE, f64


LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(1.0 / (4.0 * math.pi))


def attention_function_reference(name: str, scores: torch.Tensor) -> torch.Tensor:
    if name == "laplace":
        return 0.5 * (1.0 + torch.erf((scores - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))
    if name == "relu2":
        return scores.clamp(min=0.0) ** 2
    raise ValueError(name)


def attention_row_reference(query, keys, bias_row, attention_fn: str, valid, causal_ok, z_dim: int,
                            normalizer: float) -> torch.Tensor:
    """Weights of one query over its keys.

    query (Z,), keys (M, Z), bias_row (M,), valid / causal_ok (M,) bool;
    normalizer: n of laplace / relu2. Returns (M,) weights.
    """
    dots = keys @ query
    if attention_fn == "softmax":
        scores = dots / math.sqrt(z_dim) + bias_row
        allowed = valid & causal_ok
        if not allowed.any():  # a row with no allowed key ignores the padding mask (docs/math.md, 5)
            allowed = causal_ok.clone()
        weights = torch.zeros_like(scores)
        top = scores[allowed].max()
        exp = torch.exp(scores[allowed] - top)
        weights[allowed] = exp / exp.sum()
        return weights
    weights = attention_function_reference(attention_fn, dots / normalizer + bias_row)
    return weights * valid * causal_ok


def query_chunk(position: int, chunk: int, key_length: int):
    """The chunk [start, stop) of key positions that the query at key position ``position`` attends
    within, and its index i inside the chunk."""
    start = (position // chunk) * chunk
    return start, min(start + chunk, key_length), position - start


def chunk_attention_reference(q, k, v, chunk_size: int, attention_fn: str,
                              bias_matrix_fn: Callable[[int, int], float], causal: bool, key_padding_mask=None):
    """Chunked single-head attention by hand.

    q (B, Lq, Z), k (B, Lk, Z), v (B, Lk, H); query r sits at key position Lk - Lq + r.
    Chunks are [c C, (c + 1) C) of the key positions (one chunk when chunk_size < 0);
    bias_matrix_fn(i, j): bias between positions i (query) and j (key) inside the chunk.
    key_padding_mask (B, Lk) True at pads.
    Returns the output (B, Lq, H) and the dense weights (B, Lq, Lk) (0 outside the chunk).
    """
    q, k, v = f64(q), f64(k), f64(v)
    batch, query_length, z_dim = q.shape
    key_length = k.size(1)
    chunk = key_length if chunk_size < 0 else chunk_size
    out = torch.zeros(batch, query_length, v.size(-1), dtype=DTYPE)
    dense = torch.zeros(batch, query_length, key_length, dtype=DTYPE)
    for b in range(batch):
        for r in range(query_length):
            start, stop, i = query_chunk(key_length - query_length + r, chunk, key_length)
            keys = range(start, stop)
            bias_row = torch.tensor([bias_matrix_fn(i, j - start) for j in keys], dtype=DTYPE)
            valid = torch.tensor([key_padding_mask is None or not bool(key_padding_mask[b, j]) for j in keys])
            causal_ok = torch.tensor([(not causal) or j - start <= i for j in keys])
            normalizer = (i + 1) if causal else max(int(valid.sum()), 1)
            weights = attention_row_reference(q[b, r], k[b, start:stop], bias_row, attention_fn, valid, causal_ok,
                                              z_dim, normalizer)
            dense[b, r, start:stop] = weights
            out[b, r] = weights @ v[b, start:stop]
    return out, dense
