"""Mega encoder and decoder layers (docs/math.md, section 3)."""
from typing import Dict, Optional, Tuple

from torch import Tensor, nn

from .config import MegaLayerConfig
from .cross_attention import GatedCrossAttention
from .feed_forward import NormalizedFeedForward
from .gated_attention import MovingAverageGatedAttention


class MegaEncoderLayer(nn.Module):
    """Mega block with bidirectional EMA and non-causal attention, then the NFFN.

    Post-norm, the block's output goes to the NFFN's fc1 as the block's kernel copied it into
    autocast's dtype (``forward_and_copy``), sparing the cast and the sum of its two gradients."""

    def __init__(self, cfg: MegaLayerConfig):
        super().__init__()
        self.mega_layer = MovingAverageGatedAttention(cfg, bidirectional=True, causal=False)
        self.nffn = NormalizedFeedForward(cfg) if cfg.ffn_dim > 0 else None
        self.pass_copies = not cfg.prenorm

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool, True at pads. Returns (L, B, D)."""
        if self.nffn is None or not self.pass_copies:
            x = self.mega_layer(x, padding_mask)[0]
            return x if self.nffn is None else self.nffn(x, padding_mask)
        x, x_copy = self.mega_layer.forward_and_copy(x, padding_mask)
        return self.nffn(x, padding_mask, x_copy)


class MegaDecoderLayer(nn.Module):
    """Causal Mega block, gated cross-attention (unless ``cross_max_positions`` is None), NFFN.

    Post-norm, each sub-layer's output goes to the next one's first projection as its kernel copied it
    into autocast's dtype (as in ``MegaEncoderLayer``)."""

    def __init__(self, cfg: MegaLayerConfig, cross_max_positions: Optional[int] = None):
        super().__init__()
        self.mega_layer = MovingAverageGatedAttention(cfg, bidirectional=False, causal=True)
        self.cross_attn = None if cross_max_positions is None else GatedCrossAttention(cfg, cross_max_positions)
        self.nffn = NormalizedFeedForward(cfg) if cfg.ffn_dim > 0 else None
        self.pass_copies = not cfg.prenorm

    def forward(
        self,
        x: Tensor,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
        self_state: Optional[Dict[str, Tensor]] = None,
        cross_state: Optional[Dict[str, Tensor]] = None,
        position_offset: int = 0,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """x: (T, B, D) at target positions position_offset ..; encoder_out: (S, B, D);
        encoder_padding_mask: (B, S); padding_mask: (B, T); the two state dicts carry
        incremental decoding state. Returns (T, B, D) and the cross-attention weights (B, T, S)."""
        copies = self.pass_copies
        if copies and (self.cross_attn is not None or self.nffn is not None):
            x, x_copy = self.mega_layer.forward_and_copy(x, padding_mask, self_state)
        else:
            x, x_copy = self.mega_layer(x, padding_mask, self_state)[0], None
        attn = None
        if self.cross_attn is not None:
            cross_args = (x, encoder_out, encoder_padding_mask, padding_mask, cross_state, position_offset, x_copy)
            if copies and self.nffn is not None:
                x, x_copy, attn = self.cross_attn.forward_and_copy(*cross_args)
            else:
                (x, attn), x_copy = self.cross_attn(*cross_args), None
        if self.nffn is not None:
            x = self.nffn(x, padding_mask, x_copy)
        return x, attn
