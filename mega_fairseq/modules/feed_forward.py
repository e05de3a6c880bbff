"""Normalized feed-forward network (NFFN) of a Mega layer (spec, section 3)."""
from typing import Optional

from torch import Tensor, nn

from .config import get_activation, MegaLayerConfig
from .dropout import Dropout
from .gated_attention import init_linear
from .norms import SequenceNorm


class NormalizedFeedForward(nn.Module):
    """``x + dropout(fc2(dropout(act(fc1(norm(x))))))``, the norm before (prenorm) or after."""

    def __init__(self, cfg: MegaLayerConfig):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.activation = get_activation(cfg.activation)
        self.norm = SequenceNorm(cfg.norm_type, cfg.embed_dim, affine=cfg.norm_affine)
        self.fc1 = init_linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = init_linear(cfg.ffn_dim, cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout, cfg.feature_dropout)
        self.hidden_dropout = Dropout(cfg.activation_dropout, cfg.feature_dropout)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool (used by batch norms). Returns (L, B, D)."""
        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask)
        x = self.dropout(self.fc2(self.hidden_dropout(self.activation(self.fc1(x)))))
        x = x + residual
        if not self.prenorm:
            x = self.norm(x, padding_mask)
        return x
