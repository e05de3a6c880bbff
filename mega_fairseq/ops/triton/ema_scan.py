"""The fused EMA layer on the GPU (Triton): forward, backward and carried-state steps, as
``torch.library`` custom operators; ``ops.ema.fft_ema`` is the reference path.

The layer is ``out = silu(y + omega * x)`` with y the EMA of x (pads zeroed). Per direction
(time forward, and backward for bidirectional layers), channel d and EMA dimension n::

    s[t] = q s[t-1] + x[t] - q^K x[t-K]        (the q^K term only for a truncation K < L)
    y[t] += sum_n a c s[t]                     q = 1 - p sigmoid(alpha), p = sigmoid(delta),
                                               a = p beta, c = gamma sqrt(1/N)

(the backward direction reads t+1 and t+K for t-1 and t-K). The kernels (``ema_kernels``) compute
q, a, c from the raw (D', N) parameters themselves, and the launches per layer are:

* short sequences (one time chunk, see ``chunk_length``): forward 1 launch (every direction and the
  truncation, padding, the residual and SiLU), backward 2 (dx through the epilogue and one adjoint
  scan per direction with per-(row block, chunk) partial parameter sums, then one reduction that
  applies the chain rule to alpha, delta, beta, gamma and sums omega's gradient);
* long sequences (several chunks): forward 3 (chunk states, chunk prefix, chunk outputs), backward
  4 (chunk states and prefix of the adjoint and its q-derivative, the chunk pass, the reduction),
  each launch covering every direction and the truncation;
* a decoding step (or several) from a carried state (B, D, N) updated in place: 1 launch (3 when
  several chunks long).

Under autocast the output can be written in autocast's dtype (the projection reading it would cast
it), and the forward launch can also write x in that dtype for the block's other projection
(``fused_ema_layer_with_copy``); the backward kernel then sums that copy's gradient into dx. That
removes four casts (two each way) and a gradient sum per layer: five launches and about 0.5 GB of
memory traffic at 32k tokens x 512 channels.

Backward math, per direction: with dz the gradient at z, the adjoint nu[t] = q nu[t+1] + dz[t] -
q^K dz[t+K] gives d x[t] = sum_n a c nu[t] (pads excluded). The parameters need U = sum dz s and
V = sum dz ds/dq over batch and time; exchanging the order of the double sums gives U = sum x nu and
V = sum x w with w = d nu / dq (w[t] = q w[t+1] + nu[t+1] - K q^(K-1) dz[t+K]) and x with pads
zeroed, so the adjoint's scan yields them without a forward-mode scan of s. Then d a = c U,
d c = a U, d q = a c V, hence d gamma = scale a U, d beta = p c U,
d delta = (beta c U - sigmoid(alpha) a c V) p (1 - p), d alpha = -p sigmoid(alpha)(1 - sigmoid(alpha)) a c V.

In eager mode the layer runs through an ``autograd.Function`` (a custom operator's dispatch costs
several times more host time); under ``torch.compile`` it is the operators ``mega::ema_layer``
(+ ``mega::ema_layer_backward``) and ``mega::ema_with_state``, traced without a graph break; their
launch shapes are computed inside, so new lengths and batch sizes do not recompile.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import interpreting, triton_available

try:
    import triton

    from . import ema_kernels as kernels
except ImportError:  # CPU-only installs: the FFT path is used
    triton = None

__all__ = ["fused_ema_layer", "fused_ema_layer_with_copy", "fused_ema_with_state", "chunk_length", "triton_available",
           "interpreting"]

BD = 32  # channels per batch row of a program (one warp)
# batch rows per program (its warps), which share the parameter work and partial sums; one row (more
# programs) is faster in the forward pass and in the backward over float32 inputs, four in the backward
# over 16-bit inputs (benchmarks/kernels/tune_kernels.py on an H200)
MAX_ROWS = 1
MAX_ROWS_BACKWARD_HALF = 4
# registers a thread of the scan kernels may use (Triton's maxnreg; 0: the compiler's choice): of the
# forward pass's launches, of the backward's chunk states, of the backward scan. Chosen when, left to
# ptxas, the bidirectional forward (with the EMA kept for the backward) took 250 and the backward 255
# with spills (sm_90a, ptxas -v): in the Mega layer at 32k tokens (H200, profiler kernel times,
# benchmarks/RESULTS.md), a cap of 168 made the forward scan 0.226 -> 0.195 ms and 208 the backward's
# chunk states about 0.03 ms faster; capping the backward scan made it slower. Since dc1f8a1 (direction
# loops unrolled, unscaled forward state, scalar time offsets) the forward takes 126 left to ptxas and
# the backward 255 without spills; the forward's cap of 168, 128 or none then timed within noise.
MAX_REGISTERS_FORWARD = 168
MAX_REGISTERS_BACKWARD_STATES = 208
MAX_REGISTERS_BACKWARD = 0
# software-pipeline stages of the loops over 8-step groups that load (8, COLS) tiles: the chunk-state
# launches always, the backward scan where ``_tiled_backward`` says. In the layer at 32k
# tokens (H200, benchmarks/RESULTS.md) the tiles took the chunk states 0.20 -> 0.15 ms and the backward
# over float32 x 0.41 -> 0.37 ms; the forward scan was slower with them (0.20 -> 0.35 ms) and keeps
# its loads of single rows.
STAGES = 3
# warps over all chunks of a scan: at 32k tokens 4,096 (forward time chunks of 128; the backward's stay
# 256) took the layer's EMA kernels 0.751 -> 0.741 ms at L 4k and 0.738 -> 0.730 ms at 1k against 8,192
# (H200, benchmarks/RESULTS.md)
TARGET_WARPS = 4096
# an untruncated bidirectional layer's forward chunk states from one pass over x for both directions
# (_joint_chunk_states_kernel, half the reads, 128-160 registers) instead of a program per direction
# (_chunk_states_kernel, 64-87 registers): the layer's EMA kernels 0.60 -> 0.55 ms at L 4k (H200,
# benchmarks/RESULTS.md)
JOINT_CHUNK_STATES = True
MIN_CHUNK = 64  # the forward's shortest time chunk
MIN_BACKWARD_CHUNK = 256  # longer in the backward: its partial sums (2 * DIRS * N floats a column) stay small
FINALIZE_BLOCK, FINALIZE_ROWS = 128, 16  # tile of the partial-sum reduction


def chunk_length(length: int, warps_per_chunk: int, min_chunk: int = MIN_CHUNK) -> int:
    """Time chunk TC, a power of two >= min_chunk, with about TARGET_WARPS warps over all chunks.

    The whole sequence is one chunk (no chunk-state launches) when it is at most min_chunk long or
    when the batch rows and channels alone (warps_per_chunk = B x D/32) fill the machine: more
    chunks would add launches and rescans but no parallelism that is missing."""
    wanted_chunks = max(1, TARGET_WARPS // max(warps_per_chunk, 1))
    chunk = min_chunk
    while chunk * wanted_chunks < length:
        chunk *= 2
    return chunk


def _plan(x: Tensor, min_chunk: int, max_rows: int) -> Tuple[int, int, Tuple[int, int, int]]:
    """Batch rows per program, chunk length and grid (row blocks, channel blocks, chunks) for x (L, B, D)."""
    length, batch, dim = x.shape
    rows = min(max_rows, triton.next_power_of_2(batch))
    chunk = chunk_length(length, batch * triton.cdiv(dim, BD), min_chunk)
    return rows, chunk, (triton.cdiv(batch, rows), triton.cdiv(dim, BD), triton.cdiv(length, chunk))


def _forward(x: Tensor, mask: Optional[Tensor], alpha: Tensor, delta: Tensor, beta: Tensor, gamma: Tensor,
             omega: Tensor, bidirectional: bool, truncation: int, keep_y: bool, h0: Optional[Tensor] = None,
             final: Optional[Tensor] = None, out_dtype: Optional[torch.dtype] = None,
             copy_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """out = silu(EMA(x) + omega x) (L, B, D), in out_dtype (None: the dtype of x * omega), the EMA y in
    x's dtype (keep_y, else None) and x in copy_dtype, written by the same launch (None without one).
    x contiguous, mask (B, L) contiguous or None; h0: the carried scaled state (B, D, N) float32 of a
    causal EMA (None: zero); final: where its last state goes (may be h0)."""
    length, batch, dim = x.shape
    n_dim = alpha.size(1)
    dirs = 2 if bidirectional else 1
    truncated = 0 < truncation < length
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype or torch.promote_types(x.dtype, omega.dtype))
    # a bidirectional scan keeps its first direction's part of y there until the second pass adds its own
    y = torch.empty_like(x) if keep_y or bidirectional else None
    x_copy = None if copy_dtype is None else torch.empty(x.shape, device=x.device, dtype=copy_dtype)
    if x.numel() == 0:
        return out, y if keep_y else None, x_copy
    rows, chunk, grid = _plan(x, MIN_CHUNK, MAX_ROWS)
    num_chunks = grid[2]
    scale = n_dim ** -0.5
    cut = truncation if truncated else 0
    mask_arg = x if mask is None else mask
    params = (alpha, delta, beta, gamma)
    shape = dict(N=n_dim, ROWS=rows, BD=BD, DIRS=dirs, num_warps=rows)
    cap = _register_cap(MAX_REGISTERS_FORWARD)
    scan = dict(shape, TRUNCATED=truncated, HAS_MASK=mask is not None, **cap)
    if num_chunks > 1:
        states = torch.empty(batch, num_chunks, dirs, n_dim, dim, device=x.device, dtype=torch.float32)
        if dirs == 2 and not truncated and JOINT_CHUNK_STATES:
            kernels._joint_chunk_states_kernel[grid](
                x, mask_arg, *params, states, length, batch, dim, chunk, num_chunks, N=n_dim, ROWS=rows, BD=BD,
                HAS_MASK=mask is not None, STAGES=STAGES, num_warps=rows, **cap)
        else:
            kernels._chunk_states_kernel[grid[:2] + (num_chunks * dirs,)](
                x, mask_arg, x, x, *params, omega, states, length, batch, dim, chunk, cut, scale, num_chunks, 0,
                GRAD=False, STAGES=STAGES, **scan)
        kernels._chunk_prefix_kernel[grid[:2] + (dirs,)](
            states, *params, x if h0 is None else h0, length, batch, dim, chunk, num_chunks, 0,
            HAS_H0=h0 is not None, GRAD=False, **shape)
        strides = states.stride()[:3] + (dim, 1)
    elif h0 is not None:
        states, strides = h0, (dim * n_dim, 0, 0, 1, n_dim)
    else:
        states, strides = x, (0, 0, 0, 0, 0)
    kernels._ema_forward_kernel[grid](
        x, mask_arg, *params, omega, states, x if final is None else final, x if y is None else y, out,
        x if x_copy is None else x_copy, length, batch, dim, chunk, cut, scale, *strides,
        STATE_IN=num_chunks > 1 or h0 is not None, STORE_FINAL=final is not None, STORE_Y=keep_y,
        STORE_X=x_copy is not None, SCALED_STATE=h0 is not None, **scan)
    return out, y if keep_y else None, x_copy


def _tiled_backward(rows: int, num_chunks: int) -> bool:
    """Whether the backward scan loads (8, COLS) tiles (software-pipelined; otherwise rows, in a loop
    without a pipeline): with one batch row per program (float32 x at 32k tokens: 0.41 -> 0.37 ms
    bidirectional, 0.16 -> 0.14 ms causal) or one chunk (Multi30k-like batches, 37 x 256, 16-bit x,
    4 rows: encoder 0.25 -> 0.13 ms, decoder 0.09 -> 0.055 ms), not with several rows and chunks
    (16-bit x at 32k tokens: 2.4x slower). benchmarks/RESULTS.md, H200."""
    return rows == 1 or num_chunks == 1


def _register_cap(registers: int) -> dict:
    """The launch option capping a scan kernel's registers per thread (none for 0)."""
    return {"maxnreg": registers} if registers else {}


def _backward(grad_out: Optional[Tensor], x: Tensor, mask: Optional[Tensor], y: Tensor, alpha: Tensor, delta: Tensor,
              beta: Tensor, gamma: Tensor, omega: Tensor, bidirectional: bool, truncation: int,
              grad_copy: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``_forward``'s out for x and alpha, delta, beta, gamma, omega, from grad_out (L, B, D)
    (None: zero, when only the copy has a gradient) and the saved EMA y; each in its input's dtype.
    grad_copy (L, B, D): the gradient of the forward's copy of x, summed into x's."""
    length, batch, dim = x.shape
    n_dim = alpha.size(1)
    dirs = 2 if bidirectional else 1
    truncated = 0 < truncation < length
    params = (alpha, delta, beta, gamma)
    dx = torch.empty_like(x)
    grads = [torch.empty_like(p) for p in params + (omega,)]
    if x.numel() == 0:
        return (dx, *(grad.zero_() for grad in grads))
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    grad_copy = None if grad_copy is None else grad_copy.contiguous()
    rows, chunk, grid = _plan(x, MIN_BACKWARD_CHUNK,
                              MAX_ROWS_BACKWARD_HALF if x.element_size() == 2 else MAX_ROWS)
    num_chunks = grid[2]
    scale = n_dim ** -0.5
    cut = truncation if truncated else 0
    mask_arg = x if mask is None else mask
    shape = dict(N=n_dim, ROWS=rows, BD=BD, DIRS=dirs, num_warps=rows)
    scan = dict(shape, TRUNCATED=truncated, HAS_MASK=mask is not None)
    plane = batch * num_chunks * dirs * n_dim * dim
    states = x
    if num_chunks > 1:
        states = torch.empty(2 * plane, device=x.device, dtype=torch.float32)
        kernels._chunk_states_kernel[grid[:2] + (num_chunks * dirs,)](
            x, mask_arg, grad_out, y, *params, omega, states, length, batch, dim, chunk, cut, scale, num_chunks,
            plane, GRAD=True, STAGES=STAGES, **scan, **_register_cap(MAX_REGISTERS_BACKWARD_STATES))
        kernels._chunk_prefix_kernel[grid[:2] + (dirs,)](
            states, *params, x, length, batch, dim, chunk, num_chunks, plane, HAS_H0=False, GRAD=True, **shape)
    partial = torch.empty(grid[0] * num_chunks, 2 * dirs * n_dim * dim + dim, device=x.device, dtype=torch.float32)
    tiled = _tiled_backward(rows, num_chunks)
    kernels._ema_backward_kernel[grid](
        grad_out, x, mask_arg, y, *params, omega, states, dx, partial, x if grad_copy is None else grad_copy,
        length, batch, dim, chunk, cut, scale, num_chunks, plane, STATE_IN=num_chunks > 1,
        HAS_G_COPY=grad_copy is not None, TILED=tiled, STAGES=STAGES if tiled else 1, **scan,
        **_register_cap(MAX_REGISTERS_BACKWARD))
    programs = triton.cdiv(dirs * n_dim * dim, FINALIZE_BLOCK) + triton.cdiv(dim, FINALIZE_BLOCK)
    kernels._grad_finalize_kernel[(programs,)](
        partial, partial.size(0), *params, *grads, dim, scale,
        N=n_dim, DIRS=dirs, BLOCK=FINALIZE_BLOCK, ROW_BLOCK=FINALIZE_ROWS, num_warps=4)
    return (dx, *grads)


class _EMALayer(torch.autograd.Function):
    """The layer in eager mode: ``_forward`` and ``_backward`` without the custom operators' dispatch.
    Returns out, or (out, the copy of x) with copy_dtype."""

    @staticmethod
    def forward(ctx, x, mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, out_dtype, copy_dtype):
        out, y, x_copy = _forward(x, mask, alpha, delta, beta, gamma, omega, bidirectional, truncation,
                                  keep_y=True, out_dtype=out_dtype, copy_dtype=copy_dtype)
        ctx.save_for_backward(x, mask, y, alpha, delta, beta, gamma, omega)
        ctx.bidirectional, ctx.truncation = bidirectional, truncation
        ctx.set_materialize_grads(False)
        return out if x_copy is None else (out, x_copy)

    @staticmethod
    def backward(ctx, grad_out, grad_copy=None):
        dx, *param_grads = _backward(grad_out, *ctx.saved_tensors, ctx.bidirectional, ctx.truncation, grad_copy)
        return (dx, None, *param_grads, None, None, None, None)


# ------------------------------------------------------------------ custom operators (torch.compile)


@torch.library.custom_op("mega::ema_layer", mutates_args=())
def _ema_layer_op(x: Tensor, padding_mask: Optional[Tensor], alpha: Tensor, delta: Tensor, beta: Tensor,
                  gamma: Tensor, omega: Tensor, bidirectional: bool, truncation: int,
                  out_dtype: Optional[torch.dtype], copy_dtype: Optional[torch.dtype]
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, y, copy of x): the layer output, the EMA saved for the backward and x in copy_dtype (empty
    without one)."""
    out, y, x_copy = _forward(x.contiguous(), _contiguous(padding_mask), alpha, delta, beta, gamma, omega,
                              bidirectional, truncation, keep_y=True, out_dtype=out_dtype, copy_dtype=copy_dtype)
    return out, y, x.new_empty((0,)) if x_copy is None else x_copy


@_ema_layer_op.register_fake
def _(x, padding_mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, out_dtype, copy_dtype):
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype or torch.promote_types(x.dtype, omega.dtype))
    x_copy = torch.empty(x.shape if copy_dtype else (0,), device=x.device, dtype=copy_dtype or x.dtype)
    return out, torch.empty(x.shape, device=x.device, dtype=x.dtype), x_copy


@torch.library.custom_op("mega::ema_layer_backward", mutates_args=())
def _ema_layer_backward_op(grad_out: Optional[Tensor], grad_copy: Optional[Tensor], x: Tensor, padding_mask: Optional[Tensor],
                           y: Tensor, alpha: Tensor, delta: Tensor, beta: Tensor, gamma: Tensor, omega: Tensor,
                           bidirectional: bool, truncation: int
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _backward(grad_out, x.contiguous(), _contiguous(padding_mask), y.contiguous(), alpha, delta, beta,
                     gamma, omega, bidirectional, truncation, grad_copy)


@_ema_layer_backward_op.register_fake
def _(grad_out, grad_copy, x, padding_mask, y, alpha, delta, beta, gamma, omega, bidirectional, truncation):
    return tuple(torch.empty(t.shape, device=t.device, dtype=t.dtype) for t in (x, alpha, delta, beta, gamma, omega))


def _setup_context(ctx, inputs, output):
    x, mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, _out_dtype, copy_dtype = inputs
    y = output[1]
    ctx.save_for_backward(x, mask, y, alpha, delta, beta, gamma, omega)
    ctx.bidirectional, ctx.truncation = bidirectional, truncation
    ctx.mark_non_differentiable(y)
    if copy_dtype is None:
        ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # no zero gradient is built for y or an unused copy


def _op_backward(ctx, grad_out, _grad_y, grad_copy):
    if grad_out is None and grad_copy is None:
        return (None,) * 11
    dx, *param_grads = _ema_layer_backward_op(grad_out, grad_copy, *ctx.saved_tensors, ctx.bidirectional,
                                              ctx.truncation)
    return (dx, None, *param_grads, None, None, None, None)


_ema_layer_op.register_autograd(_op_backward, setup_context=_setup_context)


@torch.library.custom_op("mega::ema_with_state", mutates_args=("state",))
def _ema_with_state_op(x: Tensor, padding_mask: Optional[Tensor], alpha: Tensor, delta: Tensor, beta: Tensor,
                       gamma: Tensor, omega: Tensor, state: Tensor, carried: bool) -> Tensor:
    """The causal layer from state (B, D, N) float32 (read when carried), which is updated in place."""
    return _forward(x.contiguous(), _contiguous(padding_mask), alpha, delta, beta, gamma, omega, False, 0,
                    keep_y=False, h0=state if carried else None, final=state)[0]


@_ema_with_state_op.register_fake
def _(x, padding_mask, alpha, delta, beta, gamma, omega, state, carried):
    return torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, omega.dtype))


# ------------------------------------------------------------------ public functions


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _check_inputs(x: Tensor, alpha: Tensor) -> None:
    if triton is None:
        raise RuntimeError("the fused EMA needs triton (--ema-impl triton); use --ema-impl fft")
    if not x.is_cuda and not interpreting():
        raise RuntimeError("the fused EMA runs on CUDA tensors only (--ema-impl triton); use --ema-impl fft on a CPU")
    n_dim = alpha.size(-1)
    if n_dim & (n_dim - 1):
        raise ValueError(f"the fused EMA needs a power-of-two n-dim (EMA order), got {n_dim}; use --ema-impl fft")


def fused_ema_layer(x: Tensor, padding_mask: Optional[Tensor], alpha: Tensor, delta: Tensor, beta: Tensor,
                    gamma: Tensor, omega: Tensor, bidirectional: bool, truncation: int = 0,
                    out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """The EMA sub-layer silu(EMA(x) + omega * x) of x (L, B, D), pads (padding_mask (B, L), True at
    pads) zeroed in the EMA; alpha, delta, beta, gamma (D', N) raw parameters (D' = 2D when
    bidirectional), omega (D,); truncation K > 0 keeps the lags < K. Differentiable in x and every
    parameter. Returns (L, B, D) in out_dtype (None: the dtype of x * omega)."""
    return _layer(x, padding_mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, out_dtype, None)[0]


def fused_ema_layer_with_copy(x: Tensor, padding_mask: Optional[Tensor], alpha: Tensor, delta: Tensor,
                              beta: Tensor, gamma: Tensor, omega: Tensor, bidirectional: bool, truncation: int,
                              dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """``fused_ema_layer`` with its output in dtype, and x cast to dtype by the same launch (the input of
    the block's other projection under autocast); x's gradient sums both paths in the backward kernel.
    Returns (out, x in dtype), (L, B, D) each."""
    return _layer(x, padding_mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, dtype, dtype)


def _layer(x, padding_mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, out_dtype, copy_dtype
           ) -> Tuple[Tensor, Optional[Tensor]]:
    _check_inputs(x, alpha)
    if torch.compiler.is_compiling():
        out, _, x_copy = _ema_layer_op(x, padding_mask, alpha, delta, beta, gamma, omega, bidirectional, truncation,
                                       out_dtype, copy_dtype)
        return out, x_copy if copy_dtype else None
    x, mask = x.contiguous(), _contiguous(padding_mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, alpha, delta, beta, gamma, omega)):
        outputs = _EMALayer.apply(x, mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, out_dtype,
                                  copy_dtype)
        return outputs if copy_dtype else (outputs, None)
    out, _, x_copy = _forward(x, mask, alpha, delta, beta, gamma, omega, bidirectional, truncation, keep_y=False,
                              out_dtype=out_dtype, copy_dtype=copy_dtype)
    return out, x_copy


def fused_ema_with_state(x: Tensor, padding_mask: Optional[Tensor], alpha: Tensor, delta: Tensor, beta: Tensor,
                         gamma: Tensor, omega: Tensor, hidden: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The causal EMA sub-layer from a carried state, no gradients: x (L, B, D) or one step (B, D);
    padding_mask (B, L) (or (B,) for a step) or None; hidden: the scaled state (B, D, N) float32,
    UPDATED IN PLACE (one launch per step, nothing else allocated but the output), or None for a
    zero start. Returns the output (shaped as x, dtype of x * omega) and the new state (hidden
    itself when given). An untruncated recurrence, as ``ops.ema.ema_chunk_with_state``."""
    _check_inputs(x, alpha)
    one_step = x.dim() == 2
    x3 = x.unsqueeze(0) if one_step else x
    length, batch, dim = x3.shape
    n_dim = alpha.size(1)
    carried = hidden is not None
    if hidden is None:
        hidden = torch.empty(batch, dim, n_dim, device=x.device, dtype=torch.float32)
    elif hidden.shape != (batch, dim, n_dim) or hidden.dtype != torch.float32 or not hidden.is_contiguous():
        raise ValueError(f"the fused EMA's carried state must be a contiguous float32 (B, D, N) = "
                         f"{(batch, dim, n_dim)} tensor, got {hidden.dtype} {tuple(hidden.shape)}")
    mask = None if padding_mask is None else padding_mask.reshape(batch, length)
    if torch.compiler.is_compiling():
        out = _ema_with_state_op(x3, mask, alpha, delta, beta, gamma, omega, hidden, carried)
    else:
        out = _forward(x3.contiguous(), _contiguous(mask), alpha, delta, beta, gamma, omega, False, 0,
                       keep_y=False, h0=hidden if carried else None, final=hidden)[0]
    return (out.view(batch, dim) if one_step else out), hidden
