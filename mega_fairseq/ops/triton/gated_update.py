"""The gated update (or residual sum) of a sub-layer and its post-norm in one kernel (Triton).

Per time-major row of width D (``h`` the output projection without its bias)::

    a = h + bias (+ hx)                    hx: the Mega block's base-projection slice
    d = dropout(act(a))
    o = residual + u * (d - residual)      gated (Mega block, cross-attention)
    o = residual + d                       not gated (feed-forward network: act = linear)
    out = norm(o)                          layernorm / rmsnorm / scalenorm, or none

One program holds whole rows (D <= MAX_FUSED_NORM_DIM), so the norm statistics come with the
update; the forward saves only mean and 1/std per row (float32). It can also store a copy of out in
another dtype (the input of the next sub-layer's projection under autocast), whose gradient the
backward adds to that of out. The backward recomputes a, d and o
from the inputs (the dropout mask from the seed) and gives the gradients of h (= of hx), u and the
residual, plus per-program partial sums of the bias, norm weight and norm bias gradients, which one
column-sum launch reduces.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .block_common import column_sums

try:
    import triton
    import triton.language as tl

    from .block_common import activation, activation_grad, dropout_scale
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None

NORM_CODES = {"none": 0, "layernorm": 1, "rmsnorm": 2, "scalenorm": 3}
MAX_FUSED_NORM_DIM = 8192  # widest row one program normalizes
TILE_ELEMENTS = 2048  # rows per program = TILE_ELEMENTS / next_power_of_2(D), at most MAX_ROWS (tune_kernels.py)
MAX_ROWS = 32
BACKWARD_TILE_ELEMENTS = 4096  # the same for a backward program's tiles
BACKWARD_PROGRAMS = 512  # programs of a backward launch (each loops over its row tiles): ~4 per SM
BACKWARD_WARPS = 4  # warps of a backward program (rows narrower than 4,096)
BACKWARD_STAGES = 2  # software-pipeline stages of the backward's row loop (1: none)
UPDATE_DROPOUT_SITE = 1

if triton is not None:

    @triton.jit
    def _update_rows(h_ptr, bias_ptr, hx_ptr, u_ptr, res_ptr, offsets, mask, cols, D, rows, batch, seed_ptr, p,
                     ACT: tl.constexpr, HAS_HX: tl.constexpr, GATED: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr):
        """a, the dropout factor, d, u, residual and o (float32 tiles) of a row tile."""
        bias = tl.load(bias_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        a = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        if HAS_HX:
            a += tl.load(hx_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        d = activation(a, ACT)
        scale = tl.full(a.shape, 1.0, tl.float32)
        if HAS_DROPOUT:
            scale = dropout_scale(seed_ptr, 1, rows, cols, D, batch, p, FEATURE)
            d = d * scale
        res = tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        u = tl.full(a.shape, 1.0, tl.float32)
        if GATED:
            u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            o = res + u * (d - res)
        else:
            o = res + d
        return a, scale, d, u, res, o

    @triton.jit(do_not_specialize=["rows_total", "batch"])
    def _gated_update_forward_kernel(
        h_ptr, bias_ptr, hx_ptr, u_ptr, res_ptr, weight_ptr, norm_bias_ptr, out_ptr, copy_ptr, stats_ptr,
        rows_total, batch, D, eps, seed_ptr, p,
        ACT: tl.constexpr, HAS_HX: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr,
        HAS_WEIGHT: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr,
        STORE_COPY: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """stats: (rows, 2) float32 mean and 1/std of o (mean 0 for rmsnorm and scalenorm); copy: out in
        copy_ptr's dtype (STORE_COPY)."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        mask = (rows[:, None] < rows_total) & col_mask[None, :]
        offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
        _, _, _, _, _, o = _update_rows(h_ptr, bias_ptr, hx_ptr, u_ptr, res_ptr, offsets, mask, cols, D, rows,
                                        batch, seed_ptr, p, ACT, HAS_HX, GATED, HAS_DROPOUT, FEATURE)
        if NORM != 0:
            if NORM == 1:
                mean = tl.sum(o, axis=1) / D
                centered = tl.where(mask, o - mean[:, None], 0.0)
            else:
                mean = tl.zeros((ROWS,), tl.float32)
                centered = o
            rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / D + eps)
            o = centered * rstd[:, None]
            if HAS_WEIGHT:
                if NORM == 3:
                    o = o * tl.load(weight_ptr).to(tl.float32)
                else:
                    o = o * tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_NORM_BIAS:
                o = o + tl.load(norm_bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            row_mask = rows < rows_total
            tl.store(stats_ptr + rows.to(tl.int64) * 2, mean, mask=row_mask)
            tl.store(stats_ptr + rows.to(tl.int64) * 2 + 1, rstd, mask=row_mask)
        tl.store(out_ptr + offsets, o.to(out_ptr.dtype.element_ty), mask=mask)
        if STORE_COPY:
            tl.store(copy_ptr + offsets, o.to(copy_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows_total", "programs", "batch"])
    def _gated_update_backward_kernel(
        grad_out_ptr, grad_copy_ptr, h_ptr, bias_ptr, hx_ptr, u_ptr, res_ptr, weight_ptr, stats_ptr,
        grad_h_ptr, grad_u_ptr, grad_res_ptr, partials_ptr,
        rows_total, programs, batch, D, partial_width, seed_ptr, p,
        ACT: tl.constexpr, HAS_HX: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr,
        HAS_WEIGHT: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr,
        HAS_COPY_GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
    ):
        """Partials row (one per program): [bias (D) | norm weight (D, or 1 for scalenorm) | norm bias (D)],
        the norm parts only when the norm has them. The output's gradient is grad_out (+ grad_copy:
        HAS_COPY_GRAD)."""
        program = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        bias_sum = tl.zeros((BLOCK_D,), tl.float32)
        weight_sum = tl.zeros((BLOCK_D,), tl.float32)
        norm_bias_sum = tl.zeros((BLOCK_D,), tl.float32)
        weight = tl.full((BLOCK_D,), 1.0, tl.float32)
        if HAS_WEIGHT:
            if NORM == 3:
                weight = weight * tl.load(weight_ptr).to(tl.float32)
            else:
                weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        for start in tl.range(program * ROWS, rows_total, programs * ROWS, num_stages=STAGES):
            rows = start + tl.arange(0, ROWS)
            row_mask = rows < rows_total
            mask = row_mask[:, None] & col_mask[None, :]
            offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
            a, scale, d, u, res, o = _update_rows(h_ptr, bias_ptr, hx_ptr, u_ptr, res_ptr, offsets, mask, cols, D,
                                                  rows, batch, seed_ptr, p, ACT, HAS_HX, GATED, HAS_DROPOUT, FEATURE)
            grad = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_COPY_GRAD:
                grad += tl.load(grad_copy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if NORM != 0:
                mean = tl.load(stats_ptr + rows.to(tl.int64) * 2, mask=row_mask, other=0.0)
                rstd = tl.load(stats_ptr + rows.to(tl.int64) * 2 + 1, mask=row_mask, other=0.0)
                normed = tl.where(mask, (o - mean[:, None]) * rstd[:, None], 0.0)
                weight_sum += tl.sum(grad * normed, axis=0)
                norm_bias_sum += tl.sum(grad, axis=0)
                grad_normed = grad * weight[None, :]
                projection = tl.sum(grad_normed * normed, axis=1) / D
                grad = grad_normed - normed * projection[:, None]
                if NORM == 1:
                    grad = grad - (tl.sum(grad_normed, axis=1) / D)[:, None]
                grad = tl.where(mask, grad * rstd[:, None], 0.0)
            if GATED:
                grad_d = grad * u
                tl.store(grad_u_ptr + offsets, (grad * (d - res)).to(grad_u_ptr.dtype.element_ty), mask=mask)
                tl.store(grad_res_ptr + offsets, (grad * (1.0 - u)).to(grad_res_ptr.dtype.element_ty), mask=mask)
            else:
                grad_d = grad
                tl.store(grad_res_ptr + offsets, grad.to(grad_res_ptr.dtype.element_ty), mask=mask)
            grad_a = grad_d * scale * activation_grad(a, ACT)
            tl.store(grad_h_ptr + offsets, grad_a.to(grad_h_ptr.dtype.element_ty), mask=mask)
            bias_sum += tl.sum(grad_a, axis=0)
        partials_ptr += program.to(tl.int64) * partial_width
        tl.store(partials_ptr + cols, bias_sum, mask=col_mask)
        if HAS_WEIGHT:
            if NORM == 3:
                tl.store(partials_ptr + D, tl.sum(weight_sum, axis=0))
            else:
                tl.store(partials_ptr + D + cols, weight_sum, mask=col_mask)
        if HAS_NORM_BIAS:
            tl.store(partials_ptr + 2 * D + cols, norm_bias_sum, mask=col_mask)


def _tile_rows(dim: int, elements: int) -> Tuple[int, int]:
    """Rows of a program's tile of ``elements`` and the tile's width (D to a power of two)."""
    block = triton.next_power_of_2(dim)
    return max(1, min(MAX_ROWS, elements // block)), block


def _num_warps(block: int) -> int:
    return 8 if block >= 4096 else 4


def norm_weight_width(norm: int, dim: int, has_weight: bool) -> int:
    """Entries of the norm weight: D, 1 (scalenorm) or 0 (no weight)."""
    if not has_weight or norm == 0:
        return 0
    return 1 if norm == NORM_CODES["scalenorm"] else dim


def output_dtype(h: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor) -> torch.dtype:
    """The dtype of the update's output: that of its inputs promoted."""
    dtype = torch.promote_types(h.dtype, residual.dtype)
    for other in (hx, u):
        if other is not None:
            dtype = torch.promote_types(dtype, other.dtype)
    return dtype


def gated_update_forward(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                         weight: Optional[Tensor], norm_bias: Optional[Tensor], norm: int, eps: float,
                         activation: int, p: float, feature: bool, seed: Tensor,
                         copy_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """h, hx, u, residual (L, B, D) contiguous; bias (D,); weight (D,) or (1,) for scalenorm; norm_bias
    (D,). Returns the output (L, B, D) in the promoted dtype of the inputs, the (rows, 2) float32
    norm statistics (empty without a norm) and, with copy_dtype, the output in that dtype (else None)."""
    length, batch, dim = residual.shape
    rows = length * batch
    out = torch.empty(residual.shape, device=residual.device, dtype=output_dtype(h, hx, u, residual))
    copy = None if copy_dtype is None else torch.empty(residual.shape, device=residual.device, dtype=copy_dtype)
    stats = torch.empty(rows if norm else 0, 2, device=residual.device, dtype=torch.float32)
    tile_rows, block = _tile_rows(dim, TILE_ELEMENTS)
    _gated_update_forward_kernel[(triton.cdiv(rows, tile_rows),)](
        h, bias, h if hx is None else hx, h if u is None else u, residual,
        bias if weight is None else weight, bias if norm_bias is None else norm_bias, out,
        out if copy is None else copy, stats, rows, batch, dim, eps, seed, p,
        ACT=activation, HAS_HX=hx is not None, GATED=u is not None, NORM=norm, HAS_WEIGHT=weight is not None,
        HAS_NORM_BIAS=norm_bias is not None, HAS_DROPOUT=p > 0.0, FEATURE=feature, STORE_COPY=copy is not None,
        ROWS=tile_rows, BLOCK_D=block, num_warps=_num_warps(block))
    return out, stats, copy


def gated_update_backward(grad_out: Optional[Tensor], h: Tensor, bias: Tensor, hx: Optional[Tensor],
                          u: Optional[Tensor], residual: Tensor, weight: Optional[Tensor], has_norm_bias: bool,
                          stats: Tensor, norm: int, activation: int, p: float, feature: bool, seed: Tensor,
                          param_dtype: torch.dtype, grad_copy: Optional[Tensor] = None
                          ) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """Gradients of h (also that of hx), u (None when not gated) and the residual, and the
    parameter gradients packed as [bias (D) | norm weight (D or 1) | norm bias (D)] in param_dtype.
    grad_out and grad_copy (that of the output's copy), contiguous, either None but not both."""
    if has_norm_bias and (weight is None or norm != NORM_CODES["layernorm"]):
        raise ValueError("a fused norm bias needs a layernorm with a weight")
    if grad_out is None:
        grad_out, grad_copy = grad_copy, None
    if grad_out is None:
        raise ValueError("the gated update's backward needs the gradient of its output or of its copy")
    length, batch, dim = residual.shape
    rows = length * batch
    grad_h = torch.empty_like(h)
    grad_u = torch.empty_like(u) if u is not None else None
    grad_res = torch.empty_like(residual)
    tile_rows, block = _tile_rows(dim, BACKWARD_TILE_ELEMENTS)
    programs = max(1, min(BACKWARD_PROGRAMS, triton.cdiv(rows, tile_rows)))
    width = dim + norm_weight_width(norm, dim, weight is not None) + (dim if has_norm_bias else 0)
    partials = torch.empty(programs, width, device=h.device, dtype=torch.float32)
    _gated_update_backward_kernel[(programs,)](
        grad_out, grad_out if grad_copy is None else grad_copy, h, bias, h if hx is None else hx,
        h if u is None else u, residual, bias if weight is None else weight, stats, grad_h,
        grad_res if grad_u is None else grad_u, grad_res, partials, rows, programs, batch, dim, width, seed, p,
        ACT=activation, HAS_HX=hx is not None, GATED=u is not None, NORM=norm, HAS_WEIGHT=weight is not None,
        HAS_NORM_BIAS=has_norm_bias, HAS_DROPOUT=p > 0.0, FEATURE=feature, HAS_COPY_GRAD=grad_copy is not None,
        ROWS=tile_rows, BLOCK_D=block, STAGES=BACKWARD_STAGES, num_warps=max(BACKWARD_WARPS, _num_warps(block)))
    return grad_h, grad_u, grad_res, column_sums(partials, param_dtype)
