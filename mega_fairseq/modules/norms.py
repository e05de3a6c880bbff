"""The five normalizations of Mega (``SequenceNorm`` in the original), over (L, B, D) inputs."""
from typing import Optional

import torch
from torch import Tensor, nn

from .config import check_choice, NORM_TYPES


class ScaleNorm(nn.Module):
    """``g * x / sqrt(mean(x^2) + eps)`` with one learned scalar g."""

    def __init__(self, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x if self.scalar is None else self.scalar * x


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)`` with a learned weight per channel."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x if self.weight is None else self.weight * x


class SequenceNorm(nn.Module):
    """layernorm | scalenorm | rmsnorm | batchnorm | syncbatchnorm over (L, B, D).

    Batch norms take their statistics over the non-padding positions of the
    time and batch axes only; padding positions come out as zeros.
    """

    def __init__(self, norm_type: str, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        check_choice(norm_type, NORM_TYPES, "--normalization-type")
        self.norm_type = norm_type
        if norm_type == "layernorm":
            self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        elif norm_type == "scalenorm":
            self.norm = ScaleNorm(eps=eps, affine=affine)
        elif norm_type == "rmsnorm":
            self.norm = RMSNorm(dim, eps=eps, affine=affine)
        elif norm_type == "batchnorm":
            self.norm = nn.BatchNorm1d(dim, eps=eps, affine=affine)
        else:
            self.norm = nn.SyncBatchNorm(dim, eps=eps, affine=affine)

    @property
    def is_batch_norm(self) -> bool:
        return self.norm_type in ("batchnorm", "syncbatchnorm")

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool, True at pads (used by batch norms)."""
        if not self.is_batch_norm:
            return self.norm(x)
        if padding_mask is None:
            return self.norm(x.reshape(-1, x.size(-1))).view_as(x)
        valid = ~padding_mask.t()
        out = x.new_zeros(x.shape)
        out[valid] = self.norm(x[valid]).to(x.dtype)
        return out
