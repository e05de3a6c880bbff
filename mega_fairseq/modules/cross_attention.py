"""Gated cross-attention from the decoder to the encoder output (docs/math.md, section 3)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention_weights
from ..ops.mega_block import bias_activation, cross_gates, reset_product
from .config import autocast_dtype, get_activation, MegaLayerConfig, use_fused_block
from .dropout import Dropout
from .gated_attention import dropout_p, dropout_seed, fused_residual_update, init_linear
from .norms import SequenceNorm
from .position_bias import build_position_bias


class GatedCrossAttention(nn.Module):
    """Queries, update and reset gates from the decoder; keys and values from the encoder.

    ``q_proj: D -> 2D + Z`` (update gate, reset gate, query), ``k_proj: D -> Z``,
    ``v_proj: D -> D``, ``h_proj: D -> D``, and a relative position bias between
    target position i and source position j over ``max_positions`` positions.
    Incremental state: the projected encoder keys (B, S, Z), values (B, S, D) and
    key padding mask (B, S), computed at the first step. Without state, the fused
    kernels of ``ops.mega_block`` run when ``cfg.block_impl`` selects them.
    """

    def __init__(self, cfg: MegaLayerConfig, max_positions: int):
        super().__init__()
        self.embed_dim, self.z_dim = cfg.embed_dim, cfg.z_dim
        self.attention_fn = cfg.attention_fn
        self.prenorm = cfg.prenorm
        self.activation = get_activation(cfg.activation)
        self.activation_name = cfg.activation
        self.block_impl = cfg.block_impl

        self.norm = SequenceNorm(cfg.norm_type, cfg.embed_dim, affine=cfg.norm_affine)
        self.k_proj = init_linear(cfg.embed_dim, cfg.z_dim)
        self.v_proj = init_linear(cfg.embed_dim, cfg.embed_dim)
        self.q_proj = init_linear(cfg.embed_dim, 2 * cfg.embed_dim + cfg.z_dim)
        self.h_proj = init_linear(cfg.embed_dim, cfg.embed_dim)
        self.rel_pos_bias = build_position_bias(cfg.rel_pos_bias, cfg.z_dim, max_positions,
                                                "--max-source-positions/--max-target-positions")

        self.dropout = Dropout(cfg.dropout, cfg.feature_dropout)
        self.hidden_dropout = Dropout(cfg.hidden_dropout, cfg.feature_dropout)
        self.attention_dropout = Dropout(cfg.attention_dropout)

    def forward(
        self,
        query: Tensor,
        memory: Optional[Tensor],
        memory_padding_mask: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
        state: Optional[Dict[str, Tensor]] = None,
        query_offset: int = 0,
        query_copy: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """query: (T, B, D) decoder states at target positions query_offset ..;
        memory: (S, B, D) encoder output (may be None once cached in ``state``);
        memory_padding_mask: (B, S) bool; padding_mask: (B, T) bool, for batch norms;
        query_copy: the query as q_proj reads it, from the sub-layer before (in autocast's dtype),
        used when q_proj reads the query (post-norm).
        Returns (T, B, D) and the attention weights (B, T, S)."""
        out, weights, _ = self._forward(query, memory, memory_padding_mask, padding_mask, state, query_offset,
                                        query_copy, None)
        return out, weights

    def forward_and_copy(self, query: Tensor, memory: Optional[Tensor], memory_padding_mask: Optional[Tensor] = None,
                         padding_mask: Optional[Tensor] = None, state: Optional[Dict[str, Tensor]] = None,
                         query_offset: int = 0, query_copy: Optional[Tensor] = None
                         ) -> Tuple[Tensor, Tensor, Tensor]:
        """``forward``, and its output as the next sub-layer's first projection reads it (as
        ``MovingAverageGatedAttention.forward_and_copy``). Returns (out, copy, weights)."""
        out, weights, copy = self._forward(query, memory, memory_padding_mask, padding_mask, state, query_offset,
                                           query_copy, autocast_dtype(query))
        return out, copy, weights

    def _forward(self, query: Tensor, memory: Optional[Tensor], memory_padding_mask: Optional[Tensor],
                 padding_mask: Optional[Tensor], state: Optional[Dict[str, Tensor]], query_offset: int,
                 query_copy: Optional[Tensor], copy_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Tensor, Tensor]:
        length, batch, dim = query.shape
        if dim != self.embed_dim:
            raise ValueError(f"cross-attention expected queries (T, B, {self.embed_dim}), got {tuple(query.shape)}")
        if query_copy is not None and query_copy.shape != query.shape:
            raise ValueError(f"the copy of the cross-attention's query must be shaped as the query "
                             f"{tuple(query.shape)}, got {tuple(query_copy.shape)}")
        projected = query if query_copy is None else query_copy
        if state is None and use_fused_block(self.block_impl, query):
            return self._fused_forward(query, projected, memory, memory_padding_mask, padding_mask, query_offset,
                                       copy_dtype)
        if state is not None and "keys" in state:
            k, v, memory_padding_mask = state["keys"], state["values"], state.get("key_padding_mask")
        else:
            memory = self._check_memory(memory, batch)
            k = self.k_proj(memory).transpose(0, 1)
            v = self.activation(self.v_proj(memory)).transpose(0, 1)
            if state is not None:
                state["keys"], state["values"] = k, v
                if memory_padding_mask is not None:
                    state["key_padding_mask"] = memory_padding_mask

        residual = query
        x = self.norm(query, padding_mask) if self.prenorm else projected
        u, r, q = torch.split(self.q_proj(x), [self.embed_dim, self.embed_dim, self.z_dim], dim=-1)
        u, r = torch.sigmoid(u), F.silu(r)

        key_valid = None if memory_padding_mask is None else ~memory_padding_mask.unsqueeze(1)
        bias = self.rel_pos_bias(length, k.size(1), query_offset).to(q.dtype)
        weights = attention_weights(q.transpose(0, 1) @ k.transpose(1, 2), self.attention_fn, key_valid, None,
                                    bias, self.z_dim)
        h = (self.attention_dropout(weights) @ self.hidden_dropout(v, batch_first=True)).transpose(0, 1)
        h = self.dropout(self.activation(self.h_proj(h * r)))
        out = torch.addcmul(residual, u, h - residual)
        if not self.prenorm:
            out = self.norm(out, padding_mask)
        return out, weights, out

    def _check_memory(self, memory: Optional[Tensor], batch: int) -> Tensor:
        if memory is None:
            raise ValueError("cross-attention needs the encoder output")
        if memory.dim() != 3 or memory.shape[1:] != (batch, self.embed_dim):
            raise ValueError(f"encoder output must be (S, {batch}, {self.embed_dim}), got {tuple(memory.shape)}")
        return memory

    def _fused_forward(self, query: Tensor, projected: Tensor, memory: Optional[Tensor],
                       memory_padding_mask: Optional[Tensor], padding_mask: Optional[Tensor], query_offset: int,
                       copy_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Tensor, Tensor]:
        """forward without state through the fused kernels (projections without their biases); projected:
        the query as q_proj reads it. Returns the output, the weights and the output in copy_dtype."""
        length = query.size(0)
        memory = self._check_memory(memory, query.size(1))
        seed = dropout_seed(query.device, self.hidden_dropout, self.dropout)
        k = self.k_proj(memory).transpose(0, 1)
        v = bias_activation(F.linear(memory, self.v_proj.weight), self.v_proj.bias, activation=self.activation_name,
                            dropout=dropout_p(self.hidden_dropout), feature_dropout=self.hidden_dropout.feature,
                            seed=seed, batch_first=True)
        x = self.norm(query, padding_mask) if self.prenorm else projected
        u, r, q = cross_gates(F.linear(x, self.q_proj.weight), self.q_proj.bias, self.z_dim)
        key_valid = None if memory_padding_mask is None else ~memory_padding_mask.unsqueeze(1)
        bias = self.rel_pos_bias(length, k.size(1), query_offset).to(q.dtype)
        weights = attention_weights(q @ k.transpose(1, 2), self.attention_fn, key_valid, None, bias, self.z_dim)
        h = F.linear(reset_product(self.attention_dropout(weights) @ v, r), self.h_proj.weight)
        out, copy = fused_residual_update(h, self.h_proj.bias, None, u, query, None if self.prenorm else self.norm,
                                          padding_mask, self.activation_name, self.dropout, seed, copy_dtype)
        return out, weights, copy

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, z_dim={self.z_dim}, attention_fn={self.attention_fn}"
