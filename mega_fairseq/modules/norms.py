"""The five normalizations of Mega (``SequenceNorm`` in the original), over (L, B, D) inputs."""
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

from ..ops.triton.gated_update import MAX_FUSED_NORM_DIM
from ..options import check_choice, NORM_TYPES


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


class SyncedBatchNorm(nn.BatchNorm1d):
    """Batch norm over rows (N, D) whose training statistics are summed over all ranks of the
    default process group (any backend, gloo included; gradients flow through the sum).
    Same parameters and buffers as ``nn.BatchNorm1d`` / ``nn.SyncBatchNorm``."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        rows = x.to(torch.promote_types(x.dtype, torch.float32))
        stats = all_reduce(torch.cat([rows.sum(0), rows.pow(2).sum(0), rows.new_full((1,), rows.size(0))]))
        dim = x.size(1)
        count = stats[-1]
        mean = stats[:dim] / count
        var = (stats[dim: 2 * dim] / count - mean.pow(2)).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        out = (rows - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


class FusedNorm(NamedTuple):
    """What a fused kernel needs to apply a norm row by row (``ops.mega_block.gated_update``)."""

    kind: str  # layernorm | rmsnorm | scalenorm
    weight: Optional[Tensor]  # (D,), or (1,) for scalenorm
    bias: Optional[Tensor]  # (D,) (layernorm)
    eps: float


class SequenceNorm(nn.Module):
    """layernorm | scalenorm | rmsnorm | batchnorm | syncbatchnorm over (L, B, D).

    Batch norms take their statistics over the non-padding positions of the
    time and batch axes only; padding positions come out as zeros. syncbatchnorm
    sums the statistics over all ranks of the process group.
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
            self.norm = SyncedBatchNorm(dim, eps=eps, affine=affine)

    @property
    def is_batch_norm(self) -> bool:
        return self.norm_type in ("batchnorm", "syncbatchnorm")

    def fused(self, dim: int) -> Optional[FusedNorm]:
        """The norm as a fused kernel applies it to rows of width ``dim``, or None when it cannot
        (batch norms take statistics over time and batch; rows wider than MAX_FUSED_NORM_DIM)."""
        if self.is_batch_norm or dim > MAX_FUSED_NORM_DIM:
            return None
        if self.norm_type == "layernorm":
            return FusedNorm("layernorm", self.norm.weight, self.norm.bias, self.norm.eps)
        weight = self.norm.scalar if self.norm_type == "scalenorm" else self.norm.weight
        return FusedNorm(self.norm_type, weight, None, self.norm.eps)

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
