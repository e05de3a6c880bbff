"""What the fused Mega block kernels share: activations and their derivatives, dropout from Philox
random numbers, and the column sum that turns per-program partial sums into parameter gradients.

Dropout: every element of a dropped tensor of width W gets the uniform number
``tl.rand(seed * NUM_SITES + site, row * W + col)``, kept when it is >= p and then scaled by
1 / (1 - p); ``row`` is the time-major row t * B + b, or with feature dropout the batch index b
(one mask per batch entry and channel, shared over time). The forward and backward kernels
regenerate the same numbers from the seed, so no mask is stored. The seed is an int64 tensor (1,) on the
kernel's device that the kernels read (``seed_ptr``): drawing it takes no host sync, and a CUDA graph
that replays the kernels reads the seed its replay drew.

Loops with runtime bounds are written as while loops in all these kernels: Triton's interpreter
(the CPU tests) cannot take runtime ``range`` bounds.
"""
from typing import Dict, Optional

import torch
from torch import Tensor

from . import triton_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None

ACTIVATION_CODES: Dict[str, int] = {"linear": 0, "silu": 1, "relu": 2, "gelu": 3, "gelu_accurate": 4, "tanh": 5}
NUM_SITES = 4  # dropout sites per seed (distinct Philox keys)
SEED_RANGE = 2 ** 31 - 1
SUM_BLOCK_P, SUM_BLOCK_W = 64, 64  # tile of the partial-sum reduction (one program per 64 columns)

if triton is not None:
    _NUM_SITES = tl.constexpr(NUM_SITES)

    @triton.jit
    def tanh(x):
        """tanh through the sigmoid (exact limits, no libdevice)."""
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

    @triton.jit
    def activation(x, ACT: tl.constexpr):
        """act(x) for a float32 tile; ACT is a code of ACTIVATION_CODES."""
        if ACT == 1:
            y = x * tl.sigmoid(x)
        elif ACT == 2:
            y = tl.maximum(x, 0.0)
        elif ACT == 3:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        elif ACT == 4:
            y = 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
        elif ACT == 5:
            y = tanh(x)
        else:
            y = x
        return y

    @triton.jit
    def activation_grad(x, ACT: tl.constexpr):
        """d act / dx at x (float32 tile), as PyTorch's backward formulas."""
        if ACT == 1:
            s = tl.sigmoid(x)
            g = s * (1.0 + x * (1.0 - s))
        elif ACT == 2:
            g = tl.where(x > 0.0, 1.0, 0.0)
        elif ACT == 3:
            g = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
        elif ACT == 4:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            t = tanh(inner)
            g = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x)
        elif ACT == 5:
            t = tanh(x)
            g = 1.0 - t * t
        else:
            g = x * 0.0 + 1.0
        return g

    @triton.jit
    def dropout_scale(seed_ptr, SITE: tl.constexpr, rows, cols, width, batch, p, FEATURE: tl.constexpr):
        """keep / (1 - p) (float32) for the tile of time-major rows (R,) x columns (C,) of a tensor
        of ``width`` columns; with FEATURE one mask per batch entry b = row % batch and column."""
        if FEATURE:
            mask_rows = rows % batch
        else:
            mask_rows = rows
        offsets = mask_rows[:, None].to(tl.int64) * width + cols[None, :]
        key = tl.load(seed_ptr).to(tl.int64) * _NUM_SITES + SITE
        keep = tl.rand(key, offsets) >= p
        return tl.where(keep, 1.0 / (1.0 - p), 0.0)

    @triton.jit(do_not_specialize=["programs"])
    def _column_sum_kernel(partials_ptr, out_ptr, programs, width,
                           BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
        """out[c] = sum over p of partials[p, c], float32 sums stored in out's dtype."""
        cols = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
        col_mask = cols < width
        total = tl.zeros((BLOCK_W,), tl.float32)
        start = 0
        while start < programs:
            prog = start + tl.arange(0, BLOCK_P)
            mask = (prog[:, None] < programs) & col_mask[None, :]
            tile = tl.load(partials_ptr + prog[:, None].to(tl.int64) * width + cols[None, :], mask=mask, other=0.0)
            total += tl.sum(tile, axis=0)
            start += BLOCK_P
        tl.store(out_ptr + cols, total.to(out_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit(do_not_specialize=["rows", "batch"])
    def _dropout_scale_kernel(out_ptr, rows, width, batch, seed_ptr, p, SITE: tl.constexpr, FEATURE: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (r[:, None] < rows) & (c[None, :] < width)
        scale = dropout_scale(seed_ptr, SITE, r, c, width, batch, p, FEATURE)
        tl.store(out_ptr + r[:, None].to(tl.int64) * width + c[None, :], scale, mask=mask)


def activation_code(name: str) -> int:
    if name not in ACTIVATION_CODES:
        raise ValueError(f"the fused Mega block has no activation {name!r}; known: {', '.join(ACTIVATION_CODES)}")
    return ACTIVATION_CODES[name]


def column_sums(partials: Tensor, dtype: torch.dtype) -> Tensor:
    """(P, W) float32 partial sums -> (W,) sums over P in ``dtype`` (one launch)."""
    programs, width = partials.shape
    out = torch.empty(width, device=partials.device, dtype=dtype)
    _column_sum_kernel[(triton.cdiv(width, SUM_BLOCK_W),)](
        partials, out, programs, width, BLOCK_P=SUM_BLOCK_P, BLOCK_W=SUM_BLOCK_W, num_warps=4)
    return out


def draw_seed(device: torch.device) -> Tensor:
    """One dropout seed: an int64 tensor (1,) on ``device`` from torch's generator for that device."""
    return torch.randint(SEED_RANGE, (1,), dtype=torch.int64, device=device)


def dropout_scales(rows: int, width: int, batch: int, seed: Tensor, p: float, site: int, feature: bool,
                   device: Optional[torch.device] = None) -> Tensor:
    """The (rows, width) float32 factors keep / (1 - p) that the kernels apply at dropout ``site``
    with ``seed`` (for tests and debugging: the kernels never store them)."""
    if not triton_available():
        raise RuntimeError("dropout_scales needs triton")
    out = torch.empty(rows, width, device=device, dtype=torch.float32)
    _dropout_scale_kernel[(triton.cdiv(rows, 16), triton.cdiv(width, 64))](
        out, rows, width, batch, seed, p, SITE=site, FEATURE=feature, BLOCK_R=16, BLOCK_C=64)
    return out
