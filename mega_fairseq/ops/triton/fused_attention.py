"""Chunked attention and attention weights on the fused ``chunk_softmax`` kernels, as custom operators.

``mega::chunk_attention`` is the whole core of chunked single-head attention: one batched matmul for
the scores of every chunk, one kernel for the weights (scale, position bias, masks, attention
function, dropout), one batched matmul with the values. Its backward ``mega::chunk_attention_backward``
is two matmuls, one kernel (dS and the bias gradient) and two more matmuls. Each is one custom
operator with a shape-only fake implementation, so ``torch.compile`` traces it whole, without graph
breaks and without guards on the lengths (the chunk layout is worked out inside, at run time).
``mega::attention_weights`` (and its backward) runs the same kernels on given scores with a bias matrix.
In eager mode the same implementations run through a ``torch.autograd.Function``: a custom operator's
dispatch costs about 65 us more per call on the host (measured on the CPU), a cost Multi30k-sized
batches, which are bound by host time, would feel.

The ops run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests);
``ops.attention`` chooses them (``--attention-impl``) and holds the PyTorch reference path.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...options import MegaConfigError
from . import interpreting, triton_available
from .block_common import draw_seed
from .chunk_softmax import Layout, weights_backward, weights_forward


def usable_on(device: torch.device) -> Optional[str]:
    """Why the fused kernels cannot run on ``device`` (None when they can)."""
    if not triton_available():
        return "triton is not installed"
    if torch.device(device).type != "cuda" and not interpreting():
        return f"they run on CUDA tensors, these are on {device}"
    return None


def check_usable(device: torch.device, option: str) -> None:
    reason = usable_on(device)
    if reason is not None:
        raise MegaConfigError(f"{option} cannot run: {reason}; use --attention-impl matmul")


def chunk_geometry(query_length, key_length, chunk_size: int):
    """Chunk layout of Lk keys and the last Lq of them as queries (ints or symbolic sizes): the number
    of chunks, the chunk length C, the query rows per chunk, the first query's position in its
    chunk and the padded tail of the last chunk. Lq < Lk needs one chunk (checked by the caller)."""
    chunk = key_length if chunk_size < 0 else torch.sym_min(chunk_size, key_length)
    chunks = (key_length + chunk - 1) // chunk
    rows = chunk - (key_length - query_length)
    return chunks, chunk, rows, key_length - query_length, chunks * chunk - key_length


def _split(t: Tensor, chunks: int, rows: int, tail: int) -> Tensor:
    """(B, L, X) -> (B, nC, rows, X): a view, or a zero-padded copy when the last chunk is short."""
    if tail:
        t = F.pad(t, (0, 0, 0, tail))
    return t.view(t.size(0), chunks, rows, t.size(-1))


def _merge(t: Tensor, length: int) -> Tensor:
    """(B, nC, rows, X) -> (B, length, X), contiguous (the fake implementations promise it)."""
    t = t.reshape(t.size(0), -1, t.size(-1))
    return t if t.size(1) == length else t[:, :length].contiguous()


def _saves_scores(attention_fn: str) -> bool:
    """laplace / relu2 keep the raw scores for the backward pass (softmax keeps its weights)."""
    return attention_fn != "softmax"


def _softmax_scale(z_dim: int) -> float:
    return z_dim ** -0.5


# ------------------------------------------------------------------ chunk attention


def _chunk_attention_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, key_padding_mask: Optional[Tensor],
                       seed: Optional[Tensor], chunk_size: int, attention_fn: str, causal: bool,
                       dropout: float) -> Tuple[Tensor, Tensor, Tensor]:
    """q (B, Lq, Z), k (B, Lk, Z), v (B, Lk, H), one dtype; bias: (2P - 1,) per distance (centred at P - 1)
    or (Cq, Ck) matrix; key_padding_mask (B, Lk) bool, True at pads; seed: int64 (1,) on the device (dropout).
    Returns the output (B, Lq, H), the weights that met V (B, nC, Cq, Ck) flattened, and what the backward
    pass needs besides: the softmax weights before dropout, the raw scores (laplace / relu2), or nothing.
    (Flat, the saved tensors' shapes need no guard on the number of chunks under torch.compile.)"""
    key_length = k.size(1)
    chunks, chunk, rows, offset, tail = chunk_geometry(q.size(1), key_length, chunk_size)
    scores = torch.matmul(_split(q, chunks, rows, tail), _split(k, chunks, chunk, tail).transpose(-1, -2))
    layout = Layout(chunks, chunk, key_length, offset)
    if attention_fn == "softmax":
        weights = scores  # in place
        probs = torch.empty_like(scores) if dropout > 0.0 else weights
        saved = weights if dropout > 0.0 else scores.new_empty(0)
    else:
        weights = torch.empty_like(scores) if dropout == 0.0 else None
        probs = weights if dropout == 0.0 else torch.empty_like(scores)
        saved = scores
    weights_forward(scores.view(-1, rows, chunk), weights, probs if dropout > 0.0 else None, bias,
                    key_padding_mask, layout, function=attention_fn, causal=causal,
                    scale=_softmax_scale(q.size(-1)), dropout=dropout, seed=seed)
    out = _merge(torch.matmul(probs, _split(v, chunks, chunk, tail)), q.size(1))
    return out, probs.view(-1), saved.view(-1)


chunk_attention_op = torch.library.custom_op("mega::chunk_attention", _chunk_attention_forward, mutates_args=())


@chunk_attention_op.register_fake
def _(q, k, v, bias, key_padding_mask, seed, chunk_size, attention_fn, causal, dropout):
    chunks, chunk, rows, _, _ = chunk_geometry(q.size(1), k.size(1), chunk_size)
    probs = q.new_empty(q.size(0) * chunks * rows * chunk)
    saved = q.new_empty(probs.shape) if dropout > 0.0 or _saves_scores(attention_fn) else q.new_empty(0)
    return q.new_empty(q.size(0), q.size(1), v.size(-1)), probs, saved


def _chunk_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                                key_padding_mask: Optional[Tensor], seed: Optional[Tensor], probs: Tensor,
                                saved: Tensor, chunk_size: int, attention_fn: str, causal: bool,
                                dropout: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v and the bias (in its dtype) from that of the output."""
    key_length = k.size(1)
    chunks, chunk, rows, offset, tail = chunk_geometry(q.size(1), key_length, chunk_size)
    q_chunks, k_chunks = _split(q, chunks, rows, tail), _split(k, chunks, chunk, tail)
    grad_chunks = _split(grad_out, chunks, rows, tail)
    probs = probs.view(q.size(0), chunks, rows, chunk)
    grad_scores = torch.matmul(grad_chunks, _split(v, chunks, chunk, tail).transpose(-1, -2))
    grad_v = _merge(torch.matmul(probs.transpose(-1, -2), grad_chunks), key_length)
    grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.promote_types(q.dtype, torch.float32))
    softmax = attention_fn == "softmax"
    weights_backward(grad_scores.view(-1, rows, chunk), grad_scores.view(-1, rows, chunk),
                     (probs if softmax and dropout == 0.0 else saved).view(-1, rows, chunk),
                     probs.view(-1, rows, chunk) if softmax and dropout > 0.0 else None, bias, grad_bias,
                     key_padding_mask, Layout(chunks, chunk, key_length, offset), function=attention_fn,
                     causal=causal, scale=_softmax_scale(q.size(-1)), dropout=dropout,
                     seed=seed)
    grad_q = _merge(torch.matmul(grad_scores, k_chunks), q.size(1))
    grad_k = _merge(torch.matmul(grad_scores.transpose(-1, -2), q_chunks), key_length)
    return grad_q, grad_k, grad_v, grad_bias.to(bias.dtype)


chunk_attention_backward_op = torch.library.custom_op("mega::chunk_attention_backward", _chunk_attention_backward,
                                                     mutates_args=())


@chunk_attention_backward_op.register_fake
def _(grad_out, q, k, v, bias, key_padding_mask, seed, probs, saved, chunk_size, attention_fn, causal, dropout):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), bias.new_empty(bias.shape)


def _chunk_attention_setup(ctx, inputs, output):
    q, k, v, bias, key_padding_mask, seed, *options = inputs
    _, probs, saved = output
    ctx.save_for_backward(q, k, v, bias, key_padding_mask, seed, probs, saved)
    ctx.options = options
    ctx.mark_non_differentiable(probs, saved)
    ctx.set_materialize_grads(False)


def _chunk_attention_op_backward(ctx, grad_out, _grad_probs, _grad_saved):
    grads = chunk_attention_backward_op(grad_out, *ctx.saved_tensors, *ctx.options)
    return (*grads, None, None, None, None, None, None)


chunk_attention_op.register_autograd(_chunk_attention_op_backward, setup_context=_chunk_attention_setup)


class _ChunkAttention(torch.autograd.Function):
    """The eager twin of ``mega::chunk_attention`` with its autograd formula."""

    @staticmethod
    def forward(ctx, q, k, v, bias, key_padding_mask, seed, *options):
        out, probs, saved = _chunk_attention_forward(q, k, v, bias, key_padding_mask, seed, *options)
        ctx.save_for_backward(q, k, v, bias, key_padding_mask, seed, probs, saved)
        ctx.options = options
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grads = _chunk_attention_backward(grad_out, *ctx.saved_tensors, *ctx.options)
        return (*grads, None, None, None, None, None, None)


def fused_chunk_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, key_padding_mask: Optional[Tensor],
                          chunk_size: int, attention_fn: str, causal: bool, dropout: float) -> Tensor:
    """Chunked attention (see ``ops.attention.chunk_attention``) in one operator: q (B, Lq, Z),
    k (B, Lk, Z), v (B, Lk, H) (cast to the autocast dtype when autocast is on, else to q's dtype);
    bias per distance (2P - 1,) or a (Cq, Ck) matrix; Lq < Lk only with a single chunk. Differentiable
    in q, k, v and bias. The dropout seed is drawn on q's device and read by the kernels (no host sync;
    a CUDA graph replay draws a new one).
    Returns (B, Lq, H)."""
    dtype = torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    seed = draw_seed(q.device) if dropout > 0.0 else None
    arguments = (q, k, v, bias.contiguous(), key_padding_mask, seed, chunk_size, attention_fn, causal, dropout)
    if torch.compiler.is_compiling():
        return chunk_attention_op(*arguments)[0]
    return _ChunkAttention.apply(*arguments)


# ------------------------------------------------------------------ attention weights of given scores


def _attention_weights_forward(scores: Tensor, bias: Tensor, key_valid: Optional[Tensor], attention_fn: str,
                         z_dim: int) -> Tensor:
    """scores (G, Cq, Ck) -> weights (G, Cq, Ck); bias (Cq, Ck) contiguous; key_valid (G, Ck) bool, True
    at real keys, or None."""
    weights = torch.empty_like(scores)
    layout = Layout(1, scores.size(-1), scores.size(-1), 0)
    weights_forward(scores, weights, None, bias, key_valid, layout, function=attention_fn, causal=False,
                    scale=_softmax_scale(z_dim), dropout=0.0, seed=None, mask_is_valid=True)
    return weights


attention_weights_op = torch.library.custom_op("mega::attention_weights", _attention_weights_forward, mutates_args=())


@attention_weights_op.register_fake
def _(scores, bias, key_valid, attention_fn, z_dim):
    return torch.empty_like(scores)


def _attention_weights_backward(grad_weights: Tensor, scores: Tensor, weights: Tensor, bias: Tensor,
                                  key_valid: Optional[Tensor], attention_fn: str, z_dim: int) -> Tuple[Tensor, Tensor]:
    grad_scores = torch.empty_like(scores)
    grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.promote_types(scores.dtype, torch.float32))
    layout = Layout(1, scores.size(-1), scores.size(-1), 0)
    weights_backward(grad_weights.contiguous(), grad_scores, scores if _saves_scores(attention_fn) else weights,
                     None, bias, grad_bias, key_valid, layout, function=attention_fn, causal=False,
                     scale=_softmax_scale(z_dim), dropout=0.0, seed=None, mask_is_valid=True)
    return grad_scores, grad_bias.to(bias.dtype)


attention_weights_backward_op = torch.library.custom_op("mega::attention_weights_backward",
                                                       _attention_weights_backward, mutates_args=())


@attention_weights_backward_op.register_fake
def _(grad_weights, scores, weights, bias, key_valid, attention_fn, z_dim):
    return torch.empty_like(scores), bias.new_empty(bias.shape)


def _attention_weights_setup(ctx, inputs, output):
    scores, bias, key_valid, attention_fn, z_dim = inputs
    ctx.save_for_backward(scores, output, bias, key_valid)
    ctx.options = (attention_fn, z_dim)


def _attention_weights_op_backward(ctx, grad_weights):
    grad_scores, grad_bias = attention_weights_backward_op(grad_weights, *ctx.saved_tensors, *ctx.options)
    return grad_scores, grad_bias, None, None, None


attention_weights_op.register_autograd(_attention_weights_op_backward, setup_context=_attention_weights_setup)


class _AttentionWeights(torch.autograd.Function):
    """The eager twin of ``mega::attention_weights`` with its autograd formula."""

    @staticmethod
    def forward(ctx, scores, bias, key_valid, attention_fn, z_dim):
        weights = _attention_weights_forward(scores, bias, key_valid, attention_fn, z_dim)
        ctx.save_for_backward(scores, weights, bias, key_valid)
        ctx.options = (attention_fn, z_dim)
        return weights

    @staticmethod
    def backward(ctx, grad_weights):
        grad_scores, grad_bias = _attention_weights_backward(grad_weights, *ctx.saved_tensors, *ctx.options)
        return grad_scores, grad_bias, None, None, None


def fused_attention_weights(scores: Tensor, attention_fn: str, key_valid: Optional[Tensor], bias: Tensor,
                            z_dim: int) -> Tensor:
    """``ops.attention.attention_weights`` without a causal mask in one kernel: scores (..., Cq, Ck),
    key_valid (..., 1, Ck) bool (broadcast over the leading dimensions) or None, bias (Cq, Ck).
    Returns the weights in the scores' dtype and shape."""
    shape = scores.shape
    columns = shape[-1]
    if key_valid is not None:
        key_valid = key_valid.expand(*shape[:-2], 1, columns).reshape(-1, columns)
    arguments = (scores.reshape(-1, shape[-2], columns).contiguous(), bias.contiguous(), key_valid, attention_fn,
                 z_dim)
    weights = attention_weights_op(*arguments) if torch.compiler.is_compiling() else _AttentionWeights.apply(*arguments)
    return weights.view(shape)
