"""Single-head attention within fixed-length chunks (Mega-chunk), docs/math.md section 2.

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

Three implementations of the chunk core (``impl``): "matmul" forms the weights
with PyTorch ops (the reference, any attention function); "triton" (ops/triton/fused_attention.py)
runs the same computation as one custom operator: a batched matmul for the scores of every chunk,
one Triton kernel for the scale, the position bias (read from the simple bias's weight vector, or the
rotary bias as a vector over distances: no (C, C) bias matrix), the masks, the attention function and
the dropout, and a second batched matmul; its backward is one kernel (dS and the bias gradient)
between four matmuls. "sdpa" hands softmax attention to
``torch.nn.functional.scaled_dot_product_attention`` with the bias and masks as one additive float
mask. With a float mask that needs a gradient and values wider than the queries (H != Z), only
PyTorch's memory-efficient and math backends apply: the flash backend takes no mask and needs equal
head dims <= 256, the cuDNN backend needs head dims <= 256 and a mask without gradient. The
memory-efficient kernel is fast only for widths up to 128: on an H100 (torch 2.11, bf16,
forward+backward) it takes 0.2-0.55x the matmul time with Z, H <= 128, but 1.2-4.5x with H = 1024
(its backward is slow for wide values).

"auto" on a GPU: sdpa for softmax with narrow heads (Z, H <= 128), where it never writes the (C, C)
scores or weights in the forward pass and so moves about a third of the fused path's memory for
them; "triton" for everything else it can run (wide heads, laplace / relu2); matmul on a CPU.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import check_choice, ATTENTION_FUNCTIONS, ATTENTION_IMPLS, MegaConfigError
from .triton import fused_attention, triton_available

SDPA_MAX_HEAD_DIM = 128  # widest Z and H for which "auto" picks sdpa
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


def softmax_allowed(key_valid: Optional[Tensor], causal_mask: Optional[Tensor]) -> Optional[Tensor]:
    """Keys a softmax row may attend to: (..., Cq, Ck) bool, or None when all.

    key_valid: (..., 1, Ck) bool, False at padded keys (or None);
    causal_mask: (Cq, Ck) bool, True where the key may be seen (or None).
    A row whose allowed keys are all padding ignores the padding mask.
    """
    allowed = key_valid
    if causal_mask is not None:
        allowed = causal_mask if allowed is None else allowed & causal_mask
    if key_valid is not None:
        no_key = ~allowed.any(dim=-1, keepdim=True)
        fallback = causal_mask if causal_mask is not None else torch.ones_like(no_key)
        allowed = torch.where(no_key, fallback, allowed)
    return allowed


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
    On CUDA with triton and no causal mask, one fused kernel computes them (forward and backward);
    ``unfused_attention_weights`` is the PyTorch path.
    """
    check_choice(attention_fn, ATTENTION_FUNCTIONS, "--attention-activation-fn")
    if causal_mask is None and scores.is_cuda and triton_available() and bias.dim() == 2:
        return fused_attention.fused_attention_weights(scores, attention_fn, key_valid, bias, z_dim)
    return unfused_attention_weights(scores, attention_fn, key_valid, causal_mask, bias, z_dim)


def unfused_attention_weights(
    scores: Tensor,
    attention_fn: str,
    key_valid: Optional[Tensor],
    causal_mask: Optional[Tensor],
    bias: Tensor,
    z_dim: int,
) -> Tensor:
    """attention_weights by PyTorch ops (the reference and CPU path); arguments as there."""
    if attention_fn == "softmax":
        scores = scores * (z_dim ** -0.5) + bias
        allowed = softmax_allowed(key_valid, causal_mask)
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


def sdpa_dropout(weight_dropout: Callable[[Tensor], Tensor]) -> Optional[float]:
    """The dropout probability SDPA or the fused kernel must apply for ``weight_dropout``, or None if
    they cannot reproduce it (only the identity and a plain, non-feature ``Dropout`` can)."""
    if weight_dropout is _identity:
        return 0.0
    if getattr(weight_dropout, "feature", True) is False:  # modules.Dropout without feature dropout
        return weight_dropout.p if weight_dropout.training else 0.0
    return None


def sdpa_chunks(q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor], bias: Tensor, dropout_p: float) -> Tensor:
    """Softmax attention of every chunk by SDPA: q (B, nC, Cq, Z), k (B, nC, Ck, Z), v (B, nC, Ck, H),
    allowed (B, nC, Cq, Ck) or (Cq, Ck) bool or None, bias (Cq, Ck). Returns (B * nC, 1, Cq, H).

    The chunks go in as the batch with one head: the fused kernels' (batch, length, heads, dim)
    layout is then the tensors' own, so nothing is copied or transposed. Without padding the
    additive mask stays (Cq, Ck), broadcast over the chunks."""
    mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    if mask.dim() == 4:
        mask = mask.flatten(0, 1).unsqueeze(1)
    q, k, v = (t.flatten(0, 1).unsqueeze(1) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=q.size(-1) ** -0.5)


def select_attention_impl(
    impl: str,
    attention_fn: str,
    device: torch.device,
    head_dim: int,
    return_weights: bool = False,
    weight_dropout: Callable[[Tensor], Tensor] = _identity,
) -> str:
    """Resolve ``impl`` ("auto", "matmul", "sdpa", "triton") to the implementation for tensors on ``device``.

    "auto" on CUDA, when the weights are not returned and the dropout is one the fused paths apply
    themselves: sdpa for softmax with head_dim = max(Z, H) <= SDPA_MAX_HEAD_DIM, else triton (if
    installed); matmul otherwise. "sdpa" and "triton" raise where they do not apply ("triton" checks
    the device only when it runs: layers are built on the CPU).
    """
    check_choice(impl, ATTENTION_IMPLS, "--attention-impl")
    check_choice(attention_fn, ATTENTION_FUNCTIONS, "--attention-activation-fn")
    if impl == "matmul":
        return impl
    problems = []
    if return_weights:
        problems.append("that the attention weights are not returned")
    if sdpa_dropout(weight_dropout) is None:
        problems.append("no dropout or a plain Dropout (not feature dropout) on the attention weights")
    sdpa_problems = ([f"softmax attention (got --attention-activation-fn {attention_fn})"]
                     if attention_fn != "softmax" else []) + problems
    if impl == "sdpa":
        if sdpa_problems:
            raise MegaConfigError("--attention-impl sdpa needs " + " and ".join(sdpa_problems))
        return impl
    if impl == "triton":
        if not triton_available():
            problems.append("triton (not installed)")
        if problems:
            raise MegaConfigError("--attention-impl triton needs " + " and ".join(problems))
        return impl
    if torch.device(device).type != "cuda" or problems:
        return "matmul"
    if not sdpa_problems and head_dim <= SDPA_MAX_HEAD_DIM:
        return "sdpa"
    return "triton" if triton_available() else "matmul"


def triton_chunk_attention(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, attention_fn: str,
                           position_bias: Callable[[int, int, int], Tensor], causal: bool,
                           key_padding_mask: Optional[Tensor], dropout: float) -> Optional[Tensor]:
    """The "triton" path of chunk_attention: (B, Lq, H), or None for cached keys of a chunked
    decoder (queries fewer than keys over several chunks), which take the matmul path.

    A bias module with ``relative_vector`` gives its values per distance, read by the kernel;
    any other ``position_bias`` callable gives a (Cq, Ck) matrix."""
    fused_attention.check_usable(q.device, "--attention-impl triton")
    query_length, key_length = q.size(1), k.size(1)
    if query_length > key_length:
        raise ValueError(f"attention got {query_length} queries for only {key_length} keys")
    if chunk_size > 0 and query_length != key_length and key_length > chunk_size:
        return None
    if hasattr(position_bias, "relative_vector"):
        bias = position_bias.relative_vector(key_length if chunk_size < 0 else torch.sym_min(chunk_size, key_length))
    else:
        _, chunk, rows, offset, _ = fused_attention.chunk_geometry(query_length, key_length, chunk_size)
        bias = position_bias(rows, chunk, offset)
    return fused_attention.fused_chunk_attention(q, k, v, bias, key_padding_mask, chunk_size, attention_fn,
                                                 causal, dropout)


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
    impl: str = "auto",
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked single-head attention.

    q: (B, Lq, Z); k: (B, Lk, Z); v: (B, Lk, H), Lq <= Lk; the queries are key
    positions Lk - Lq .. Lk - 1. key_padding_mask: (B, Lk) bool, True at pads.
    position_bias(query_length, key_length, query_offset) -> (Lq', Lk') bias.
    impl: "auto", "matmul", "sdpa" or "triton" (see select_attention_impl).
    Returns the output (B, Lq, H) and, if asked, the weights (B, nC, Cq, Ck).
    """
    impl = select_attention_impl(impl, attention_fn, q.device, max(q.size(-1), v.size(-1)), return_weights,
                                 weight_dropout)
    if impl == "triton":
        out = triton_chunk_attention(q, k, v, chunk_size, attention_fn, position_bias, causal, key_padding_mask,
                                     sdpa_dropout(weight_dropout))
        if out is not None:
            return out, None
        impl = "matmul"
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
    # a single query at the chunk's last position (a decoding step) sees every key: no mask needed, except
    # for laplace/relu2 with padded keys, where the causal mask also sets the normalizer
    sees_all_keys = query_offset == chunk - 1 and (attention_fn == "softmax" or key_valid is None)
    if causal and not sees_all_keys:
        query_pos = torch.arange(query_offset, query_offset + rows, device=q.device)
        causal_mask = torch.arange(chunk, device=q.device).unsqueeze(0) <= query_pos.unsqueeze(1)
    bias = position_bias(rows, chunk, query_offset).to(q.dtype)
    weights = None
    if impl == "sdpa":
        out = sdpa_chunks(q, k, v, softmax_allowed(key_valid, causal_mask), bias, sdpa_dropout(weight_dropout))
    else:
        weights = unfused_attention_weights(q @ k.transpose(-1, -2), attention_fn, key_valid, causal_mask, bias,
                                            z_dim)
        out = weight_dropout(weights) @ v
    out = out.reshape(batch, num_chunks * rows, -1)[:, front: front + query_length]
    return out, (weights if return_weights else None)
