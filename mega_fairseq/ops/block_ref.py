"""Whole Mega sub-layers in float64 from a module's parameters (docs/math.md, sections 2 and 3).

Each reference reads only the parameters and options of the ``nn.Module`` it mirrors (dropout off)
and computes with the plain references of ``ops/*_ref.py``: the Mega block, the gated
cross-attention, the normalized feed-forward network and the encoder and decoder layers.
"""
import torch

from .attention_ref import attention_row_reference, chunk_attention_reference
from .ema_ref import ema_reference
from .norm_ref import batchnorm_reference, layernorm_reference, rms_scale_reference
from .position_bias_ref import rotary_bias_reference, simple_bias_reference
from .ref_utils import ACTIVATIONS, DTYPE, f64, linear, silu


def ema_module_reference(ema, x, padding_mask=None, hidden=None, method="recurrence"):
    """ema_reference with the parameters of a MultiDimensionalEMA module."""
    return ema_reference(x, ema.alpha, ema.delta, ema.beta, ema.gamma, ema.omega, ema.bidirectional,
                         ema.truncation, padding_mask, hidden, method)


def position_bias_reference(bias_module, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """Reference bias matrix from the parameters of a Simple/Rotary position-bias module."""
    if hasattr(bias_module, "weight"):
        return simple_bias_reference(bias_module.weight, query_length, key_length, offset)
    return rotary_bias_reference(bias_module.alpha, bias_module.beta, query_length, key_length, offset)


def norm_reference(norm, x, padding_mask=None):
    """Reference of a SequenceNorm module (reads its type and parameters). x (L, B, D)."""
    inner = norm.norm
    if norm.norm_type == "layernorm":
        return layernorm_reference(x, inner.weight, inner.bias, inner.eps)
    if norm.norm_type == "scalenorm":
        return rms_scale_reference(x, inner.scalar, inner.eps)
    if norm.norm_type == "rmsnorm":
        return rms_scale_reference(x, inner.weight, inner.eps)
    running = (None, None) if inner.training else (inner.running_mean, inner.running_var)
    return batchnorm_reference(x, inner.weight, inner.bias, inner.eps, padding_mask, *running)


def mega_block_reference(module, x, padding_mask=None, activation: str = "silu"):
    """The Mega block (docs/math.md, section 2), dropout off, from the parameters of a
    MovingAverageGatedAttention module. x (L, B, D) -> (L, B, D)."""
    act = ACTIVATIONS[activation]
    x = f64(x)
    dim, z_dim, hidden_dim = module.embed_dim, module.z_dim, module.hidden_dim
    residual = x
    if module.prenorm:
        x = norm_reference(module.norm, x, padding_mask)
    values = act(linear(x, module.v_proj))
    mx, _ = ema_module_reference(module.move, x, padding_mask)
    base = linear(mx, module.mx_proj)
    u = torch.sigmoid(base[..., :dim])
    z = silu(base[..., dim:dim + z_dim])
    r = silu(base[..., dim + z_dim:dim + z_dim + hidden_dim])
    hx = base[..., dim + z_dim + hidden_dim:]
    gamma, beta = f64(module.gamma), f64(module.beta)
    queries, keys = z * gamma[0] + beta[0], z * gamma[1] + beta[1]

    span = x.size(0) if module.chunk_size < 0 else min(module.chunk_size, x.size(0))
    bias = position_bias_reference(module.rel_pos_bias, span, span)
    out, _ = chunk_attention_reference(queries.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                                       module.chunk_size, module.attention_fn, lambda i, j: bias[i, j],
                                       module.causal, padding_mask)
    h = act(hx + linear(out.transpose(0, 1) * r, module.h_proj))
    out = residual + u * (h - residual)
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def cross_attention_reference(module, query, memory, memory_padding_mask=None, padding_mask=None,
                              query_offset: int = 0, activation: str = "silu"):
    """Gated cross-attention (docs/math.md, section 3) from a GatedCrossAttention module's parameters.

    query (T, B, D) at target positions query_offset ..; memory (S, B, D);
    memory_padding_mask (B, S). Bias between target position i and source position j.
    Returns (T, B, D)."""
    act = ACTIVATIONS[activation]
    query, memory = f64(query), f64(memory)
    dim, z_dim = module.embed_dim, module.z_dim
    target_length, batch, _ = query.shape
    source_length = memory.size(0)
    x = norm_reference(module.norm, query, padding_mask) if module.prenorm else query
    base = linear(x, module.q_proj)
    u, r, q = torch.sigmoid(base[..., :dim]), silu(base[..., dim:2 * dim]), base[..., 2 * dim:]
    k = linear(memory, module.k_proj)
    v = act(linear(memory, module.v_proj))
    bias = position_bias_reference(module.rel_pos_bias, target_length, source_length, query_offset)
    attended = torch.zeros(target_length, batch, dim, dtype=DTYPE)
    for b in range(batch):
        valid = torch.ones(source_length, dtype=torch.bool)
        if memory_padding_mask is not None:
            valid = ~memory_padding_mask[b]
        for i in range(target_length):
            weights = attention_row_reference(q[i, b], k[:, b], bias[i], module.attention_fn, valid,
                                              torch.ones_like(valid), z_dim, max(int(valid.sum()), 1))
            attended[i, b] = weights @ v[:, b]
    h = act(linear(attended * r, module.h_proj))
    out = query + u * (h - query)
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def nffn_reference(module, x, padding_mask=None, activation: str = "silu"):
    """Normalized feed-forward: x + fc2(act(fc1(norm(x)))) (norm after instead when postnorm)."""
    x = f64(x)
    residual = x
    if module.prenorm:
        x = norm_reference(module.norm, x, padding_mask)
    out = linear(ACTIVATIONS[activation](linear(x, module.fc1)), module.fc2) + residual
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def encoder_layer_reference(layer, x, padding_mask=None):
    out = mega_block_reference(layer.mega_layer, x, padding_mask)
    return out if layer.nffn is None else nffn_reference(layer.nffn, out, padding_mask)


def decoder_layer_reference(layer, x, encoder_out=None, encoder_padding_mask=None, padding_mask=None):
    out = mega_block_reference(layer.mega_layer, x, padding_mask)
    if layer.cross_attn is not None:
        out = cross_attention_reference(layer.cross_attn, out, encoder_out, encoder_padding_mask, padding_mask)
    return out if layer.nffn is None else nffn_reference(layer.nffn, out, padding_mask)
