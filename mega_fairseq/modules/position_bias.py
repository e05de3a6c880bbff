"""Relative position biases added to the attention scores (spec, section 2).

Both return a (Lq, Lk) matrix ``bias[i, j]`` for query positions
``offset .. offset + Lq - 1`` and key positions ``0 .. Lk - 1``.
"""
import math

import torch
from torch import Tensor, nn

from .config import MegaConfigError


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
        # query position p reads the window w[P - 1 - p : P - 1 - p + Lk]; unfold lists the windows by
        # increasing start, so the last query's comes first
        last_query_start = self.max_positions - offset - query_length
        windows = self.weight.unfold(0, key_length, 1)[last_query_start: last_query_start + query_length]
        return windows.flip(0)


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

    def rotate(self, vector: Tensor, start: int, length: int) -> Tensor:
        """vector (1, Z) -> (length, Z): the vector rotated to positions start .. start + length - 1."""
        half = self.z_dim // 2
        dtype = torch.promote_types(vector.dtype, torch.float32)
        frequencies = torch.exp(torch.arange(half, device=vector.device, dtype=dtype) * (-math.log(10000.0) / half))
        positions = torch.arange(start, start + length, device=vector.device, dtype=dtype)
        angles = positions.unsqueeze(1) * frequencies.unsqueeze(0)
        sin, cos = torch.sin(angles).to(vector.dtype), torch.cos(angles).to(vector.dtype)
        first, second = vector.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        self.check_span(query_length, key_length, offset)
        return self.rotate(self.alpha, offset, query_length) @ self.rotate(self.beta, 0, key_length).t()


def build_position_bias(kind: str, z_dim: int, max_positions: int,
                        limit_option: str = "--max-positions") -> RelativePositionBias:
    if kind == "simple":
        return SimpleRelativePositionBias(max_positions, limit_option)
    if kind == "rotary":
        return RotaryRelativePositionBias(z_dim, max_positions, limit_option)
    raise MegaConfigError(f"unknown value {kind!r} for --rel-pos-bias; choose one of simple, rotary")
