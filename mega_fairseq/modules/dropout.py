"""Dropout that can drop whole feature channels (fairseq's --feature-dropout)."""
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Module):
    """Standard dropout, or with ``feature=True`` one mask per (batch, channel) shared over time."""

    def __init__(self, p: float, feature: bool = False):
        super().__init__()
        self.p = p
        self.feature = feature

    def forward(self, x: Tensor, batch_first: bool = False) -> Tensor:
        """x: (L, B, D), or (B, L, D) with batch_first."""
        if not self.training or self.p == 0.0:
            return x
        if not self.feature:
            return F.dropout(x, self.p, training=True)
        time_axis = 1 if batch_first else 0
        mask_shape = list(x.shape)
        mask_shape[time_axis] = 1
        keep = x.new_empty(mask_shape).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}, feature={self.feature}"
