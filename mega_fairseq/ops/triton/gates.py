"""Gate kernels of the Mega block and of the gated cross-attention (Triton, forward and backward).

Mega block: from the base projection ``base = mx_proj(mx)`` without its bias, (L, B, E) with
E = D + Z + H + D, and the value projection ``values = v_proj(x)`` without its bias, (L, B, H)::

    u  = sigmoid(base_u + b_u)                      (L, B, D)   update gate
    z  = silu(base_z + b_z);  q = z * gamma[0] + beta[0],  k = z * gamma[1] + beta[1]   (B, L, Z)
    r  = silu(base_r + b_r)                         (L, B, H)   reset gate
    hx = base_h + b_h                               (L, B, D)
    v  = dropout(act(values + b_v))                 (B, L, H)

Cross-attention: from ``base = q_proj(x)`` without its bias, (L, B, 2D + Z)::

    u = sigmoid(base_u + b_u) (L, B, D);  r = silu(base_r + b_r) (L, B, D);  q = base_q + b_q (B, L, Z)

Queries, keys and values come out batch-first, as the attention takes them. One launch each way:
programs tile (rows of the time-major (L * B) order) x (column blocks of every output segment).
The backward kernels write the gradient of ``base`` in one (L, B, E) buffer (and of ``values``),
and per-program partial sums of the bias, gamma and beta gradients, which one column-sum launch
reduces (``block_common.column_sums``).
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

BLOCK_R, BLOCK_C = 32, 64  # tile of a forward program: time-major rows x channels
BACKWARD_BLOCK_R, BACKWARD_BLOCK_C = 64, 128  # tile of a backward program (benchmarks/kernels/tune_kernels.py)
BACKWARD_ROW_PROGRAMS = 64  # row programs of a backward launch (each loops over its row tiles)
# warps of a backward program: with 4, a 64 x 128 tile takes 255 registers a thread and spills 2 KB
# (ptxas -v, sm_90a, the Mega gates); with 8, 8 bytes, yet 8 warps ran slower on an H200 (tune_kernels.py).
BACKWARD_NUM_WARPS = 4
BACKWARD_STAGES = 2  # software-pipeline stages of the backward's row loops (1: none)
VALUE_DROPOUT_SITE = 0

if triton is not None:

    @triton.jit
    def _tile(rows, cols, row_count, col_count):
        """Offsets row * col_count + col (int64) of a (R, C) tile and its mask."""
        mask = (rows[:, None] < row_count) & (cols[None, :] < col_count)
        return rows[:, None].to(tl.int64) * col_count + cols[None, :], mask

    @triton.jit
    def _load(ptr, offsets, mask):
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _load_base(base_ptr, bias_ptr, rows, cols, row_count, width, first, E):
        """base[rows, first + cols] + bias[first + cols] (float32) for a segment of ``width``
        columns starting at ``first``, its offsets and mask."""
        col_mask = cols < width
        mask = (rows[:, None] < row_count) & col_mask[None, :]
        offsets = rows[:, None].to(tl.int64) * E + first + cols[None, :]
        bias = tl.load(bias_ptr + first + cols, mask=col_mask, other=0.0).to(tl.float32)
        return tl.load(base_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :], offsets, mask

    @triton.jit
    def _batch_first_rows(rows, batch, length):
        """Row b * L + t of a batch-first tensor for time-major rows t * B + b."""
        return (rows % batch) * length + rows // batch

    @triton.jit(do_not_specialize=["rows_total", "batch", "length"])
    def _mega_gates_forward_kernel(
        base_ptr, base_bias_ptr, values_ptr, value_bias_ptr, gamma_ptr, beta_ptr,
        u_ptr, r_ptr, hx_ptr, q_ptr, k_ptr, v_ptr,
        rows_total, batch, length, D, Z, H, seed_ptr, p,
        ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        block = tl.program_id(1)
        cols = tl.arange(0, BLOCK_C)
        E = 2 * D + Z + H
        blocks_d = tl.cdiv(D, BLOCK_C)
        blocks_z = tl.cdiv(Z, BLOCK_C)
        blocks_h = tl.cdiv(H, BLOCK_C)
        if block < blocks_d:  # update gate
            cols += block * BLOCK_C
            x, _, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, D, 0, E)
            out, mask = _tile(rows, cols, rows_total, D)
            tl.store(u_ptr + out, tl.sigmoid(x).to(u_ptr.dtype.element_ty), mask=mask)
        elif block < blocks_d + blocks_z:  # queries and keys
            cols += (block - blocks_d) * BLOCK_C
            x, _, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, Z, D, E)
            z = x * tl.sigmoid(x)
            col_mask = cols < Z
            gamma_q = tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            gamma_k = tl.load(gamma_ptr + Z + cols, mask=col_mask, other=0.0).to(tl.float32)
            beta_q = tl.load(beta_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            beta_k = tl.load(beta_ptr + Z + cols, mask=col_mask, other=0.0).to(tl.float32)
            out, mask = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, Z)
            mask = mask & (rows[:, None] < rows_total)
            tl.store(q_ptr + out, (z * gamma_q[None, :] + beta_q[None, :]).to(q_ptr.dtype.element_ty), mask=mask)
            tl.store(k_ptr + out, (z * gamma_k[None, :] + beta_k[None, :]).to(k_ptr.dtype.element_ty), mask=mask)
        elif block < blocks_d + blocks_z + blocks_h:  # reset gate
            cols += (block - blocks_d - blocks_z) * BLOCK_C
            x, _, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, H, D + Z, E)
            out, mask = _tile(rows, cols, rows_total, H)
            tl.store(r_ptr + out, (x * tl.sigmoid(x)).to(r_ptr.dtype.element_ty), mask=mask)
        elif block < 2 * blocks_d + blocks_z + blocks_h:  # hx
            cols += (block - blocks_d - blocks_z - blocks_h) * BLOCK_C
            x, _, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, D, D + Z + H, E)
            out, mask = _tile(rows, cols, rows_total, D)
            tl.store(hx_ptr + out, x.to(hx_ptr.dtype.element_ty), mask=mask)
        else:  # values
            cols += (block - 2 * blocks_d - blocks_z - blocks_h) * BLOCK_C
            x, _, mask = _load_base(values_ptr, value_bias_ptr, rows, cols, rows_total, H, 0, H)
            v = activation(x, ACT)
            if HAS_DROPOUT:
                v = v * dropout_scale(seed_ptr, 0, rows, cols, H, batch, p, FEATURE)
            out, mask = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, H)
            mask = mask & (rows[:, None] < rows_total)
            tl.store(v_ptr + out, v.to(v_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows_total", "row_programs", "batch", "length"])
    def _mega_gates_backward_kernel(
        base_ptr, base_bias_ptr, values_ptr, value_bias_ptr, gamma_ptr,
        grad_u_ptr, grad_r_ptr, grad_hx_ptr, grad_q_ptr, grad_k_ptr, grad_v_ptr,
        grad_base_ptr, grad_values_ptr, partials_ptr,
        rows_total, row_programs, batch, length, D, Z, H, seed_ptr, p,
        ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, FEATURE: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
    ):
        """Partials row (one per row program): [bias of base (E) | bias of values (H) |
        gamma[0], gamma[1], beta[0], beta[1] (Z each)]."""
        row_program = tl.program_id(0)
        block = tl.program_id(1)
        cols = tl.arange(0, BLOCK_C)
        E = 2 * D + Z + H
        width = E + H + 4 * Z
        partials_ptr += row_program.to(tl.int64) * width
        blocks_d = tl.cdiv(D, BLOCK_C)
        blocks_z = tl.cdiv(Z, BLOCK_C)
        blocks_h = tl.cdiv(H, BLOCK_C)
        bias_sum = tl.zeros((BLOCK_C,), tl.float32)
        if block < blocks_d:  # update gate
            cols += block * BLOCK_C
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                x, at, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, D, 0, E)
                offsets, _ = _tile(rows, cols, rows_total, D)
                s = tl.sigmoid(x)
                grad = _load(grad_u_ptr, offsets, mask) * s * (1.0 - s)
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + cols, bias_sum, mask=cols < D)
        elif block < blocks_d + blocks_z:  # queries and keys
            cols += (block - blocks_d) * BLOCK_C
            col_mask = cols < Z
            gamma_q = tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            gamma_k = tl.load(gamma_ptr + Z + cols, mask=col_mask, other=0.0).to(tl.float32)
            sum_qz = tl.zeros((BLOCK_C,), tl.float32)
            sum_kz = tl.zeros((BLOCK_C,), tl.float32)
            sum_q = tl.zeros((BLOCK_C,), tl.float32)
            sum_k = tl.zeros((BLOCK_C,), tl.float32)
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                x, at, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, Z, D, E)
                offsets, _ = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, Z)
                grad_q = _load(grad_q_ptr, offsets, mask)
                grad_k = _load(grad_k_ptr, offsets, mask)
                s = tl.sigmoid(x)
                z = x * s
                grad = (grad_q * gamma_q[None, :] + grad_k * gamma_k[None, :]) * s * (1.0 + x * (1.0 - s))
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
                sum_qz += tl.sum(grad_q * z, axis=0)
                sum_kz += tl.sum(grad_k * z, axis=0)
                sum_q += tl.sum(grad_q, axis=0)
                sum_k += tl.sum(grad_k, axis=0)
            tl.store(partials_ptr + D + cols, bias_sum, mask=col_mask)
            tl.store(partials_ptr + E + H + cols, sum_qz, mask=col_mask)
            tl.store(partials_ptr + E + H + Z + cols, sum_kz, mask=col_mask)
            tl.store(partials_ptr + E + H + 2 * Z + cols, sum_q, mask=col_mask)
            tl.store(partials_ptr + E + H + 3 * Z + cols, sum_k, mask=col_mask)
        elif block < blocks_d + blocks_z + blocks_h:  # reset gate
            cols += (block - blocks_d - blocks_z) * BLOCK_C
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                x, at, mask = _load_base(base_ptr, base_bias_ptr, rows, cols, rows_total, H, D + Z, E)
                offsets, _ = _tile(rows, cols, rows_total, H)
                grad = _load(grad_r_ptr, offsets, mask) * activation_grad(x, 1)
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + D + Z + cols, bias_sum, mask=cols < H)
        elif block < 2 * blocks_d + blocks_z + blocks_h:  # hx
            cols += (block - blocks_d - blocks_z - blocks_h) * BLOCK_C
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                offsets, mask = _tile(rows, cols, rows_total, D)
                grad = _load(grad_hx_ptr, offsets, mask)
                at = rows[:, None].to(tl.int64) * E + D + Z + H + cols[None, :]
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + D + Z + H + cols, bias_sum, mask=cols < D)
        else:  # values
            cols += (block - 2 * blocks_d - blocks_z - blocks_h) * BLOCK_C
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                x, at, mask = _load_base(values_ptr, value_bias_ptr, rows, cols, rows_total, H, 0, H)
                offsets, _ = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, H)
                grad = _load(grad_v_ptr, offsets, mask) * activation_grad(x, ACT)
                if HAS_DROPOUT:
                    grad = grad * dropout_scale(seed_ptr, 0, rows, cols, H, batch, p, FEATURE)
                tl.store(grad_values_ptr + at, grad.to(grad_values_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + E + cols, bias_sum, mask=cols < H)

    @triton.jit(do_not_specialize=["rows_total", "batch", "length"])
    def _cross_gates_forward_kernel(
        base_ptr, bias_ptr, u_ptr, r_ptr, q_ptr,
        rows_total, batch, length, D, Z,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        block = tl.program_id(1)
        cols = tl.arange(0, BLOCK_C)
        E = 2 * D + Z
        blocks_d = tl.cdiv(D, BLOCK_C)
        if block < blocks_d:  # update gate
            cols += block * BLOCK_C
            x, _, mask = _load_base(base_ptr, bias_ptr, rows, cols, rows_total, D, 0, E)
            out, mask = _tile(rows, cols, rows_total, D)
            tl.store(u_ptr + out, tl.sigmoid(x).to(u_ptr.dtype.element_ty), mask=mask)
        elif block < 2 * blocks_d:  # reset gate
            cols += (block - blocks_d) * BLOCK_C
            x, _, mask = _load_base(base_ptr, bias_ptr, rows, cols, rows_total, D, D, E)
            out, mask = _tile(rows, cols, rows_total, D)
            tl.store(r_ptr + out, (x * tl.sigmoid(x)).to(r_ptr.dtype.element_ty), mask=mask)
        else:  # queries
            cols += (block - 2 * blocks_d) * BLOCK_C
            x, _, mask = _load_base(base_ptr, bias_ptr, rows, cols, rows_total, Z, 2 * D, E)
            out, mask = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, Z)
            mask = mask & (rows[:, None] < rows_total)
            tl.store(q_ptr + out, x.to(q_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows_total", "row_programs", "batch", "length"])
    def _cross_gates_backward_kernel(
        base_ptr, bias_ptr, grad_u_ptr, grad_r_ptr, grad_q_ptr, grad_base_ptr, partials_ptr,
        rows_total, row_programs, batch, length, D, Z,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
    ):
        """Partials row (one per row program): the bias gradient (2D + Z)."""
        row_program = tl.program_id(0)
        block = tl.program_id(1)
        cols = tl.arange(0, BLOCK_C)
        E = 2 * D + Z
        partials_ptr += row_program.to(tl.int64) * E
        blocks_d = tl.cdiv(D, BLOCK_C)
        bias_sum = tl.zeros((BLOCK_C,), tl.float32)
        if block < 2 * blocks_d:  # update or reset gate
            reset = block >= blocks_d
            cols += (block - blocks_d * reset.to(tl.int32)) * BLOCK_C
            first = D * reset.to(tl.int32)
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                x, at, mask = _load_base(base_ptr, bias_ptr, rows, cols, rows_total, D, first, E)
                offsets, _ = _tile(rows, cols, rows_total, D)
                s = tl.sigmoid(x)
                if reset:
                    grad = _load(grad_r_ptr, offsets, mask) * s * (1.0 + x * (1.0 - s))
                else:
                    grad = _load(grad_u_ptr, offsets, mask) * s * (1.0 - s)
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + first + cols, bias_sum, mask=cols < D)
        else:  # queries
            cols += (block - 2 * blocks_d) * BLOCK_C
            for start in tl.range(row_program * BLOCK_R, rows_total, row_programs * BLOCK_R,
                                  num_stages=STAGES):
                rows = start + tl.arange(0, BLOCK_R)
                offsets, mask = _tile(_batch_first_rows(rows, batch, length), cols, rows_total, Z)
                mask = mask & (rows[:, None] < rows_total)
                grad = _load(grad_q_ptr, offsets, mask)
                at = rows[:, None].to(tl.int64) * E + 2 * D + cols[None, :]
                tl.store(grad_base_ptr + at, grad.to(grad_base_ptr.dtype.element_ty), mask=mask)
                bias_sum += tl.sum(grad, axis=0)
            tl.store(partials_ptr + 2 * D + cols, bias_sum, mask=cols < Z)


def _column_blocks(block: int, *widths: int) -> int:
    return sum(triton.cdiv(width, block) for width in widths)


def _backward_row_programs(rows: int) -> int:
    return max(1, min(BACKWARD_ROW_PROGRAMS, triton.cdiv(rows, BACKWARD_BLOCK_R)))


def mega_gates_forward(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor,
                       beta: Tensor, activation: int, p: float, feature: bool, seed: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """base (L, B, E) and values (L, B, H) contiguous; biases (E,), (H,); gamma, beta (2, Z).
    Returns u (L, B, D), r (L, B, H), hx (L, B, D) in base's dtype, q, k (B, L, Z) in the dtype of
    base * gamma, and v (B, L, H) in values' dtype."""
    length, batch, width = base.shape
    hidden, z_dim = values.size(-1), gamma.size(-1)
    dim = (width - z_dim - hidden) // 2
    rows = length * batch
    u = base.new_empty(length, batch, dim)
    r = base.new_empty(length, batch, hidden)
    hx = base.new_empty(length, batch, dim)
    qk_dtype = torch.promote_types(torch.promote_types(base.dtype, gamma.dtype), beta.dtype)
    q = torch.empty(batch, length, z_dim, device=base.device, dtype=qk_dtype)
    k = torch.empty_like(q)
    v = values.new_empty(batch, length, hidden)
    grid = (triton.cdiv(rows, BLOCK_R), _column_blocks(BLOCK_C, dim, z_dim, hidden, dim, hidden))
    _mega_gates_forward_kernel[grid](
        base, base_bias, values, value_bias, gamma, beta, u, r, hx, q, k, v,
        rows, batch, length, dim, z_dim, hidden, seed, p,
        ACT=activation, HAS_DROPOUT=p > 0.0, FEATURE=feature, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
    return u, r, hx, q, k, v


def mega_gates_backward(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor,
                        grad_u: Tensor, grad_r: Tensor, grad_hx: Tensor, grad_q: Tensor, grad_k: Tensor,
                        grad_v: Tensor, activation: int, p: float, feature: bool, seed: Tensor, param_dtype: torch.dtype
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of base (L, B, E) and values (L, B, H), and the parameter gradients packed as
    [bias of base (E) | bias of values (H) | gamma (2Z) | beta (2Z)] in ``param_dtype``.
    Every gradient input contiguous in its output's layout."""
    length, batch, width = base.shape
    hidden, z_dim = values.size(-1), gamma.size(-1)
    dim = (width - z_dim - hidden) // 2
    rows = length * batch
    grad_base = torch.empty_like(base)
    grad_values = torch.empty_like(values)
    row_programs = _backward_row_programs(rows)
    partials = torch.empty(row_programs, width + hidden + 4 * z_dim, device=base.device, dtype=torch.float32)
    grid = (row_programs, _column_blocks(BACKWARD_BLOCK_C, dim, z_dim, hidden, dim, hidden))
    _mega_gates_backward_kernel[grid](
        base, base_bias, values, value_bias, gamma, grad_u, grad_r, grad_hx, grad_q, grad_k, grad_v,
        grad_base, grad_values, partials, rows, row_programs, batch, length, dim, z_dim, hidden, seed, p,
        ACT=activation, HAS_DROPOUT=p > 0.0, FEATURE=feature, BLOCK_R=BACKWARD_BLOCK_R, BLOCK_C=BACKWARD_BLOCK_C,
        STAGES=BACKWARD_STAGES, num_warps=BACKWARD_NUM_WARPS)
    return grad_base, grad_values, column_sums(partials, param_dtype)


def cross_gates_forward(base: Tensor, bias: Tensor, z_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    """base (L, B, 2D + Z) contiguous, bias (2D + Z,). Returns u, r (L, B, D) and q (B, L, Z), all
    in base's dtype."""
    length, batch, width = base.shape
    dim = (width - z_dim) // 2
    rows = length * batch
    u = base.new_empty(length, batch, dim)
    r = base.new_empty(length, batch, dim)
    q = base.new_empty(batch, length, z_dim)
    grid = (triton.cdiv(rows, BLOCK_R), _column_blocks(BLOCK_C, dim, dim, z_dim))
    _cross_gates_forward_kernel[grid](base, bias, u, r, q, rows, batch, length, dim, z_dim,
                                      BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4)
    return u, r, q


def cross_gates_backward(base: Tensor, bias: Tensor, grad_u: Tensor, grad_r: Tensor, grad_q: Tensor,
                         param_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Gradient of base (L, B, 2D + Z) and of the bias (2D + Z,) in ``param_dtype``."""
    length, batch, width = base.shape
    z_dim = grad_q.size(-1)
    dim = (width - z_dim) // 2
    rows = length * batch
    grad_base = torch.empty_like(base)
    row_programs = _backward_row_programs(rows)
    partials = torch.empty(row_programs, width, device=base.device, dtype=torch.float32)
    grid = (row_programs, _column_blocks(BACKWARD_BLOCK_C, dim, dim, z_dim))
    _cross_gates_backward_kernel[grid](base, bias, grad_u, grad_r, grad_q, grad_base, partials,
                                       rows, row_programs, batch, length, dim, z_dim,
                                       BLOCK_R=BACKWARD_BLOCK_R, BLOCK_C=BACKWARD_BLOCK_C,
                                       STAGES=BACKWARD_STAGES, num_warps=BACKWARD_NUM_WARPS)
    return grad_base, column_sums(partials, param_dtype)
