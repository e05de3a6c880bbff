"""Bias, activation and dropout after a bias-free projection, in one kernel (Triton).

    y = dropout(act(x + bias))      x (L, B, W) time-major; y (L, B, W), or (B, L, W) batch-first

The feed-forward network's ``fc1`` (y time-major, for ``fc2``) and the cross-attention's values
(batch-first, for the attention). The backward regenerates the dropout mask from the seed and gives
the gradient of x and per-program partial sums of the bias gradient, reduced by one more launch.
"""
from typing import Tuple

import torch
from torch import Tensor

from .block_common import column_sums

try:
    import triton
    import triton.language as tl

    from .block_common import activation, activation_grad, dropout_scale
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None

BLOCK_R, BLOCK_C = 32, 64
BACKWARD_ROW_PROGRAMS = 64
BACKWARD_STAGES = 1  # software-pipeline stages of the backward's row loop (1: none)
DROPOUT_SITE = 0

if triton is not None:

    @triton.jit
    def _tile(rows, cols, rows_total, batch, length, W, BATCH_FIRST: tl.constexpr):
        """Offsets of the time-major input tile and of the output tile, the mask, the bias offsets."""
        mask = (rows[:, None] < rows_total) & (cols[None, :] < W)
        time_major = rows[:, None].to(tl.int64) * W + cols[None, :]
        if BATCH_FIRST:
            out = ((rows % batch).to(tl.int64) * length + rows // batch)[:, None] * W + cols[None, :]
        else:
            out = time_major
        return time_major, out, mask

    @triton.jit(do_not_specialize=["rows_total", "batch", "length"])
    def _bias_activation_forward_kernel(
        x_ptr, bias_ptr, y_ptr, rows_total, batch, length, W, seed_ptr, p,
        ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr, BATCH_FIRST: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        at, out, mask = _tile(rows, cols, rows_total, batch, length, W, BATCH_FIRST)
        bias = tl.load(bias_ptr + cols, mask=cols < W, other=0.0).to(tl.float32)
        y = activation(tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32) + bias[None, :], ACT)
        if HAS_DROPOUT:
            y = y * dropout_scale(seed_ptr, 0, rows, cols, W, batch, p, FEATURE)
        tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows_total", "row_programs", "batch", "length"])
    def _bias_activation_backward_kernel(
        grad_y_ptr, x_ptr, bias_ptr, grad_x_ptr, partials_ptr, rows_total, row_programs, batch, length, W, seed_ptr, p,
        ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr, BATCH_FIRST: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
    ):
        """Partials row (one per row program): the bias gradient (W)."""
        row_program = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        bias = tl.load(bias_ptr + cols, mask=cols < W, other=0.0).to(tl.float32)
        bias_sum = tl.zeros((BLOCK_C,), tl.float32)
        for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R, num_stages=STAGES):
            rows = start + tl.arange(0, BLOCK_R)
            at, out, mask = _tile(rows, cols, rows_total, batch, length, W, BATCH_FIRST)
            x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
            grad = tl.load(grad_y_ptr + out, mask=mask, other=0.0).to(tl.float32) * activation_grad(x, ACT)
            if HAS_DROPOUT:
                grad = grad * dropout_scale(seed_ptr, 0, rows, cols, W, batch, p, FEATURE)
            grad = tl.where(mask, grad, 0.0)
            tl.store(grad_x_ptr + at, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)
            bias_sum += tl.sum(grad, axis=0)
        tl.store(partials_ptr + row_program.to(tl.int64) * W + cols, bias_sum, mask=cols < W)


def bias_activation_forward(x: Tensor, bias: Tensor, activation: int, p: float, feature: bool, seed: Tensor,
                            batch_first: bool) -> Tensor:
    """x (L, B, W) contiguous, bias (W,) -> dropout(act(x + bias)) in x's dtype, (L, B, W) or (B, L, W)."""
    length, batch, width = x.shape
    rows = length * batch
    y = x.new_empty((batch, length, width) if batch_first else (length, batch, width))
    _bias_activation_forward_kernel[(triton.cdiv(rows, BLOCK_R), triton.cdiv(width, BLOCK_C))](
        x, bias, y, rows, batch, length, width, seed, p,
        ACT=activation, HAS_DROPOUT=p > 0.0, FEATURE=feature, BATCH_FIRST=batch_first,
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
    return y


def bias_activation_backward(grad_y: Tensor, x: Tensor, bias: Tensor, activation: int, p: float, feature: bool,
                             seed: Tensor, batch_first: bool, param_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """grad_y contiguous in y's layout -> gradient of x (L, B, W) and of the bias (W,) in param_dtype."""
    length, batch, width = x.shape
    rows = length * batch
    grad_x = torch.empty_like(x)
    row_programs = max(1, min(BACKWARD_ROW_PROGRAMS, triton.cdiv(rows, BLOCK_R)))
    partials = torch.empty(row_programs, width, device=x.device, dtype=torch.float32)
    _bias_activation_backward_kernel[(row_programs, triton.cdiv(width, BLOCK_C))](
        grad_y, x, bias, grad_x, partials, rows, row_programs, batch, length, width, seed, p,
        ACT=activation, HAS_DROPOUT=p > 0.0, FEATURE=feature, BATCH_FIRST=batch_first,
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, STAGES=BACKWARD_STAGES, num_warps=4)
    return grad_x, column_sums(partials, param_dtype)
