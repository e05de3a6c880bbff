"""Moving-average equipped gated attention: the Mega block (docs/math.md, section 2)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import chunk_attention, select_attention_impl
from ..ops.mega_block import draw_seed, gated_update, gated_update_and_copy, mega_gates, reset_product
from .config import autocast_dtype, get_activation, MegaLayerConfig, use_fused_block
from .dropout import Dropout
from .ema import MultiDimensionalEMA
from .norms import SequenceNorm
from .position_bias import build_position_bias


def init_linear(in_features: int, out_features: int, std: float = 0.02) -> nn.Linear:
    """Linear layer with N(0, std) weights and zero bias, as all Mega projections."""
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    nn.init.zeros_(layer.bias)
    return layer


def append_padding_mask(previous: Optional[Tensor], current: Optional[Tensor],
                        previous_length: int, current_length: int, batch: int, device) -> Optional[Tensor]:
    """Concatenate the cached and the new key padding masks (B, L), filling a missing one with False."""
    if previous is None and current is None:
        return None
    if previous is None:
        previous = torch.zeros(batch, previous_length, dtype=torch.bool, device=device)
    if current is None:
        current = torch.zeros(batch, current_length, dtype=torch.bool, device=device)
    return torch.cat([previous, current], dim=1)


def dropout_p(dropout: Dropout) -> float:
    """The probability a fused kernel applies for ``dropout`` (0 in eval mode)."""
    return dropout.p if dropout.training else 0.0


def dropout_seed(device: torch.device, *dropouts: Dropout) -> Optional[Tensor]:
    """One seed (on ``device``) for a sub-layer's fused dropouts, or None when none of them drops anything."""
    return draw_seed(device) if any(dropout_p(d) > 0.0 for d in dropouts) else None


def fused_residual_update(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                          post_norm: Optional[SequenceNorm], padding_mask: Optional[Tensor], activation: str,
                          dropout: Dropout, seed: Optional[Tensor], copy_dtype: Optional[torch.dtype] = None
                          ) -> Tuple[Tensor, Tensor]:
    """``ops.mega_block.gated_update_and_copy`` with the sub-layer's post-norm fused in when the kernel has
    it (layernorm, rmsnorm, scalenorm), applied after it otherwise (batch norms); None: no norm. Returns
    the output and its copy in copy_dtype (the output itself without copy_dtype)."""
    fused = None if post_norm is None else post_norm.fused(residual.size(-1))
    options = dict(activation=activation, dropout=dropout_p(dropout), feature_dropout=dropout.feature, seed=seed)
    if fused is None:
        if post_norm is None:
            return gated_update_and_copy(h, bias, hx, u, residual, copy_dtype=copy_dtype, **options)
        out = post_norm(gated_update(h, bias, hx, u, residual, **options), padding_mask)
        return out, out if copy_dtype is None else out.to(copy_dtype)
    return gated_update_and_copy(h, bias, hx, u, residual, fused.weight, fused.bias, norm=fused.kind, eps=fused.eps,
                                 copy_dtype=copy_dtype, **options)


class MovingAverageGatedAttention(nn.Module):
    """EMA + single-head gated attention, with residual and norm.

    Args:
        cfg: layer options (D, H, Z, N, chunk size, attention function, ...).
        bidirectional: EMA in both directions (encoders).
        causal: attention sees no future position (decoders).
    Incremental state (causal only): ``ema_hidden`` (B, D, N) and the keys
    (B, c, Z), values (B, c, H) and key padding mask (B, c) of the unfinished
    chunk, c < C, so memory per step is bounded by the chunk size.
    Full-sequence passes (no state) run the fused kernels of ``ops.mega_block``
    around the projections and the attention when ``cfg.block_impl`` selects them
    (``use_fused_block``); incremental steps always run the PyTorch operations.
    """

    def __init__(self, cfg: MegaLayerConfig, bidirectional: bool, causal: bool):
        super().__init__()
        self.embed_dim, self.hidden_dim, self.z_dim = cfg.embed_dim, cfg.hidden_dim, cfg.z_dim
        self.chunk_size = cfg.chunk_size
        self.attention_fn = cfg.attention_fn
        # a bad --attention-impl raises when the layer is built, not at its first forward
        select_attention_impl(cfg.attention_impl, cfg.attention_fn, torch.device("cpu"), cfg.hidden_dim)
        self.attention_impl = cfg.attention_impl
        self.causal = causal
        self.prenorm = cfg.prenorm
        self.activation = get_activation(cfg.activation)
        self.activation_name = cfg.activation
        self.block_impl = cfg.block_impl

        self.norm = SequenceNorm(cfg.norm_type, cfg.embed_dim, affine=cfg.norm_affine)
        self.move = MultiDimensionalEMA(cfg.embed_dim, cfg.n_dim, bidirectional, cfg.truncation, cfg.ema_impl)
        self.v_proj = init_linear(cfg.embed_dim, cfg.hidden_dim)
        self.mx_proj = init_linear(cfg.embed_dim, 2 * cfg.embed_dim + cfg.z_dim + cfg.hidden_dim)
        self.h_proj = init_linear(cfg.hidden_dim, cfg.embed_dim)
        self.gamma = nn.Parameter(torch.empty(2, cfg.z_dim))
        self.beta = nn.Parameter(torch.zeros(2, cfg.z_dim))
        nn.init.normal_(self.gamma, mean=0.0, std=0.02)
        self.rel_pos_bias = build_position_bias(cfg.rel_pos_bias, cfg.z_dim, cfg.attention_length,
                                                cfg.option("max_positions"))

        self.dropout = Dropout(cfg.dropout, cfg.feature_dropout)
        self.hidden_dropout = Dropout(cfg.hidden_dropout, cfg.feature_dropout)
        self.attention_dropout = Dropout(cfg.attention_dropout)

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        state: Optional[Dict[str, Tensor]] = None,
        need_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """x: (L, B, D); padding_mask: (B, L) bool, True at pads; state: the layer's
        incremental state dict, read and updated in place. Returns (L, B, D) and the
        attention weights (B, nC, Cq, Ck) if asked."""
        length, batch, dim = x.shape
        if dim != self.embed_dim:
            raise ValueError(f"Mega block expected inputs (L, B, {self.embed_dim}), got {tuple(x.shape)}")
        if padding_mask is not None and padding_mask.shape != (batch, length):
            raise ValueError(f"padding mask must be (batch, length) = {(batch, length)}, "
                             f"got {tuple(padding_mask.shape)}")
        if state is not None and not self.causal:
            raise ValueError("incremental state needs a causal Mega block (a decoder)")
        if state is None and use_fused_block(self.block_impl, x):
            out, weights, _ = self._fused_forward(x, padding_mask, need_weights)
            return out, weights

        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask)
        v = self.activation(self.v_proj(x))
        mx = self.dropout(self.move(x, padding_mask, state))
        u, zr, hx = torch.split(self.mx_proj(mx), [self.embed_dim, self.z_dim + self.hidden_dim, self.embed_dim], -1)
        u = torch.sigmoid(u)
        z, r = torch.split(F.silu(zr), [self.z_dim, self.hidden_dim], dim=-1)
        q, k = torch.unbind(z.unsqueeze(2) * self.gamma + self.beta, dim=2)

        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        key_padding_mask = padding_mask
        if state is not None:
            k, v, key_padding_mask = self._extend_cache(state, k, v, padding_mask)

        out, weights = chunk_attention(
            q, k, self.hidden_dropout(v, batch_first=True),
            chunk_size=self.chunk_size, attention_fn=self.attention_fn, position_bias=self.rel_pos_bias,
            causal=self.causal, key_padding_mask=key_padding_mask, weight_dropout=self.attention_dropout,
            return_weights=need_weights, impl=self.attention_impl,
        )
        h = self.activation(hx + self.h_proj(out.transpose(0, 1) * r))
        out = torch.addcmul(residual, u, self.dropout(h) - residual)
        if not self.prenorm:
            out = self.norm(out, padding_mask)
        return out, weights

    def forward_and_copy(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                         state: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """``forward`` and its output as the next sub-layer's first projection reads it: under autocast on
        the fused path its copy in autocast's dtype, stored by the gated update's kernel (whose backward
        sums the two gradients), else the output itself. Returns (out, copy), (L, B, D) each."""
        if state is None and use_fused_block(self.block_impl, x):
            out, _, copy = self._fused_forward(x, padding_mask, False, autocast_dtype(x))
            return out, copy
        out, _ = self(x, padding_mask, state)
        return out, out

    def _fused_forward(self, x: Tensor, padding_mask: Optional[Tensor], need_weights: bool,
                       copy_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """forward without state through the fused kernels: the projections without their biases
        (added by the kernels), gates, attention, reset product, gated update and post-norm. Returns
        the output, the attention weights (need_weights) and the output in copy_dtype (or itself)."""
        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask)
        seed = dropout_seed(x.device, self.hidden_dropout, self.dropout)
        mx, x = self.move.forward_and_input(x, padding_mask)
        values = F.linear(x, self.v_proj.weight)
        base = F.linear(self.dropout(mx), self.mx_proj.weight)
        u, r, hx, q, k, v = mega_gates(base, self.mx_proj.bias, values, self.v_proj.bias, self.gamma, self.beta,
                                       activation=self.activation_name, dropout=dropout_p(self.hidden_dropout),
                                       feature_dropout=self.hidden_dropout.feature, seed=seed)
        out, weights = chunk_attention(
            q, k, v, chunk_size=self.chunk_size, attention_fn=self.attention_fn, position_bias=self.rel_pos_bias,
            causal=self.causal, key_padding_mask=padding_mask, weight_dropout=self.attention_dropout,
            return_weights=need_weights, impl=self.attention_impl,
        )
        h = F.linear(reset_product(out, r), self.h_proj.weight)
        out, copy = fused_residual_update(h, self.h_proj.bias, hx, u, residual, None if self.prenorm else self.norm,
                                          padding_mask, self.activation_name, self.dropout, seed, copy_dtype)
        return out, weights, copy

    def _extend_cache(self, state: Dict[str, Tensor], k: Tensor, v: Tensor, padding_mask: Optional[Tensor]):
        """Prepend the cached keys/values of the unfinished chunk, then keep the new unfinished chunk."""
        cached_keys = state.get("keys")
        cached_length = 0 if cached_keys is None else cached_keys.size(1)
        if cached_keys is not None:
            k = torch.cat([cached_keys, k], dim=1)
            v = torch.cat([state["values"], v], dim=1)
        key_padding_mask = append_padding_mask(state.get("key_padding_mask"), padding_mask, cached_length,
                                               k.size(1) - cached_length, k.size(0), k.device)
        keep = k.size(1) if self.chunk_size < 0 else k.size(1) % self.chunk_size
        for name in ("keys", "values", "key_padding_mask"):
            state.pop(name, None)
        if keep > 0:
            state["keys"], state["values"] = k[:, -keep:], v[:, -keep:]
            if key_padding_mask is not None:
                state["key_padding_mask"] = key_padding_mask[:, -keep:]
        return k, v, key_padding_mask

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, z_dim={self.z_dim}, hidden_dim={self.hidden_dim}, "
                f"chunk_size={self.chunk_size}, attention_fn={self.attention_fn}, "
                f"attention_impl={self.attention_impl}, block_impl={self.block_impl}, causal={self.causal}, "
                f"prenorm={self.prenorm}")
