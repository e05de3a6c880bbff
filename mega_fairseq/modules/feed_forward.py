"""Normalized feed-forward network (NFFN) of a Mega layer (docs/math.md, section 3)."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.mega_block import bias_activation
from .config import get_activation, MegaLayerConfig, use_fused_block
from .dropout import Dropout
from .gated_attention import dropout_p, dropout_seed, fused_residual_update, init_linear
from .norms import SequenceNorm


class NormalizedFeedForward(nn.Module):
    """``x + dropout(fc2(dropout(act(fc1(norm(x))))))``, the norm before (prenorm) or after.

    With ``cfg.block_impl`` selecting them (``use_fused_block``), the bias, activation and dropout
    after fc1, and the bias, dropout, residual sum and post-norm after fc2, run as fused kernels.
    """

    def __init__(self, cfg: MegaLayerConfig):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.activation = get_activation(cfg.activation)
        self.activation_name = cfg.activation
        self.block_impl = cfg.block_impl
        self.norm = SequenceNorm(cfg.norm_type, cfg.embed_dim, affine=cfg.norm_affine)
        self.fc1 = init_linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = init_linear(cfg.ffn_dim, cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout, cfg.feature_dropout)
        self.hidden_dropout = Dropout(cfg.activation_dropout, cfg.feature_dropout)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, x_copy: Optional[Tensor] = None) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool (used by batch norms); x_copy: x as fc1 reads it, from the
        sub-layer before (``forward_and_copy``: x in autocast's dtype), used when fc1 reads x (post-norm).
        Returns (L, B, D)."""
        if x_copy is not None and x_copy.shape != x.shape:
            raise ValueError(f"the copy of the feed-forward network's input must be shaped as x {tuple(x.shape)}, "
                             f"got {tuple(x_copy.shape)}")
        if use_fused_block(self.block_impl, x):
            return self._fused_forward(x, padding_mask, x_copy)
        residual = x
        x = self._fc1_input(x, padding_mask, x_copy)
        x = self.dropout(self.fc2(self.hidden_dropout(self.activation(self.fc1(x)))))
        x = x + residual
        if not self.prenorm:
            x = self.norm(x, padding_mask)
        return x

    def _fc1_input(self, x: Tensor, padding_mask: Optional[Tensor], x_copy: Optional[Tensor]) -> Tensor:
        """What fc1 reads: the normalized x (prenorm), else x as the sub-layer before copied it, or x."""
        if self.prenorm:
            return self.norm(x, padding_mask)
        return x if x_copy is None else x_copy

    def _fused_forward(self, x: Tensor, padding_mask: Optional[Tensor], x_copy: Optional[Tensor]) -> Tensor:
        """forward through the fused kernels (projections without their biases)."""
        residual = x
        x = self._fc1_input(x, padding_mask, x_copy)
        seed = dropout_seed(x.device, self.hidden_dropout, self.dropout)
        hidden = bias_activation(F.linear(x, self.fc1.weight), self.fc1.bias, activation=self.activation_name,
                                 dropout=dropout_p(self.hidden_dropout), feature_dropout=self.hidden_dropout.feature,
                                 seed=seed)
        return fused_residual_update(F.linear(hidden, self.fc2.weight), self.fc2.bias, None, None, residual,
                                     None if self.prenorm else self.norm, padding_mask, "linear", self.dropout, seed)[0]
