"""Relative position biases added to the attention scores (docs/math.md, section 2).

Both return a (Lq, Lk) matrix ``bias[i, j]`` for query positions ``offset .. offset + Lq - 1`` and
key positions ``0 .. Lk - 1``; ``ops.position_bias_ref`` computes the same entry by entry. Both depend
on j - i only: ``rotary_relative_vector`` gives the rotary bias as one value per distance, the form the
fused attention kernel reads (the simple bias's weight already is).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest block of bias rows flipped in one kernel: PyTorch's flip of an overlapping (unfolded) view
# makes an illegal memory access on CUDA once the output reaches 4 GiB (seen at 32k x 32k float32).
FLIP_BLOCK_ELEMENTS = 1 << 26


def simple_position_bias(weight: Tensor, query_length: int, key_length: int, offset: int = 0) -> Tensor:
    """weight (2P - 1,) -> (Lq, Lk) with ``bias[i, j] = w[P - 1 + j - (offset + i)]``.

    Query position p reads the window w[P - 1 - p : P - 1 - p + Lk]. ``unfold`` lists the windows by
    increasing start, so the queries come out last first and the rows are flipped; large matrices
    are flipped in row blocks of at most FLIP_BLOCK_ELEMENTS entries, written into one output. Under
    torch.compile the matrix is skewed out of the vector instead (``unfold`` fixes the lengths)."""
    positions = (weight.numel() + 1) // 2
    last_query_start = positions - offset - query_length
    if torch.compiler.is_compiling():
        return _skewed_bias(weight[last_query_start: last_query_start + query_length + key_length - 1],
                            query_length, key_length)
    windows = weight.unfold(0, key_length, 1)[last_query_start: last_query_start + query_length]
    if query_length * key_length <= FLIP_BLOCK_ELEMENTS:
        return windows.flip(0)
    bias = weight.new_empty(query_length, key_length)
    rows = max(1, FLIP_BLOCK_ELEMENTS // key_length)
    for start in range(0, query_length, rows):
        stop = min(start + rows, query_length)
        bias[start:stop] = windows[query_length - stop: query_length - start].flip(0)
    return bias


def _skewed_bias(window: Tensor, query_length: int, key_length: int) -> Tensor:
    """window (Lq + Lk - 1,) -> (Lq, Lk) with ``bias[i, j] = window[Lq - 1 - i + j]``: the padded window
    repeated Lq times and read back with a row stride one shorter (views and one copy; dynamic shapes)."""
    width = query_length + key_length
    repeated = F.pad(window, (0, 1)).expand(query_length, width).reshape(-1)
    rows = repeated[query_length - 1: query_length - 1 + query_length * (width - 1)].view(query_length, width - 1)
    return rows[:, :key_length]


def rotate(vector: Tensor, positions: Tensor) -> Tensor:
    """vector (1, Z) -> (len(positions), Z): the vector rotated to each position (rotary sin/cos tables,
    base 10000, halves of Z); positions (M,) integer tensor."""
    half = vector.size(-1) // 2
    dtype = torch.promote_types(vector.dtype, torch.float32)
    frequencies = torch.exp(torch.arange(half, device=vector.device, dtype=dtype) * (-math.log(10000.0) / half))
    angles = positions.to(dtype).unsqueeze(1) * frequencies.unsqueeze(0)
    sin, cos = torch.sin(angles).to(vector.dtype), torch.cos(angles).to(vector.dtype)
    first, second = vector.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def rotary_position_bias(alpha: Tensor, beta: Tensor, query_length: int, key_length: int, offset: int = 0) -> Tensor:
    """alpha, beta (1, Z) -> (Lq, Lk) with ``bias[i, j] = rot(alpha, offset + i) . rot(beta, j)``."""
    queries = torch.arange(offset, offset + query_length, device=alpha.device)
    return rotate(alpha, queries) @ rotate(beta, torch.arange(key_length, device=beta.device)).t()


def rotary_relative_vector(alpha: Tensor, beta: Tensor, positions: int) -> Tensor:
    """alpha, beta (1, Z) -> (2P - 1,) with ``vector[P - 1 + d] = bias[i, i + d]`` of rotary_position_bias for
    every i: rot(a, i) . rot(b, i + d) = sum_k (a1 b1 + a2 b2) cos(d f_k) + (a2 b1 - a1 b2) sin(d f_k), with
    (a1, a2), (b1, b2) the halves and f_k the frequencies. The angles d f_k are taken in float64, exact to the
    parameters' precision at any distance (float32 angles are off by up to 4e-3 rad at 64k positions)."""
    half = alpha.size(-1) // 2
    frequencies = torch.exp(torch.arange(half, device=alpha.device, dtype=torch.float64) * (-math.log(10000.0) / half))
    distances = torch.arange(1 - positions, positions, device=alpha.device, dtype=torch.float64)
    angles = distances.unsqueeze(1) * frequencies
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    (a1, a2), (b1, b2) = alpha.to(dtype).chunk(2, dim=-1), beta.to(dtype).chunk(2, dim=-1)
    cosine_weight, sine_weight = (a1 * b1 + a2 * b2).t(), (a2 * b1 - a1 * b2).t()
    return (angles.cos().to(dtype) @ cosine_weight + angles.sin().to(dtype) @ sine_weight).squeeze(1)
