"""One decoding step of a stack of Mega decoder layers on preallocated buffers (docs/math.md, section 4.1).

fairseq's beam search and sampling call the decoder once per generated token. A causal Mega layer
needs, per sequence, its EMA hidden state (D, N) and the keys and values of the current attention
chunk (of the whole prefix when unchunked); the cross-attention needs the projected encoder keys and
values. ``StepBuffers`` holds all of these for every layer in a few tensors allocated once, written
in place at the slot of the current position, and ``decoder_layers_step`` reads the position from a
device tensor: every step issues the same kernels with the same shapes, so a step can be captured
once in a CUDA graph and replayed (``step_graph.StepGraph``). Cached slots that the current position
may not see (later slots, stale entries of an earlier chunk) are masked out of the attention, so the
step computes exactly what the layers' full forward pass computes for that position.

Shapes: B rows (sequences, beams included), nL layers, K self-attention slots (the chunk size, or
a capacity >= the decoded length when unchunked), S encoder positions (padded up), D width, N EMA
order, Z query/key width, H value width.
"""
from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.attention import attention_weights
from ..ops.ema import ema_step
from .position_bias import RelativePositionBias


@dataclass
class StepBuffers:
    """Decoding state of a decoder's layers for up to B rows.

    ema_hidden (B, nL, D, N) in float32 (float64 for a float64 model); keys (B, nL, K, Z); values (B, nL, K, H); key_padding (B, K)
    bool, True where the token cached in a slot was padding; memory_keys (B, nL, S, Z),
    memory_values (B, nL, S, D) and memory_padding (B, S) (no cross-attention: empty tensors);
    tokens (B, 1) the step's input tokens; position () int64, the position of the input token."""

    ema_hidden: Tensor
    keys: Tensor
    values: Tensor
    key_padding: Tensor
    memory_keys: Tensor
    memory_values: Tensor
    memory_padding: Tensor
    tokens: Tensor
    position: Tensor

    @classmethod
    def allocate(cls, rows: int, layers: int, slots: int, memory_length: int, embed_dim: int, n_dim: int,
                 z_dim: int, hidden_dim: int, dtype: torch.dtype, device) -> "StepBuffers":
        def zeros(*shape, dtype=dtype):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            ema_hidden=zeros(rows, layers, embed_dim, n_dim, dtype=torch.promote_types(dtype, torch.float32)),
            keys=zeros(rows, layers, slots, z_dim),
            values=zeros(rows, layers, slots, hidden_dim),
            key_padding=torch.ones(rows, slots, dtype=torch.bool, device=device),
            memory_keys=zeros(rows, layers, memory_length, z_dim),
            memory_values=zeros(rows, layers, memory_length, embed_dim),
            memory_padding=torch.ones(rows, memory_length, dtype=torch.bool, device=device),
            tokens=zeros(rows, 1, dtype=torch.long),
            position=zeros((), dtype=torch.long),
        )

    @property
    def rows(self) -> int:
        return self.tokens.size(0)

    @property
    def slots(self) -> int:
        return self.keys.size(2)

    @property
    def memory_length(self) -> int:
        return self.memory_keys.size(2)

    def reset(self) -> None:
        """Forget every sequence (a new batch): zero EMA states, every slot padding."""
        self.ema_hidden.zero_()
        self.key_padding.fill_(True)
        self.memory_padding.fill_(True)

    def reorder(self, new_order: Tensor) -> None:
        """Row r of the first len(new_order) rows becomes old row new_order[r] (beam search)."""
        count = new_order.numel()
        for field in fields(self):
            if field.name == "position":
                continue
            buffer = getattr(self, field.name)
            if buffer.numel():
                buffer[:count] = buffer.index_select(0, new_order)

    def copy_into(self, other: "StepBuffers") -> None:
        """Copy this state into ``other``, whose self-attention has at least as many slots."""
        slots = self.slots
        for name in ("ema_hidden", "memory_keys", "memory_values", "memory_padding", "tokens", "position"):
            getattr(other, name).copy_(getattr(self, name))
        other.keys[:, :, :slots] = self.keys
        other.values[:, :, :slots] = self.values
        other.key_padding.fill_(True)
        other.key_padding[:, :slots] = self.key_padding


def position_bias_row(bias: RelativePositionBias, query_position: Tensor, key_length: int) -> Tensor:
    """(1, Lk) bias between the query at ``query_position`` (a () int64 tensor) and keys 0 .. Lk - 1,
    gathered on the device from the bias's values per distance."""
    keys = torch.arange(key_length, device=query_position.device)
    return bias.relative_vector(key_length)[bias.max_positions - 1 - query_position + keys].unsqueeze(0)


def ema_step_(ema, x: Tensor, padding: Tensor, hidden: Tensor) -> Tensor:
    """The EMA sub-layer for one position, updating ``hidden`` (B, D, N) in place.
    x (1, B, D); padding (B, 1) bool. Returns silu(EMA(x) + omega * x), (1, B, D)."""
    y, new_hidden = ema_step(x[0].masked_fill(padding, 0.0), *ema._step_parameters(), hidden)
    hidden.copy_(new_hidden)
    return F.silu(y.to(x.dtype) + x[0] * ema.omega).unsqueeze(0)


def block_step(block, x: Tensor, padding: Tensor, hidden: Tensor, keys: Tensor, values: Tensor,
               key_padding: Tensor, slot: Tensor, visible: Tensor) -> Tensor:
    """A causal MovingAverageGatedAttention at one position. x (1, B, D); padding (B, 1);
    hidden (B, D, N), keys (B, K, Z), values (B, K, H) this layer's buffers; key_padding (B, K);
    slot () int64: the slot of this position; visible (1, K) bool: slots the query may see."""
    residual = x
    if block.prenorm:
        x = block.norm(x)
    v = block.activation(block.v_proj(x))
    mx = block.dropout(ema_step_(block.move, x, padding, hidden))
    u, zr, hx = torch.split(block.mx_proj(mx), [block.embed_dim, block.z_dim + block.hidden_dim, block.embed_dim], -1)
    u = torch.sigmoid(u)
    z, r = torch.split(F.silu(zr), [block.z_dim, block.hidden_dim], dim=-1)
    q, k = torch.unbind(z.unsqueeze(2) * block.gamma + block.beta, dim=2)
    keys.index_copy_(1, slot.view(1), k.transpose(0, 1))
    values.index_copy_(1, slot.view(1), block.hidden_dropout(v).transpose(0, 1))
    bias = position_bias_row(block.rel_pos_bias, slot, keys.size(1)).to(q.dtype)
    weights = attention_weights(q.transpose(0, 1) @ keys.transpose(1, 2), block.attention_fn,
                                ~key_padding.unsqueeze(1), visible, bias, block.z_dim)
    out = (block.attention_dropout(weights) @ values).transpose(0, 1)
    h = block.activation(hx + block.h_proj(out * r))
    out = torch.addcmul(residual, u, block.dropout(h) - residual)
    return block.norm(out) if not block.prenorm else out


def cross_attention_step(cross, x: Tensor, memory_keys: Tensor, memory_values: Tensor, memory_padding: Tensor,
                         position: Tensor) -> Tuple[Tensor, Tensor]:
    """GatedCrossAttention at target ``position`` (() int64). x (1, B, D); memory_keys (B, S, Z),
    memory_values (B, S, D), memory_padding (B, S) this layer's buffers. Returns (1, B, D) and the
    attention weights (B, 1, S)."""
    residual = x
    if cross.prenorm:
        x = cross.norm(x)
    u, r, q = torch.split(cross.q_proj(x), [cross.embed_dim, cross.embed_dim, cross.z_dim], dim=-1)
    u, r = torch.sigmoid(u), F.silu(r)
    bias = position_bias_row(cross.rel_pos_bias, position, memory_keys.size(1)).to(q.dtype)
    weights = attention_weights(q.transpose(0, 1) @ memory_keys.transpose(1, 2), cross.attention_fn,
                                ~memory_padding.unsqueeze(1), None, bias, cross.z_dim)
    h = (cross.attention_dropout(weights) @ cross.hidden_dropout(memory_values, batch_first=True)).transpose(0, 1)
    h = cross.dropout(cross.activation(cross.h_proj(h * r)))
    out = torch.addcmul(residual, u, h - residual)
    return (cross.norm(out) if not cross.prenorm else out), weights


def fill_memory(layers, buffers: StepBuffers, memory: Tensor, memory_padding: Optional[Tensor]) -> None:
    """Project the encoder output (S, B, D) once for every layer's cross-attention into the buffers
    (rows 0 .. B - 1, positions 0 .. S - 1); memory_padding (B, S) bool or None."""
    length, batch, _ = memory.shape
    for index, layer in enumerate(layers):
        cross = layer.cross_attn
        buffers.memory_keys[:batch, index, :length] = cross.k_proj(memory).transpose(0, 1)
        buffers.memory_values[:batch, index, :length] = cross.activation(cross.v_proj(memory)).transpose(0, 1)
    buffers.memory_padding[:batch].fill_(True)
    buffers.memory_padding[:batch, :length] = False if memory_padding is None else memory_padding


def decoder_layers_step(layers, x: Tensor, padding: Tensor, buffers: StepBuffers,
                        chunk_size: int) -> Tuple[Tensor, Optional[Tensor]]:
    """All decoder layers at position ``buffers.position`` for every buffer row.

    x (1, B, D) embedded input tokens; padding (B, 1) bool. Writes this position's keys, values and
    padding into the slot ``position mod chunk`` (``position`` when unchunked) and updates the EMA
    states. Returns (1, B, D) and the last layer's cross-attention weights (B, 1, S) (or None)."""
    position = buffers.position
    slot = position % chunk_size if chunk_size > 0 else position
    buffers.key_padding.index_copy_(1, slot.view(1), padding)
    visible = (torch.arange(buffers.slots, device=slot.device) <= slot).unsqueeze(0)
    attn = None
    for index, layer in enumerate(layers):
        x = block_step(layer.mega_layer, x, padding, buffers.ema_hidden[:, index], buffers.keys[:, index],
                       buffers.values[:, index], buffers.key_padding, slot, visible)
        if layer.cross_attn is not None:
            x, attn = cross_attention_step(layer.cross_attn, x, buffers.memory_keys[:, index],
                                           buffers.memory_values[:, index], buffers.memory_padding, position)
        if layer.nffn is not None:
            x = layer.nffn(x)
    return x, attn


def supports_steps(modules: List) -> bool:
    """Whether the layers can decode on step buffers: batch norms need the dynamic path (they select
    the non-padding rows, a data-dependent shape)."""
    return not any(getattr(module, "is_batch_norm", False) for layer in modules for module in layer.modules())
