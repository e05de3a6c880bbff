"""Plain PyTorch references of the fused Mega block operations (``ops/mega_block.py``).

Straight from the formulas, differentiable by autograd, computing in the dtype of their inputs
(the tests pass float64). Dropout enters as explicit factors ``keep / (1 - p)`` of the output's
shape (time-major (L, B, W)), e.g. those the kernels draw (``block_common.dropout_scales``), so the
fused ops can be compared with dropout on.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .ref_utils import ACTIVATIONS as BASE_ACTIVATIONS

ACTIVATIONS = dict(BASE_ACTIVATIONS, gelu_accurate=lambda x: 0.5 * x * (
    1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))))


def _drop(x: Tensor, scale: Optional[Tensor]) -> Tensor:
    return x if scale is None else x * scale.to(x.dtype).view_as(x)


def mega_gates_reference(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor,
                         beta: Tensor, activation: str = "silu", value_scale: Optional[Tensor] = None
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """base (L, B, D + Z + H + D), values (L, B, H) -> u, r, hx (time-major), q, k, v (batch-first)."""
    hidden, z_dim = values.size(-1), gamma.size(-1)
    dim = (base.size(-1) - z_dim - hidden) // 2
    u, z, r, hx = torch.split(base + base_bias, [dim, z_dim, hidden, dim], dim=-1)
    z = z * torch.sigmoid(z)
    q, k = z * gamma[0] + beta[0], z * gamma[1] + beta[1]
    v = _drop(ACTIVATIONS[activation](values + value_bias), value_scale)
    return (torch.sigmoid(u), r * torch.sigmoid(r), hx, q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))


def cross_gates_reference(base: Tensor, bias: Tensor, z_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    """base (L, B, 2D + Z) -> u, r (L, B, D), q (B, L, Z)."""
    dim = (base.size(-1) - z_dim) // 2
    u, r, q = torch.split(base + bias, [dim, dim, z_dim], dim=-1)
    return torch.sigmoid(u), r * torch.sigmoid(r), q.transpose(0, 1)


def bias_activation_reference(x: Tensor, bias: Tensor, activation: str = "silu", scale: Optional[Tensor] = None,
                              batch_first: bool = False) -> Tensor:
    """dropout(act(x + bias)), x (L, B, W); (B, L, W) when batch_first."""
    y = _drop(ACTIVATIONS[activation](x + bias), scale)
    return y.transpose(0, 1) if batch_first else y


def reset_product_reference(out: Tensor, r: Tensor) -> Tensor:
    """out (B, L, H), r (L, B, H) -> out^T * r (L, B, H)."""
    return out.transpose(0, 1) * r


def norm_rows_reference(x: Tensor, norm: str, weight: Optional[Tensor], bias: Optional[Tensor],
                        eps: float) -> Tensor:
    """layernorm / rmsnorm / scalenorm (or none) over the last axis."""
    if norm == "none":
        return x
    if norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        x = x * weight
    return x if bias is None else x + bias


def gated_update_reference(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                           norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                           norm: str = "none", eps: float = 1e-5, activation: str = "silu",
                           scale: Optional[Tensor] = None) -> Tensor:
    """norm(residual + u * (dropout(act(h + bias + hx)) - residual)); without u: norm(residual + dropout(...))."""
    a = h + bias if hx is None else h + bias + hx
    d = _drop(ACTIVATIONS[activation](a), scale)
    out = residual + d if u is None else residual + u * (d - residual)
    return norm_rows_reference(out, norm, norm_weight, norm_bias, eps)
