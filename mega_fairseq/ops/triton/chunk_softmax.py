"""Attention weights from raw scores in one Triton launch, forward and backward (GPU; on a CPU through
Triton's interpreter in tests); ``ops.attention.unfused_attention_weights`` is the reference path.

The scores ``S = Q K^T`` of G groups (batch x chunks), each (Cq, Ck), become the weights

    softmax:         A = softmax(S / sqrt(Z) + bias), masked keys at -inf, in float32;
    laplace / relu2: A = f(S / n + bias) * mask, n the row's normalizer,

with the relative position bias read from a vector over distances (``bias[i, j] = w[center + j - p_i]``,
p_i = query_offset + i the query's position in its chunk) or from a (Cq, Ck) matrix, the causal
mask ``j <= p_i`` and a key mask (B, Lk) given as bool (``mask_is_valid``: True at real keys, else True
at pads); key positions of group g are ``(g % chunks) * chunk_stride + j``, those >= key_length
(the padded tail of the last chunk) count as padding. A softmax row whose allowed keys are all
padding ignores the key mask (keeps the causal one). The laplace / relu2 normalizer n is p_i + 1 when
causal, else the chunk's number of real keys (at least 1). Dropout (Philox, ``tl.rand`` of the
element index) writes the dropped weights A * keep / (1 - p) beside A.

Backward: from dP (the gradient of the weights that met V, i.e. after dropout) to dS, in place or
into another buffer, and the gradient of the bias (atomically added, float32/64: per distance for a
vector bias, per entry for a matrix). Softmax needs no random numbers there: with P the dropped
weights, ``dX = P * dP - A * sum_j(P * dP)``; laplace / relu2 recompute X from S and regenerate the
dropout mask. The second pass walks each row block along diagonals (rows i, distances u: key
j = i - i0 + u), so that summing a tile over its rows gives the bias gradient per distance.

Loops with run-time bounds are ``while`` loops: Triton's interpreter (numpy 2) cannot take a run-time
bound in ``range``. Tiles hold 1024 elements (8 per thread): more spills registers on an H100.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path is used
    triton = None

FUNCTIONS = {"softmax": 0, "laplace": 1, "relu2": 2}
BIAS_VECTOR, BIAS_MATRIX = 1, 2
MAX_BLOCK_N = 128  # columns per tile (a power of two)
TILE_ELEMENTS = 1024  # rows x columns per tile: 8 per thread (more spills registers on an H100)
NUM_WARPS = 4
# sizes that change with the batch: not specialized (a value divisible by 16 or equal to 1 would compile
# another variant of each kernel for every such shape)
SHAPE_ARGUMENTS = ["Cq", "Ck", "chunks", "chunk_stride", "key_length", "query_offset", "bias_center", "bias_stride",
                   "mask_stride_b"]

if triton is not None:

    @triton.jit
    def _valid_keys(mask_ptr, mask_row, mask_stride_k, j, in_chunk, key_start, key_length,
                    HAS_MASK: tl.constexpr, MASK_IS_VALID: tl.constexpr):
        """Real keys among columns j (any shape): inside the chunk and the sequence, not masked."""
        position = key_start + j
        valid = in_chunk & (position < key_length)
        if HAS_MASK:
            flag = tl.load(mask_ptr + mask_row + position.to(tl.int64) * mask_stride_k, mask=valid, other=0)
            if MASK_IS_VALID:
                valid = valid & (flag != 0)
            else:
                valid = valid & (flag == 0)
        return valid

    @triton.jit
    def _key_stats(mask_ptr, mask_row, mask_stride_k, Ck, key_start, key_length,
                   HAS_MASK: tl.constexpr, MASK_IS_VALID: tl.constexpr, BLOCK_N: tl.constexpr):
        """The chunk's number of real keys and the column of its first real key (Ck if none)."""
        count = 0
        first = Ck
        j0 = 0
        while j0 < Ck:
            j = j0 + tl.arange(0, BLOCK_N)
            valid = _valid_keys(mask_ptr, mask_row, mask_stride_k, j, j < Ck, key_start, key_length,
                                HAS_MASK, MASK_IS_VALID)
            count += tl.sum(valid.to(tl.int32), axis=0)
            first = tl.minimum(first, tl.min(tl.where(valid, j, Ck), axis=0))
            j0 += BLOCK_N
        return count, first

    @triton.jit
    def _row_setup(mask_ptr, mask_stride_b, mask_stride_k, Cq, Ck, chunks, chunk_stride, key_length,
                   query_offset, scale, FUNCTION: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                   MASK_IS_VALID: tl.constexpr, KEY_STATS: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's rows i, their query positions, the offset of their first element, where the
        group's keys start, the scale of each row's scores and whether a softmax row keeps the key mask."""
        group = tl.program_id(0)
        i0 = tl.program_id(1) * BLOCK_M
        i = i0 + tl.arange(0, BLOCK_M)
        position = query_offset + i
        key_start = (group % chunks) * chunk_stride
        mask_row = (group // chunks).to(tl.int64) * mask_stride_b
        row_base = (group.to(tl.int64) * Cq + i) * Ck
        count = Ck
        first = 0
        if KEY_STATS:
            count, first = _key_stats(mask_ptr, mask_row, mask_stride_k, Ck, key_start, key_length,
                                      HAS_MASK, MASK_IS_VALID, BLOCK_N)
        if FUNCTION == 0:
            row_scale = tl.full((BLOCK_M,), scale, COMPUTE)
        elif CAUSAL:
            row_scale = 1.0 / (position + 1).to(COMPUTE)
        else:
            row_scale = tl.full((BLOCK_M,), 1.0, COMPUTE) / tl.maximum(count, 1).to(COMPUTE)
        if CAUSAL:
            keeps_mask = first <= position
        else:
            keeps_mask = position * 0 + first < Ck
        return i0, i, position, row_base, key_start, mask_row, row_scale, keeps_mask

    @triton.jit
    def _allowed(i, j, position, keeps_mask, Cq, Ck, mask_ptr, mask_row, mask_stride_k, key_start, key_length,
                 FUNCTION: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASK_IS_VALID: tl.constexpr):
        """(BLOCK_M, BLOCK_N) bool: the keys j (per row) that row i attends to."""
        in_chunk = (j >= 0) & (j < Ck)
        seen = (i < Cq)[:, None] & in_chunk
        if CAUSAL:
            seen = seen & (j <= position[:, None])
        valid = _valid_keys(mask_ptr, mask_row, mask_stride_k, j, in_chunk, key_start, key_length,
                            HAS_MASK, MASK_IS_VALID)
        if FUNCTION == 0:
            return seen & (valid | ~keeps_mask[:, None])
        return seen & valid

    @triton.jit
    def _logits(s_ptr, bias_ptr, row_base, i, j, position, row_scale, allowed, bias_center, bias_stride,
                BIAS: tl.constexpr, COMPUTE: tl.constexpr):
        """scale * S + bias on the allowed entries of the tile (0 elsewhere)."""
        x = tl.load(s_ptr + row_base[:, None] + j, mask=allowed, other=0.0).to(COMPUTE) * row_scale[:, None]
        if BIAS == 1:
            x += tl.load(bias_ptr + bias_center + j - position[:, None], mask=allowed, other=0.0).to(COMPUTE)
        elif BIAS == 2:
            x += tl.load(bias_ptr + i[:, None].to(tl.int64) * bias_stride + j, mask=allowed, other=0.0).to(COMPUTE)
        return x

    @triton.jit
    def _laplace_or_relu2(x, FUNCTION: tl.constexpr):
        if FUNCTION == 1:
            return 0.5 * (1.0 + tl.math.erf((x - 0.7071067811865476) * 2.5066282746310002))
        relu = tl.maximum(x, 0.0)
        return relu * relu

    @triton.jit
    def _derivative(x, FUNCTION: tl.constexpr):
        """d f / d x of laplace (the Gaussian density, mean sqrt(1/2), std sqrt(1/(4 pi))) or relu2."""
        if FUNCTION == 1:
            t = x - 0.7071067811865476
            return 1.4142135623730951 * tl.exp(-6.283185307179586 * t * t)
        return 2.0 * tl.maximum(x, 0.0)

    @triton.jit
    def _keep(seed_ptr, offsets, dropout):
        return tl.rand(tl.load(seed_ptr), offsets) >= dropout

    @triton.jit(do_not_specialize=SHAPE_ARGUMENTS)
    def _attention_forward_kernel(
        s_ptr, a_ptr, p_ptr, bias_ptr, mask_ptr,
        Cq, Ck, chunks, chunk_stride, key_length, query_offset, bias_center, bias_stride,
        mask_stride_b, mask_stride_k, scale, dropout, seed_ptr,
        FUNCTION: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASK_IS_VALID: tl.constexpr,
        KEY_STATS: tl.constexpr, BIAS: tl.constexpr, DROPOUT: tl.constexpr, STORE_WEIGHTS: tl.constexpr,
        COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Writes the weights to a (unless STORE_WEIGHTS is off) and the dropped weights to p (DROPOUT)."""
        i0, i, position, row_base, key_start, mask_row, row_scale, keeps_mask = _row_setup(
            mask_ptr, mask_stride_b, mask_stride_k, Cq, Ck, chunks, chunk_stride, key_length, query_offset, scale,
            FUNCTION, CAUSAL, HAS_MASK, MASK_IS_VALID, KEY_STATS, COMPUTE, BLOCK_M, BLOCK_N)
        columns = tl.arange(0, BLOCK_N)
        if FUNCTION == 0:  # pass 1: running row maximum and sum of exponentials
            top = tl.full((BLOCK_M,), float("-inf"), COMPUTE)
            total = tl.zeros((BLOCK_M,), COMPUTE)
            seen_columns = Ck
            if CAUSAL:
                seen_columns = tl.minimum(Ck, query_offset + tl.minimum(i0 + BLOCK_M, Cq))
            j0 = 0
            while j0 < seen_columns:
                j = (j0 + columns)[None, :]
                allowed = _allowed(i, j, position, keeps_mask, Cq, Ck, mask_ptr, mask_row, mask_stride_k,
                                   key_start, key_length, FUNCTION, CAUSAL, HAS_MASK, MASK_IS_VALID)
                x = _logits(s_ptr, bias_ptr, row_base, i, j, position, row_scale, allowed, bias_center, bias_stride,
                            BIAS, COMPUTE)
                x = tl.where(allowed, x, float("-inf"))
                new_top = tl.maximum(top, tl.max(x, axis=1))
                safe_top = tl.where(new_top == float("-inf"), 0.0, new_top)
                total = total * tl.exp(top - safe_top) + tl.sum(tl.exp(x - safe_top[:, None]), axis=1)
                top = new_top
                j0 += BLOCK_N
            top = tl.where(top == float("-inf"), 0.0, top)
            inverse_total = 1.0 / tl.where(total > 0.0, total, 1.0)
        j0 = 0
        while j0 < Ck:  # pass 2: the weights of every column (zeros where masked)
            j = (j0 + columns)[None, :]
            allowed = _allowed(i, j, position, keeps_mask, Cq, Ck, mask_ptr, mask_row, mask_stride_k,
                               key_start, key_length, FUNCTION, CAUSAL, HAS_MASK, MASK_IS_VALID)
            x = _logits(s_ptr, bias_ptr, row_base, i, j, position, row_scale, allowed, bias_center, bias_stride,
                        BIAS, COMPUTE)
            if FUNCTION == 0:
                weights = tl.exp(x - top[:, None]) * inverse_total[:, None]
            else:
                weights = _laplace_or_relu2(x, FUNCTION)
            weights = tl.where(allowed, weights, 0.0)
            offsets = row_base[:, None] + j
            inside = (i < Cq)[:, None] & (j < Ck)
            if STORE_WEIGHTS:
                tl.store(a_ptr + offsets, weights.to(a_ptr.dtype.element_ty), mask=inside)
            if DROPOUT:
                dropped = tl.where(_keep(seed_ptr, offsets, dropout), weights / (1.0 - tl.cast(dropout, COMPUTE)), 0.0)
                tl.store(p_ptr + offsets, dropped.to(p_ptr.dtype.element_ty), mask=inside)
            j0 += BLOCK_N

    @triton.jit(do_not_specialize=[*SHAPE_ARGUMENTS, "bias_numel"])
    def _attention_backward_kernel(
        g_ptr, ds_ptr, a_ptr, p_ptr, bias_ptr, grad_bias_ptr, mask_ptr,
        Cq, Ck, chunks, chunk_stride, key_length, query_offset, bias_center, bias_stride, bias_numel,
        mask_stride_b, mask_stride_k, scale, dropout, seed_ptr,
        FUNCTION: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASK_IS_VALID: tl.constexpr,
        KEY_STATS: tl.constexpr, BIAS: tl.constexpr, DROPOUT: tl.constexpr, COMPUTE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """g: dP (gradient of the weights that met V); a: A (softmax) or S (laplace / relu2);
        p: the dropped weights (softmax with dropout). Writes dS to ds (which may be g)."""
        i0, i, position, row_base, key_start, mask_row, row_scale, keeps_mask = _row_setup(
            mask_ptr, mask_stride_b, mask_stride_k, Cq, Ck, chunks, chunk_stride, key_length, query_offset, scale,
            FUNCTION, CAUSAL, HAS_MASK, MASK_IS_VALID, KEY_STATS, COMPUTE, BLOCK_M, BLOCK_N)
        columns = tl.arange(0, BLOCK_N)
        row_ok = (i < Cq)[:, None]
        if FUNCTION == 0:  # pass 1: r = sum_j P * dP and the weights' sum per row
            r = tl.zeros((BLOCK_M,), COMPUTE)
            total = tl.zeros((BLOCK_M,), COMPUTE)
            seen_columns = Ck
            if CAUSAL:
                seen_columns = tl.minimum(Ck, query_offset + tl.minimum(i0 + BLOCK_M, Cq))
            j0 = 0
            while j0 < seen_columns:
                j = (j0 + columns)[None, :]
                inside = row_ok & (j < seen_columns)
                offsets = row_base[:, None] + j
                g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(COMPUTE)
                p = tl.load(p_ptr + offsets, mask=inside, other=0.0).to(COMPUTE)
                r += tl.sum(p * g, axis=1)
                a = p
                if DROPOUT:
                    a = tl.load(a_ptr + offsets, mask=inside, other=0.0).to(COMPUTE)
                total += tl.sum(a, axis=1)
                j0 += BLOCK_N
            # weights stored in half precision do not sum to 1; dividing by their sum keeps the rows of dS
            # summing to 0 (softmax ignores a shift of a row's logits), so the bias gradient does not drift
            inverse = 1.0 / tl.where(total > 0.0, total, 1.0)
            r = r * inverse
        u0 = 1 - BLOCK_M
        while u0 < Ck:  # pass 2, along diagonals: key j = (i - i0) + u, distance j - p_i = u - i0 - query_offset
            u = u0 + columns
            j = (i - i0)[:, None] + u[None, :]
            inside = row_ok & (j >= 0) & (j < Ck)
            seen = inside
            if CAUSAL:
                seen = seen & (j <= position[:, None])
            offsets = row_base[:, None] + j
            g = tl.load(g_ptr + offsets, mask=seen, other=0.0).to(COMPUTE)
            if FUNCTION == 0:
                a = tl.load(a_ptr + offsets, mask=seen, other=0.0).to(COMPUTE)
                p = a
                if DROPOUT:
                    p = tl.load(p_ptr + offsets, mask=seen, other=0.0).to(COMPUTE)
                dx = (p * g - a * r[:, None]) * inverse[:, None]
            else:
                allowed = _allowed(i, j, position, keeps_mask, Cq, Ck, mask_ptr, mask_row, mask_stride_k,
                                   key_start, key_length, FUNCTION, CAUSAL, HAS_MASK, MASK_IS_VALID)
                x = _logits(a_ptr, bias_ptr, row_base, i, j, position, row_scale, allowed, bias_center,
                            bias_stride, BIAS, COMPUTE)
                if DROPOUT:
                    g = tl.where(_keep(seed_ptr, offsets, dropout), g / (1.0 - tl.cast(dropout, COMPUTE)), 0.0)
                dx = tl.where(allowed, g * _derivative(x, FUNCTION), 0.0)
            tl.store(ds_ptr + offsets, (dx * row_scale[:, None]).to(ds_ptr.dtype.element_ty), mask=inside)
            if BIAS == 1:
                index = bias_center + u - i0 - query_offset
                wanted = (index >= 0) & (index < bias_numel)
                if CAUSAL:
                    wanted = wanted & (u <= i0 + query_offset)
                tl.atomic_add(grad_bias_ptr + index, tl.sum(dx, axis=0), mask=wanted, sem="relaxed")
            elif BIAS == 2:
                tl.atomic_add(grad_bias_ptr + i[:, None].to(tl.int64) * bias_stride + j, dx, mask=seen, sem="relaxed")
            u0 += BLOCK_N


class Layout(NamedTuple):
    """Where the (G, Cq, Ck) scores come from: group g is chunk g % chunks of batch row g // chunks, its
    keys at positions (g % chunks) * chunk_stride + j of a key sequence of key_length; its first query
    at position query_offset of the chunk."""

    chunks: int
    chunk_stride: int
    key_length: int
    query_offset: int


def _blocks(rows: int, columns: int):
    block_n = min(triton.next_power_of_2(columns), MAX_BLOCK_N)
    block_m = min(triton.next_power_of_2(rows), max(1, TILE_ELEMENTS // block_n))
    return block_m, block_n


def _common(scores: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], layout: Layout, function: str,
            causal: bool, mask_is_valid: bool, backward: bool):
    """Launch arguments shared by both kernels (after the per-kernel pointers). The key statistics are
    needed by softmax for the rule on rows without real keys (forward only) and by the normalizer of
    non-causal laplace / relu2 when keys can be padding."""
    groups, rows, columns = scores.shape
    block_m, block_n = _blocks(rows, columns)
    fn = FUNCTIONS[function]
    tail = layout.chunks * layout.chunk_stride > layout.key_length
    key_stats = ((fn == 0 and mask is not None and not backward)
                 or (fn != 0 and not causal and (mask is not None or tail)))
    bias_mode = 0 if bias is None else (BIAS_VECTOR if bias.dim() == 1 else BIAS_MATRIX)
    geometry = (rows, columns, layout.chunks, layout.chunk_stride, layout.key_length, layout.query_offset,
                (bias.numel() - 1) // 2 if bias_mode == BIAS_VECTOR else 0,
                bias.stride(0) if bias_mode == BIAS_MATRIX else 0)
    mask_strides = (mask.stride(0), mask.stride(1)) if mask is not None else (0, 0)
    compute = tl.float64 if scores.dtype == torch.float64 else tl.float32
    constants = dict(FUNCTION=fn, CAUSAL=causal, HAS_MASK=mask is not None, MASK_IS_VALID=mask_is_valid,
                     KEY_STATS=key_stats, BIAS=bias_mode, COMPUTE=compute, BLOCK_M=block_m, BLOCK_N=block_n)
    grid = (groups, triton.cdiv(rows, block_m))
    return grid, geometry, mask_strides, constants


def weights_forward(scores: Tensor, weights: Optional[Tensor], dropped: Optional[Tensor], bias: Optional[Tensor],
                    mask: Optional[Tensor], layout: Layout, *, function: str, causal: bool, scale: float,
                    dropout: float, seed: Optional[Tensor], mask_is_valid: bool = False) -> None:
    """scores (G, Cq, Ck) contiguous -> weights (same shape; may be scores itself; None: not written, which
    needs dropout) and, with dropout, the dropped weights. bias: vector (2P - 1,) centred at P - 1, or
    (Cq, Ck) matrix, contiguous, or None; mask (B, Lk) bool or None; scale: the softmax scale (laplace /
    relu2 use their normalizer)."""
    grid, geometry, mask_strides, constants = _common(scores, bias, mask, layout, function, causal, mask_is_valid,
                                                      False)
    _attention_forward_kernel[grid](
        scores, weights if weights is not None else dropped, dropped if dropped is not None else weights,
        bias if bias is not None else scores,
        mask if mask is not None else scores, *geometry, *mask_strides, scale, dropout,
        seed if seed is not None else scores,
        DROPOUT=dropout > 0.0, STORE_WEIGHTS=weights is not None, num_warps=NUM_WARPS, **constants)


def weights_backward(grad: Tensor, grad_scores: Tensor, saved: Tensor, dropped: Optional[Tensor],
                     bias: Optional[Tensor], grad_bias: Optional[Tensor], mask: Optional[Tensor], layout: Layout, *,
                     function: str, causal: bool, scale: float, dropout: float, seed: Optional[Tensor],
                     mask_is_valid: bool = False) -> None:
    """grad: dP (G, Cq, Ck), the gradient of the (dropped) weights -> grad_scores (may be grad itself);
    adds the bias gradient into grad_bias (float32/64, the bias's shape, contiguous like the bias).
    saved: the weights A (softmax) or the scores S (laplace / relu2); dropped: the dropped weights
    (softmax with dropout)."""
    grid, geometry, mask_strides, constants = _common(saved, bias, mask, layout, function, causal, mask_is_valid,
                                                      True)
    bias_numel = bias.numel() if bias is not None else 0
    _attention_backward_kernel[grid](
        grad, grad_scores, saved, dropped if dropped is not None else saved, bias if bias is not None else saved,
        grad_bias if grad_bias is not None else grad, mask if mask is not None else saved,
        *geometry, bias_numel, *mask_strides, scale, dropout, seed if seed is not None else saved,
        DROPOUT=dropout > 0.0, num_warps=NUM_WARPS, **constants)
