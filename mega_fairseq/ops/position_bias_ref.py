"""Relative position biases entry by entry, in float64 (docs/math.md, section 2)."""
import torch

from .ref_utils import DTYPE, f64


def simple_bias_reference(weight, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """weight (2P - 1,) -> (Lq, Lk) with bias[i, j] = w[P - 1 + j - (offset + i)]."""
    weight = f64(weight)
    positions = (weight.numel() + 1) // 2
    bias = torch.empty(query_length, key_length, dtype=DTYPE)
    for i in range(query_length):
        for j in range(key_length):
            bias[i, j] = weight[positions - 1 + j - (offset + i)]
    return bias


def rotary_tables(length: int, z_dim: int):
    """sin, cos (length, Z/2) in float64: angle[m, k] = m * 10000^(-k / (Z/2))."""
    half = z_dim // 2
    angles = [[m * 10000.0 ** (-k / half) for k in range(half)] for m in range(length)]
    angles = torch.tensor(angles, dtype=DTYPE).reshape(length, half)
    return torch.sin(angles), torch.cos(angles)


def rotate_reference(vector, position: int, sin, cos) -> torch.Tensor:
    """vector (Z,) rotated to ``position``: halves (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = vector.numel() // 2
    first, second = vector[:half], vector[half:]
    return torch.cat([first * cos[position] - second * sin[position],
                      second * cos[position] + first * sin[position]])


def rotary_bias_reference(alpha, beta, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """alpha, beta (1, Z) -> (Lq, Lk) with bias[i, j] = rot(alpha, offset + i) . rot(beta, j)."""
    alpha, beta = f64(alpha).reshape(-1), f64(beta).reshape(-1)
    sin, cos = rotary_tables(max(offset + query_length, key_length), alpha.numel())
    bias = torch.empty(query_length, key_length, dtype=DTYPE)
    for i in range(query_length):
        a = rotate_reference(alpha, offset + i, sin, cos)
        for j in range(key_length):
            bias[i, j] = a @ rotate_reference(beta, j, sin, cos)
    return bias
