"""Relative position biases as ``nn.Module``s holding their parameters (docs/math.md, section 2).

Both return a (Lq, Lk) matrix ``bias[i, j]`` for query positions ``offset .. offset + Lq - 1`` and
key positions ``0 .. Lk - 1``, computed by ``ops.position_bias``; ``relative_vector`` gives the same
values per distance, ``bias[i, j] = vector[P - 1 + j - i]`` (the fused attention kernel reads it).
"""
import torch
from torch import Tensor, nn

from ..ops.position_bias import rotary_position_bias, rotary_relative_vector, simple_position_bias
from ..options import MegaConfigError


class RelativePositionBias(nn.Module):
    """Base: positions must stay below ``max_positions`` (chunk size, or the model's max positions);
    ``limit_option`` is the command-line flag that raises the limit, named in the error."""

    def __init__(self, max_positions: int, limit_option: str = "--max-positions"):
        super().__init__()
        if max_positions <= 0:
            raise MegaConfigError(f"relative position bias needs max_positions > 0, got {max_positions}")
        self.max_positions = max_positions
        self.limit_option = limit_option

    def check_span(self, query_length: int, key_length: int, offset: int) -> None:
        longest = max(offset + query_length, key_length)
        if longest > self.max_positions:
            raise ValueError(
                f"sequence of {longest} positions is longer than the {self.max_positions} positions the relative "
                f"position bias covers (raise {self.limit_option}, or use a chunk size)")

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}"


class SimpleRelativePositionBias(RelativePositionBias):
    """One learned scalar per relative distance: ``bias[i, j] = w[P - 1 + j - i]``, w of size 2P - 1."""

    def __init__(self, max_positions: int, limit_option: str = "--max-positions"):
        super().__init__(max_positions, limit_option)
        self.weight = nn.Parameter(torch.empty(2 * max_positions - 1))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        self.check_span(query_length, key_length, offset)
        return simple_position_bias(self.weight, query_length, key_length, offset)

    def relative_vector(self, span: int) -> Tensor:
        """(2P - 1,) with bias[i, j] = vector[P - 1 + j - i], for positions below ``span`` (checked)."""
        self.check_span(span, span, 0)
        return self.weight


class RotaryRelativePositionBias(RelativePositionBias):
    """``bias[i, j] = rot(alpha, i) . rot(beta, j)`` with rotary sin/cos tables (base 10000, halves of Z)."""

    def __init__(self, z_dim: int, max_positions: int, limit_option: str = "--max-positions"):
        super().__init__(max_positions, limit_option)
        if z_dim % 2 != 0:
            raise MegaConfigError(f"rotary position bias needs an even z-dim, got {z_dim}")
        self.z_dim = z_dim
        self.alpha = nn.Parameter(torch.empty(1, z_dim))
        self.beta = nn.Parameter(torch.empty(1, z_dim))
        nn.init.normal_(self.alpha, mean=0.0, std=0.02)
        nn.init.normal_(self.beta, mean=0.0, std=0.02)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        self.check_span(query_length, key_length, offset)
        return rotary_position_bias(self.alpha, self.beta, query_length, key_length, offset)

    def relative_vector(self, span: int) -> Tensor:
        """(2P - 1,) with bias[i, j] = vector[P - 1 + j - i], for positions below ``span`` (checked)."""
        self.check_span(span, span, 0)
        return rotary_relative_vector(self.alpha, self.beta, self.max_positions)


def build_position_bias(kind: str, z_dim: int, max_positions: int,
                        limit_option: str = "--max-positions") -> RelativePositionBias:
    if kind == "simple":
        return SimpleRelativePositionBias(max_positions, limit_option)
    if kind == "rotary":
        return RotaryRelativePositionBias(z_dim, max_positions, limit_option)
    raise MegaConfigError(f"unknown value {kind!r} for --rel-pos-bias; choose one of simple, rotary")
