"""Single-head attention within fixed-length chunks (Mega-chunk), spec section 2.

``chunk_attention`` computes, for every chunk of C positions (the whole
sequence when ``chunk_size`` < 0), ``A @ V`` with A from one of three attention
functions:

* softmax: ``S = (Q / sqrt(Z)) K^T + bias``; causal positions and padded keys
  get -inf; a row whose allowed keys are all padding ignores the padding mask;
* laplace / relu2: ``S = Q K^T / n + bias`` with n the number of non-pad keys of
  the chunk, or with a causal mask the number of causally allowed keys of the
  row; ``A = f(S)`` multiplied by the 0/1 key and causal masks.

Queries may be fewer than keys: they are then the *last* positions of the key
sequence (incremental decoding passes the keys of the unfinished chunk first).
The key sequence starts at a chunk border; it is padded to a chunk multiple
here and the padding is dropped from the output.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import check_choice, ATTENTION_FUNCTIONS

LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(0.25 / math.pi)


def laplace(x: Tensor) -> Tensor:
    """Laplace attention function: the Gaussian CDF with mean sqrt(1/2) and std sqrt(1/(4 pi))."""
    return 0.5 * (1.0 + torch.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU attention function."""
    return F.relu(x).square()


def _identity(x: Tensor) -> Tensor:
    return x


def attention_weights(
    scores: Tensor,
    attention_fn: str,
    key_valid: Optional[Tensor],
    causal_mask: Optional[Tensor],
    bias: Tensor,
    z_dim: int,
) -> Tensor:
    """Raw scores ``Q K^T`` (..., Cq, Ck) -> attention weights of the same shape.

    key_valid: (..., 1, Ck) bool, False at padded keys (or None);
    causal_mask: (Cq, Ck) bool, True where the key may be seen (or None);
    bias: (Cq, Ck) relative position bias.
    """
    check_choice(attention_fn, ATTENTION_FUNCTIONS, "--attention-activation-fn")
    if attention_fn == "softmax":
        scores = scores * (z_dim ** -0.5) + bias
        allowed = key_valid
        if causal_mask is not None:
            allowed = causal_mask if allowed is None else allowed & causal_mask
        if key_valid is not None:
            no_key = ~allowed.any(dim=-1, keepdim=True)
            fallback = causal_mask if causal_mask is not None else torch.ones_like(no_key)
            allowed = torch.where(no_key, fallback, allowed)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(scores.dtype)

    if causal_mask is not None:
        lengths = causal_mask.sum(dim=-1, keepdim=True).clamp(min=1).to(scores.dtype)
    elif key_valid is not None:
        lengths = key_valid.sum(dim=-1, keepdim=True).clamp(min=1).to(scores.dtype)
    else:
        lengths = scores.size(-1)
    weights = laplace(scores / lengths + bias) if attention_fn == "laplace" else relu2(scores / lengths + bias)
    if key_valid is not None:
        weights = weights * key_valid
    if causal_mask is not None:
        weights = weights * causal_mask
    return weights


def chunk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    chunk_size: int,
    attention_fn: str,
    position_bias: Callable[[int, int, int], Tensor],
    causal: bool,
    key_padding_mask: Optional[Tensor] = None,
    weight_dropout: Callable[[Tensor], Tensor] = _identity,
    return_weights: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked single-head attention.

    q: (B, Lq, Z); k: (B, Lk, Z); v: (B, Lk, H), Lq <= Lk; the queries are key
    positions Lk - Lq .. Lk - 1. key_padding_mask: (B, Lk) bool, True at pads.
    position_bias(query_length, key_length, query_offset) -> (Lq', Lk') bias.
    Returns the output (B, Lq, H) and, if asked, the weights (B, nC, Cq, Ck).
    """
    batch, key_length, z_dim = k.shape
    query_length = q.size(1)
    lead = key_length - query_length
    if lead < 0:
        raise ValueError(f"attention got {query_length} queries for only {key_length} keys")
    chunk = key_length if chunk_size < 0 else min(chunk_size, key_length)
    num_chunks = math.ceil(key_length / chunk)
    tail = num_chunks * chunk - key_length
    if num_chunks == 1:
        query_offset, front = lead, 0
    else:
        if lead >= chunk:
            raise ValueError(f"{lead} cached keys do not fit in one chunk of {chunk}: the state must hold "
                             "only the unfinished chunk")
        query_offset, front = 0, lead

    if tail or front:
        q = F.pad(q, (0, 0, front, tail))
        k = F.pad(k, (0, 0, 0, tail))
        v = F.pad(v, (0, 0, 0, tail))
    key_valid = None
    if key_padding_mask is not None or tail:
        if key_padding_mask is None:
            key_padding_mask = k.new_zeros(batch, key_length, dtype=torch.bool)
        key_valid = ~F.pad(key_padding_mask, (0, tail), value=True)
        key_valid = key_valid.view(batch, num_chunks, 1, chunk)

    rows = q.size(1) // num_chunks
    q = q.view(batch, num_chunks, rows, z_dim)
    k = k.view(batch, num_chunks, chunk, z_dim)
    v = v.view(batch, num_chunks, chunk, v.size(-1))

    causal_mask = None
    if causal:
        query_pos = torch.arange(query_offset, query_offset + rows, device=q.device)
        causal_mask = torch.arange(chunk, device=q.device).unsqueeze(0) <= query_pos.unsqueeze(1)
    bias = position_bias(rows, chunk, query_offset).to(q.dtype)
    weights = attention_weights(q @ k.transpose(-1, -2), attention_fn, key_valid, causal_mask, bias, z_dim)
    out = (weight_dropout(weights) @ v).view(batch, num_chunks * rows, -1)
    out = out[:, front: front + query_length]
    return out, (weights if return_weights else None)
