"""Fused EMA scan in Triton (GPU), forward and backward; ``ops.ema.fft_ema`` is the reference path.

One *term* of the EMA is the diagonal linear recurrence, per channel d and EMA dimension n,
run in scan order (time ascending, or descending when ``reverse``)::

    h[tau] = q * h[tau - 1] + a * x[tau - shift]        (x before the sequence start is 0)
    y[tau] = sum_n b * h[tau]

The causal EMA is one term (a = p * beta, b = gamma * sqrt(1/N)), the bidirectional EMA adds a
reversed term with the second half of the parameters, and a truncated kernel subtracts the
lags >= K: a term with b = -gamma * q^K and shift K.

Three kernels per term give time parallelism (B x D/32 x L/TC programs):
  1. ``_chunk_states_kernel``: each time chunk's final state from a zero start, unscaled (a = 1);
  2. ``_chunk_prefix_kernel``: the incoming state of every chunk (a loop over chunks);
  3. ``_chunk_outputs_kernel``: each chunk rescanned from its incoming state, writing y.
``_residual_silu_kernel`` then gives the layer output silu(y + omega * x) (and its backward kernel
the gradients through it), so the layer reads and writes every (L, B, D) tensor once per pass.
The backward pass runs the adjoint recurrence (reversed scan of dy with a and b swapped) through
the same kernels for dx, and ``_param_grads_kernel`` accumulates, per chunk, sum dy * w and
sum dy * dw/dq (forward-mode derivative of the unscaled state w) for the parameter gradients.
Every thread owns one channel and all N states (float32); inputs and outputs keep their dtype.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import interpreting, triton_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the FFT path is used
    triton = None

BLOCK_D = 32  # channels per program: one channel per thread, BLOCK_D / 32 warps
TARGET_PROGRAMS = 8192  # enough warps to cover memory latency on an H100


def chunk_length(length: int, channel_programs: int) -> int:
    """Time chunk TC (a power of two, >= 64): about TARGET_PROGRAMS warps in all."""
    wanted_chunks = max(1, TARGET_PROGRAMS * 32 // BLOCK_D // max(channel_programs, 1))
    chunk = 64
    while chunk * wanted_chunks < length:
        chunk *= 2
    return chunk


if triton is not None:

    @triton.jit
    def _load_step(ptr, tau, shift, L, stride_l, offsets, d_mask, REVERSE: tl.constexpr):
        """x at scan position tau - shift (0 outside the sequence), (BLOCK_D,) in x's dtype: converted
        only where used, so that a group's loads are all issued before the first one is waited for."""
        idx = tau - shift
        valid = (idx >= 0) & (idx < L)
        if REVERSE:
            idx = L - 1 - idx
        return tl.load(ptr + idx.to(tl.int64) * stride_l + offsets, mask=d_mask & valid, other=0.0)

    @triton.jit
    def _load8(ptr, t0, shift, L, stride_l, offsets, d_mask, REVERSE: tl.constexpr):
        """The inputs of scan positions t0 .. t0 + 7 (see _load_step), loaded together."""
        return (_load_step(ptr, t0 + 0, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 1, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 2, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 3, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 4, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 5, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 6, shift, L, stride_l, offsets, d_mask, REVERSE),
                _load_step(ptr, t0 + 7, shift, L, stride_l, offsets, d_mask, REVERSE))

    @triton.jit
    def _channel_tile(D, N: tl.constexpr, BLOCK: tl.constexpr):
        """This program's channels d (BLOCK,), their mask, and the offsets n * D + d of an (N, BLOCK)
        parameter or state tile with its mask."""
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        n = tl.arange(0, N)
        d_mask = d < D
        return d, d_mask, n[:, None] * D + d[None, :], d_mask[None, :] & (n[:, None] < N)

    @triton.jit
    def _store_step(ptr, tau, value, L, stride_l, offsets, d_mask, REVERSE: tl.constexpr, ACCUMULATE: tl.constexpr):
        """Store (or add) value at scan position tau if it lies in the sequence."""
        valid = (tau >= 0) & (tau < L)
        idx = tau
        if REVERSE:
            idx = L - 1 - tau
        pointers = ptr + idx.to(tl.int64) * stride_l + offsets
        mask = d_mask & valid
        if ACCUMULATE:
            value += tl.load(pointers, mask=mask, other=0.0).to(tl.float32)
        tl.store(pointers, value.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _state_step(w, v, x, q, tau, L, NEED_V: tl.constexpr):
        """Unscaled state w <- q w + x and its q-derivative v <- q v + w; frozen past the end."""
        valid = tau < L
        q_step = tl.where(valid, q, 1.0)
        if NEED_V:
            v = q_step * v + tl.where(valid, w, 0.0)
        w = q_step * w + x.to(tl.float32)[None, :]
        return w, v

    @triton.jit
    def _chunk_states_kernel(
        x_ptr, q_ptr, w_local_ptr, v_local_ptr,
        L, D, stride_l, stride_b, shift,
        TC: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
        REVERSE: tl.constexpr, NEED_V: tl.constexpr,
    ):
        batch, chunk = tl.program_id(0), tl.program_id(2)
        num_chunks = tl.num_programs(2)
        d, d_mask, tile, tile_mask = _channel_tile(D, N, BLOCK)
        q = tl.load(q_ptr + tile, mask=tile_mask, other=1.0)
        offsets = batch.to(tl.int64) * stride_b + d
        w = tl.zeros((N, BLOCK), tl.float32)
        v = tl.zeros((N, BLOCK), tl.float32)
        start = chunk * TC
        for offset in range(0, TC, 8):
            t0 = start + offset
            x0, x1, x2, x3, x4, x5, x6, x7 = _load8(x_ptr, t0, shift, L, stride_l, offsets, d_mask, REVERSE)
            w, v = _state_step(w, v, x0, q, t0 + 0, L, NEED_V)
            w, v = _state_step(w, v, x1, q, t0 + 1, L, NEED_V)
            w, v = _state_step(w, v, x2, q, t0 + 2, L, NEED_V)
            w, v = _state_step(w, v, x3, q, t0 + 3, L, NEED_V)
            w, v = _state_step(w, v, x4, q, t0 + 4, L, NEED_V)
            w, v = _state_step(w, v, x5, q, t0 + 5, L, NEED_V)
            w, v = _state_step(w, v, x6, q, t0 + 6, L, NEED_V)
            w, v = _state_step(w, v, x7, q, t0 + 7, L, NEED_V)
        out = (batch * num_chunks + chunk).to(tl.int64) * N * D + tile
        tl.store(w_local_ptr + out, w, mask=tile_mask)
        if NEED_V:
            tl.store(v_local_ptr + out, v, mask=tile_mask)

    @triton.jit
    def _chunk_prefix_kernel(
        w_local_ptr, v_local_ptr, q_ptr, a_ptr, h0_ptr, h_in_ptr, w_in_ptr, v_in_ptr, h_final_ptr,
        L, D,
        NUM_CHUNKS: tl.constexpr, TC: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
        NEED_V: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    ):
        batch = tl.program_id(0)
        d, d_mask, tile, tile_mask = _channel_tile(D, N, BLOCK)
        q = tl.load(q_ptr + tile, mask=tile_mask, other=1.0)
        a = tl.load(a_ptr + tile, mask=tile_mask, other=0.0)
        log_q = tl.log(q)
        state_tile = batch.to(tl.int64) * D * N + d[None, :] * N + tl.arange(0, N)[:, None]
        h0 = tl.zeros((N, BLOCK), tl.float32)
        if HAS_H0:
            h0 = tl.load(h0_ptr + state_tile, mask=tile_mask, other=0.0)
        w = tl.zeros((N, BLOCK), tl.float32)
        v = tl.zeros((N, BLOCK), tl.float32)
        for chunk in range(0, NUM_CHUNKS):
            at = (batch * NUM_CHUNKS + chunk).to(tl.int64) * N * D + tile
            start = chunk * TC
            tl.store(h_in_ptr + at, a * w + tl.exp(start * log_q) * h0, mask=tile_mask)
            if NEED_V:
                tl.store(w_in_ptr + at, w, mask=tile_mask)
                tl.store(v_in_ptr + at, v, mask=tile_mask)
            steps = tl.minimum(TC, L - start).to(tl.float32)
            decay = tl.exp(steps * log_q)
            if NEED_V:
                v = decay * v + steps * tl.exp((steps - 1.0) * log_q) * w + tl.load(v_local_ptr + at, mask=tile_mask)
            w = decay * w + tl.load(w_local_ptr + at, mask=tile_mask)
        if STORE_FINAL:
            tl.store(h_final_ptr + state_tile, a * w + tl.exp(L * log_q) * h0, mask=tile_mask)

    @triton.jit
    def _output_step(h, x, q, a, b, y_ptr, tau, out_shift, L, stride_l, offsets, d_mask,
                     REVERSE: tl.constexpr, ACCUMULATE: tl.constexpr):
        h = q * h + a * x.to(tl.float32)[None, :]
        _store_step(y_ptr, tau + out_shift, tl.sum(b * h, axis=0), L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
        return h

    @triton.jit
    def _chunk_outputs_kernel(
        x_ptr, y_ptr, q_ptr, a_ptr, b_ptr, h_in_ptr,
        L, D, stride_l, stride_b, in_shift, out_shift,
        TC: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
        REVERSE: tl.constexpr, ACCUMULATE: tl.constexpr,
    ):
        batch, chunk = tl.program_id(0), tl.program_id(2)
        num_chunks = tl.num_programs(2)
        d, d_mask, tile, tile_mask = _channel_tile(D, N, BLOCK)
        q = tl.load(q_ptr + tile, mask=tile_mask, other=1.0)
        a = tl.load(a_ptr + tile, mask=tile_mask, other=0.0)
        b = tl.load(b_ptr + tile, mask=tile_mask, other=0.0)
        h = tl.load(h_in_ptr + (batch * num_chunks + chunk).to(tl.int64) * N * D + tile, mask=tile_mask, other=0.0)
        offsets = batch.to(tl.int64) * stride_b + d
        start = chunk * TC
        for offset in range(0, TC, 8):
            t0 = start + offset
            x0, x1, x2, x3, x4, x5, x6, x7 = _load8(x_ptr, t0, in_shift, L, stride_l, offsets, d_mask, REVERSE)
            h = _output_step(h, x0, q, a, b, y_ptr, t0 + 0, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x1, q, a, b, y_ptr, t0 + 1, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x2, q, a, b, y_ptr, t0 + 2, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x3, q, a, b, y_ptr, t0 + 3, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x4, q, a, b, y_ptr, t0 + 4, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x5, q, a, b, y_ptr, t0 + 5, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x6, q, a, b, y_ptr, t0 + 6, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)
            h = _output_step(h, x7, q, a, b, y_ptr, t0 + 7, out_shift, L, stride_l, offsets, d_mask, REVERSE, ACCUMULATE)

    @triton.jit
    def _grad_step(w, v, sum_w, sum_v, x, g, q):
        v = q * v + w
        w = q * w + x.to(tl.float32)[None, :]
        g = g.to(tl.float32)[None, :]
        return w, v, sum_w + g * w, sum_v + g * v

    @triton.jit
    def _param_grads_kernel(
        x_ptr, g_ptr, q_ptr, w_in_ptr, v_in_ptr, sum_w_ptr, sum_v_ptr,
        L, D, x_stride_l, x_stride_b, g_stride_l, g_stride_b, shift,
        TC: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
        REVERSE: tl.constexpr,
    ):
        batch, chunk = tl.program_id(0), tl.program_id(2)
        num_chunks = tl.num_programs(2)
        d, d_mask, tile, tile_mask = _channel_tile(D, N, BLOCK)
        q = tl.load(q_ptr + tile, mask=tile_mask, other=1.0)
        at = (batch * num_chunks + chunk).to(tl.int64) * N * D + tile
        w = tl.load(w_in_ptr + at, mask=tile_mask, other=0.0)
        v = tl.load(v_in_ptr + at, mask=tile_mask, other=0.0)
        sum_w = tl.zeros((N, BLOCK), tl.float32)
        sum_v = tl.zeros((N, BLOCK), tl.float32)
        x_offsets = batch.to(tl.int64) * x_stride_b + d
        g_offsets = batch.to(tl.int64) * g_stride_b + d
        start = chunk * TC
        for offset in range(0, TC, 8):
            t0 = start + offset
            x0, x1, x2, x3, x4, x5, x6, x7 = _load8(x_ptr, t0, shift, L, x_stride_l, x_offsets, d_mask, REVERSE)
            g0, g1, g2, g3, g4, g5, g6, g7 = _load8(g_ptr, t0, 0, L, g_stride_l, g_offsets, d_mask, REVERSE)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x0, g0, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x1, g1, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x2, g2, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x3, g3, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x4, g4, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x5, g5, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x6, g6, q)
            w, v, sum_w, sum_v = _grad_step(w, v, sum_w, sum_v, x7, g7, q)
        tl.store(sum_w_ptr + at, sum_w, mask=tile_mask)
        tl.store(sum_v_ptr + at, sum_v, mask=tile_mask)

    @triton.jit
    def _residual_silu_kernel(y_ptr, x_ptr, omega_ptr, out_ptr, numel, D, BLOCK: tl.constexpr):
        """out = silu(y + omega * x), elementwise over (L, B, D)."""
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = i < numel
        omega = tl.load(omega_ptr + i % D, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(y_ptr + i, mask=mask, other=0.0).to(tl.float32) + omega * tl.load(
            x_ptr + i, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + i, (z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _residual_silu_backward_kernel(g_ptr, y_ptr, x_ptr, omega_ptr, grad_y_ptr, grad_x_ptr, grad_omega_ptr,
                                       rows, D, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        """From d out: d y = d z, d x (residual part) = d z * omega, and per row block sum(d z * x) (D,)."""
        row_block = tl.program_id(0)
        r = row_block * ROWS + tl.arange(0, ROWS)
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = (r[:, None] < rows) & (d[None, :] < D)
        at = r[:, None].to(tl.int64) * D + d[None, :]
        omega = tl.load(omega_ptr + d, mask=d < D, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32) + omega[None, :] * x
        sig = tl.sigmoid(z)
        grad_z = tl.load(g_ptr + at, mask=mask, other=0.0).to(tl.float32) * sig * (1.0 + z * (1.0 - sig))
        tl.store(grad_y_ptr + at, grad_z.to(grad_y_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_x_ptr + at, (grad_z * omega[None, :]).to(grad_x_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_omega_ptr + row_block * D + d, tl.sum(grad_z * x, axis=0), mask=d < D)


class ScanTerm(NamedTuple):
    """Parameters of one term, each (D, N) float32, and its direction and input shift."""

    q: Tensor
    a: Tensor
    b: Tensor
    reverse: bool = False
    shift: int = 0


def _grid(x: Tensor, chunk: int) -> Tuple[int, int, int]:
    length, batch, dim = x.shape
    return batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(length, chunk)


def _scan(x: Tensor, y: Tensor, q: Tensor, a: Tensor, b: Tensor, *, reverse: bool, in_shift: int,
          out_shift: int, accumulate: bool, need_states: bool, h0: Optional[Tensor] = None,
          h_final: Optional[Tensor] = None) -> Tuple[Optional[Tensor], Optional[Tensor], int]:
    """y (+)= term(x), both (L, B, D) contiguous; q, a, b (N, D) float32.
    Returns the unscaled incoming state of every chunk and its q-derivative, (B*nC, N, D) each
    (when need_states), and the chunk length."""
    length, batch, dim = x.shape
    n_dim = q.size(0)
    chunk = chunk_length(length, batch * triton.cdiv(dim, BLOCK_D))
    grid = _grid(x, chunk)
    num_chunks = grid[2]
    buffer = dict(device=x.device, dtype=torch.float32)
    w_local = torch.empty(batch * num_chunks, n_dim, dim, **buffer)
    v_local = torch.empty_like(w_local) if need_states else w_local
    _chunk_states_kernel[grid](
        x, q, w_local, v_local, length, dim, x.stride(0), x.stride(1), in_shift,
        TC=chunk, N=n_dim, BLOCK=BLOCK_D, REVERSE=reverse, NEED_V=need_states, num_warps=BLOCK_D // 32)
    h_in = torch.empty_like(w_local)
    w_in = torch.empty_like(w_local) if need_states else None
    v_in = torch.empty_like(w_local) if need_states else None
    _chunk_prefix_kernel[grid[:2]](
        w_local, v_local, q, a, h0 if h0 is not None else h_in, h_in,
        w_in if need_states else h_in, v_in if need_states else h_in,
        h_final if h_final is not None else h_in, length, dim,
        NUM_CHUNKS=num_chunks, TC=chunk, N=n_dim, BLOCK=BLOCK_D, NEED_V=need_states, HAS_H0=h0 is not None,
        STORE_FINAL=h_final is not None, num_warps=BLOCK_D // 32)
    _chunk_outputs_kernel[grid](
        x, y, q, a, b, h_in, length, dim, x.stride(0), x.stride(1), in_shift, out_shift,
        TC=chunk, N=n_dim, BLOCK=BLOCK_D, REVERSE=reverse, ACCUMULATE=accumulate, num_warps=BLOCK_D // 32)
    return w_in, v_in, chunk


def _param_sums(x: Tensor, g: Tensor, q: Tensor, w_in: Tensor, v_in: Tensor, *, reverse: bool, shift: int,
                chunk: int) -> Tuple[Tensor, Tensor]:
    """sum over batch and time of g * w and g * dw/dq, each (N, D) float32."""
    length, batch, dim = x.shape
    grid = _grid(x, chunk)
    sum_w = torch.empty_like(w_in)
    sum_v = torch.empty_like(w_in)
    _param_grads_kernel[grid](
        x, g, q, w_in, v_in, sum_w, sum_v, length, dim, x.stride(0), x.stride(1), g.stride(0), g.stride(1),
        shift, TC=chunk, N=q.size(0), BLOCK=BLOCK_D, REVERSE=reverse, num_warps=BLOCK_D // 32)
    return sum_w.sum(0), sum_v.sum(0)


EPILOGUE_BLOCK = 1024  # elements per program of the forward epilogue
EPILOGUE_ROWS, EPILOGUE_CHANNELS = 32, 64  # tile of the backward epilogue


def _residual_silu(y: Tensor, x: Tensor, omega: Tensor) -> Tensor:
    """silu(y + omega * x) for y, x (L, B, D) contiguous, in the dtype torch would promote to."""
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, omega.dtype))
    _residual_silu_kernel[(triton.cdiv(x.numel(), EPILOGUE_BLOCK),)](
        y, x, omega, out, x.numel(), x.size(-1), BLOCK=EPILOGUE_BLOCK, num_warps=4)
    return out


def _residual_silu_backward(grad_out: Tensor, y: Tensor, x: Tensor, omega: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of silu(y + omega * x): for y (y's dtype), for x through the residual (x's dtype),
    for omega (float32)."""
    dim = x.size(-1)
    rows = x.numel() // dim
    grid = (triton.cdiv(rows, EPILOGUE_ROWS), triton.cdiv(dim, EPILOGUE_CHANNELS))
    grad_y, grad_x = torch.empty_like(y), torch.empty_like(x)
    grad_omega = torch.empty(grid[0], dim, device=x.device, dtype=torch.float32)
    _residual_silu_backward_kernel[grid](
        grad_out, y, x, omega, grad_y, grad_x, grad_omega, rows, dim,
        ROWS=EPILOGUE_ROWS, BLOCK=EPILOGUE_CHANNELS, num_warps=4)
    return grad_y, grad_x, grad_omega.sum(0)


class _FusedEMALayer(torch.autograd.Function):
    """silu(sum over terms of term(signal) + omega * x); x, signal (L, B, D) contiguous (signal: x
    with pads zeroed, or x itself); omega (D,); params flat (q, a, b) per term, (D, N) float32."""

    @staticmethod
    def forward(ctx, x: Tensor, signal: Tensor, omega: Tensor, directions: Tuple[Tuple[bool, int], ...],
                *params: Tensor) -> Tensor:
        y = torch.empty_like(signal)
        need_states = any(ctx.needs_input_grad[4:])
        transposed = [p.detach().t().contiguous() for p in params]
        saved = []
        for index, (reverse, shift) in enumerate(directions):
            q, a, b = transposed[3 * index: 3 * index + 3]
            w_in, v_in, ctx.chunk = _scan(signal, y, q, a, b, reverse=reverse, in_shift=shift, out_shift=0,
                                          accumulate=index > 0, need_states=need_states)
            saved += [w_in, v_in] if need_states else []
        ctx.directions, ctx.need_states, ctx.same_input = directions, need_states, signal is x
        ctx.save_for_backward(x, signal, y, omega, *transposed, *saved)
        return _residual_silu(y, x, omega)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, signal, y, omega, *rest = ctx.saved_tensors
        num_terms = len(ctx.directions)
        transposed, saved = rest[: 3 * num_terms], rest[3 * num_terms:]
        grad_y, grad_x, grad_omega = _residual_silu_backward(grad_out.contiguous(), y, x, omega.detach())
        grad_signal = grad_x if ctx.same_input else torch.zeros_like(signal)
        param_grads: List[Optional[Tensor]] = []
        for index, (reverse, shift) in enumerate(ctx.directions):
            q, a, b = transposed[3 * index: 3 * index + 3]
            _scan(grad_y, grad_signal, q, b, a, reverse=not reverse, in_shift=0, out_shift=shift,
                  accumulate=True, need_states=False)
            if ctx.need_states:
                w_in, v_in = saved[2 * index: 2 * index + 2]
                sum_w, sum_v = _param_sums(signal, grad_y, q, w_in, v_in, reverse=reverse, shift=shift,
                                           chunk=ctx.chunk)
                param_grads += [(a * b * sum_v).t(), (b * sum_w).t(), (a * sum_w).t()]
            else:
                param_grads += [None, None, None]
        if ctx.same_input:
            return (grad_x, None, grad_omega.to(omega.dtype), None, *param_grads)
        return (grad_x, grad_signal, grad_omega.to(omega.dtype), None, *param_grads)


def _check_inputs(x: Tensor, params: Sequence[Tensor]) -> None:
    if triton is None:
        raise RuntimeError("the fused EMA needs triton (--ema-impl triton); use --ema-impl fft")
    if not x.is_cuda and not interpreting():
        raise RuntimeError("the fused EMA runs on CUDA tensors only (--ema-impl triton); use --ema-impl fft on a CPU")
    n_dim = params[0].size(-1)
    if n_dim & (n_dim - 1):
        raise ValueError(f"the fused EMA needs a power-of-two n-dim (EMA order), got {n_dim}; use --ema-impl fft")


@torch.compiler.disable
def fused_ema_layer(x: Tensor, omega: Tensor, terms: Sequence[ScanTerm],
                    padding_mask: Optional[Tensor] = None) -> Tensor:
    """The EMA sub-layer silu(EMA(x) + omega * x), the EMA the sum of ``terms`` over x (L, B, D)
    with pads (padding_mask (B, L), True at pads) zeroed; differentiable in x, omega (D,) and every
    term's q, a, b (D, N). Returns (L, B, D) in the dtype of x * omega.

    Under torch.compile it runs as is, between compiled graphs: its launch shapes are computed from
    the sequence length, which would make the compiler specialize on every length."""
    params = [p for term in terms for p in (term.q, term.a, term.b)]
    _check_inputs(x, params)
    x = x.contiguous()
    signal = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    directions = tuple((term.reverse, term.shift) for term in terms)
    return _FusedEMALayer.apply(x, signal, omega, directions, *[p.float() for p in params])


@torch.no_grad()
def fused_ema_with_state(x: Tensor, q: Tensor, a: Tensor, b: Tensor, h0: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Causal EMA from a carried state, no gradients. x (L, B, D); q, a, b (D, N); h0 (B, D, N)
    scaled hidden state or None. Returns y (L, B, D) float32 and the final state (B, D, N)."""
    _check_inputs(x, [q])
    length, batch, dim = x.shape
    x = x.contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    h_final = torch.empty(batch, dim, q.size(-1), device=x.device, dtype=torch.float32)
    q_t, a_t, b_t = (p.float().t().contiguous() for p in (q, a, b))
    h0 = None if h0 is None else h0.float().contiguous()
    _scan(x, y, q_t, a_t, b_t, reverse=False, in_shift=0, out_shift=0, accumulate=False, need_states=False,
          h0=h0, h_final=h_final)
    return y, h_final
