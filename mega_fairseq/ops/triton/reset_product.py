"""The reset-gated attention output in the time-major layout of the output projection (Triton).

    y[t, b] = out[b, t] * r[t, b]        out (B, L, H) attention output, r (L, B, H) reset gate

One launch writes y (L, B, H) contiguous, the layout ``h_proj`` multiplies without a copy, instead
of a transpose copy and a multiplication; the backward gives d out (B, L, H) and d r (L, B, H) in
one launch too.
"""
from typing import Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None

BLOCK_R, BLOCK_C = 32, 64

if triton is not None:

    @triton.jit
    def _offsets(rows, cols, rows_total, batch, H, out_stride_b, out_stride_t):
        """Offsets of a tile of time-major rows in r/y and in the batch-first out, and the mask."""
        mask = (rows[:, None] < rows_total) & (cols[None, :] < H)
        time_major = rows[:, None].to(tl.int64) * H + cols[None, :]
        b = (rows % batch).to(tl.int64)
        t = (rows // batch).to(tl.int64)
        batch_first = (b * out_stride_b + t * out_stride_t)[:, None] + cols[None, :]
        return time_major, batch_first, mask

    @triton.jit(do_not_specialize=["rows_total", "batch"])
    def _reset_product_forward_kernel(out_ptr, r_ptr, y_ptr, rows_total, batch, H, out_stride_b, out_stride_t,
                                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        time_major, batch_first, mask = _offsets(rows, cols, rows_total, batch, H, out_stride_b, out_stride_t)
        out = tl.load(out_ptr + batch_first, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + time_major, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + time_major, (out * r).to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows_total", "batch", "length"])
    def _reset_product_backward_kernel(grad_y_ptr, out_ptr, r_ptr, grad_out_ptr, grad_r_ptr,
                                       rows_total, batch, length, H, out_stride_b, out_stride_t,
                                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        time_major, batch_first, mask = _offsets(rows, cols, rows_total, batch, H, out_stride_b, out_stride_t)
        grad_first = ((rows % batch).to(tl.int64) * length + rows // batch)[:, None] * H + cols[None, :]
        grad = tl.load(grad_y_ptr + time_major, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(out_ptr + batch_first, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + time_major, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_out_ptr + grad_first, (grad * r).to(grad_out_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_r_ptr + time_major, (grad * out).to(grad_r_ptr.dtype.element_ty), mask=mask)


def _grid(rows: int, hidden: int) -> Tuple[int, int]:
    return triton.cdiv(rows, BLOCK_R), triton.cdiv(hidden, BLOCK_C)


def reset_product_forward(out: Tensor, r: Tensor) -> Tensor:
    """out (B, L, H) with unit channel stride, r (L, B, H) contiguous -> y (L, B, H) contiguous in
    the promoted dtype."""
    length, batch, hidden = r.shape
    y = torch.empty(r.shape, device=r.device, dtype=torch.promote_types(out.dtype, r.dtype))
    _reset_product_forward_kernel[_grid(length * batch, hidden)](
        out, r, y, length * batch, batch, hidden, out.stride(0), out.stride(1),
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
    return y


def reset_product_backward(grad_y: Tensor, out: Tensor, r: Tensor) -> Tuple[Tensor, Tensor]:
    """grad_y (L, B, H) contiguous -> gradients of out (B, L, H) contiguous and of r (L, B, H)."""
    length, batch, hidden = r.shape
    grad_out = torch.empty(batch, length, hidden, device=out.device, dtype=out.dtype)
    grad_r = torch.empty_like(r)
    _reset_product_backward_kernel[_grid(length * batch, hidden)](
        grad_y, out, r, grad_out, grad_r, length * batch, batch, length, hidden, out.stride(0), out.stride(1),
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
    return grad_out, grad_r
