"""Triton kernels of the fused EMA layer; ``ema_scan`` holds the math, the launch plan and the ops.

Layout shared by the scan kernels: a program owns COLS = ROWS x BD *columns*, a column being one
(batch row b, channel d) pair (ROWS batch rows of BD = 32 channels, one warp per row). Each thread
holds one column and all N EMA dimensions of it, so states are (N, COLS) float32 tiles and sums
over n stay in a thread's registers. Time runs in chunks of TC steps (grid axis 2); inside a chunk
the loads of 8 steps are issued together before any of them is used. The chunk-state kernels and
(TILED) the backward load them as one (8, COLS) tile split into rows, in loops that Triton
software-pipelines (STAGES): the next tiles' asynchronous copies to shared memory run while a group
computes. Direction 0 scans time forward, direction 1 (bidirectional layers) backward; a truncated
layer (K < L) subtracts the lags >= K from the same recurrence: s[t] = q s[t-1] + x[t] - q^K x[t-K]
(t-K read t+K backward).
Incoming chunk states live in (B, nC, DIRS, N, D) float32 buffers (one plane per kind of state).
"""
import triton
import triton.language as tl

# ------------------------------------------------------------------ helpers


@triton.jit
def _columns(B, D, ROWS: tl.constexpr, BD: tl.constexpr):
    """This program's columns: batch rows b, channels d and whether they exist, (1, COLS) each (every
    per-column value is kept (1, COLS), in the layout of the (N, COLS) tiles it broadcasts against)."""
    col = tl.arange(0, ROWS * BD)[None, :]
    b = tl.program_id(0) * ROWS + col // BD
    d = tl.program_id(1) * BD + col % BD
    return b, d, (b < B) & (d < D)


@triton.jit
def _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, direction, D, scale, cut, N: tl.constexpr):
    """One direction's recurrence from the raw (D', N) parameters, (N, COLS) float32 each: decay
    q = 1 - sigmoid(delta) sigmoid(alpha), input weight a = sigmoid(delta) beta, output weight
    c = gamma scale, q^K and its q-derivative K q^(K-1) (K = cut)."""
    n = tl.arange(0, N)
    at = (direction * D + d) * N + n[:, None]
    mask = ok & (n[:, None] < N)
    alpha = tl.load(alpha_ptr + at, mask=mask, other=0.0).to(tl.float32)
    delta = tl.load(delta_ptr + at, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + at, mask=mask, other=0.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + at, mask=mask, other=0.0).to(tl.float32)
    p = tl.sigmoid(delta)
    q = 1.0 - p * tl.sigmoid(alpha)
    log_q = tl.log2(tl.maximum(q, 1e-30))
    q_cut = tl.exp2(cut * log_q)
    dq_cut = cut * tl.exp2((cut - 1) * log_q)
    return q, p * beta, gamma * scale, q_cut, dq_cut


@triton.jit
def _state_offsets(b, d, chunk, direction, num_chunks, D, DIRS: tl.constexpr, N: tl.constexpr):
    """Offsets of the (N, COLS) tile of a (B, nC, DIRS, N, D) state buffer at a chunk and direction."""
    n = tl.arange(0, N)
    row = (b.to(tl.int64) * num_chunks + chunk) * DIRS + direction
    return row * (N * D) + n[:, None] * D + d


@triton.jit
def _offsets(t, b, d, B, D):
    """Offsets of a (L, B, D) tensor's elements at time t (a scalar, or times (8, 1)) for every column,
    int64: t B D, the same for every column (a scalar's in uniform registers), + b D + d, the same at
    every time (computed once)."""
    return t.to(tl.int64) * B * D + (b.to(tl.int64) * D + d)


@triton.jit
def _load(ptr, t, b, d, ok, L, B, D):
    """A (L, B, D) tensor at time t for every column, in its dtype (0 outside the sequence)."""
    return tl.load(ptr + _offsets(t, b, d, B, D), mask=ok & (t >= 0) & (t < L), other=0.0)


@triton.jit
def _load8(ptr, t, step, b, d, ok, L, B, D, TILED: tl.constexpr = False):
    """_load at times t, t + step, ..., t + 7 step, issued together; TILED: as one (8, COLS) load split
    into its rows (a loop over groups can prefetch it, see the module docstring)."""
    if TILED:
        at = t + step * tl.arange(0, 8)[:, None]
        rows = _rows8(tl.load(ptr + _offsets(at, b, d, B, D), mask=ok & (at >= 0) & (at < L), other=0.0))
    else:
        rows = (_load(ptr, t, b, d, ok, L, B, D), _load(ptr, t + step, b, d, ok, L, B, D),
                _load(ptr, t + 2 * step, b, d, ok, L, B, D), _load(ptr, t + 3 * step, b, d, ok, L, B, D),
                _load(ptr, t + 4 * step, b, d, ok, L, B, D), _load(ptr, t + 5 * step, b, d, ok, L, B, D),
                _load(ptr, t + 6 * step, b, d, ok, L, B, D), _load(ptr, t + 7 * step, b, d, ok, L, B, D))
    return rows


@triton.jit
def _halves(tile):
    """(..., 2k) -> the two (..., k) of its last axis' even and odd positions."""
    return tl.split(tl.reshape(tile, tile.shape[:-1] + (tile.shape[-1] // 2, 2)))


@triton.jit
def _rows8(tile):
    """The 8 rows of an (8, COLS) tile, (1, COLS) each, by three halvings of its transpose (which keep
    a column's values in its thread)."""
    even, odd = _halves(tl.permute(tile, (1, 0)))
    even0, even1 = _halves(even)
    odd0, odd1 = _halves(odd)
    r0, r4 = _halves(even0)
    r2, r6 = _halves(even1)
    r1, r5 = _halves(odd0)
    r3, r7 = _halves(odd1)
    return (_as_row(r0), _as_row(r1), _as_row(r2), _as_row(r3), _as_row(r4), _as_row(r5), _as_row(r6), _as_row(r7))


@triton.jit
def _as_row(column):
    """(COLS, 1) -> (1, COLS)."""
    return tl.reshape(column, (1, column.shape[0]))


@triton.jit
def _pad(mask_ptr, t, b, ok, L, HAS_MASK: tl.constexpr):
    """Whether time t of every column's row is padding (B, L) (without a mask: unused)."""
    pad = ok
    if HAS_MASK:
        pad = tl.load(mask_ptr + b.to(tl.int64) * L + t, mask=ok & (t >= 0) & (t < L), other=0) != 0
    return pad


@triton.jit
def _pad8(mask_ptr, t, step, b, ok, L, HAS_MASK: tl.constexpr, TILED: tl.constexpr = False):
    """_pad at times t, t + step, ..., t + 7 step (TILED: one (8, COLS) load, as in _load8)."""
    if TILED and HAS_MASK:
        at = t + step * tl.arange(0, 8)[:, None]
        pads = _rows8(tl.load(mask_ptr + b.to(tl.int64) * L + at, mask=ok & (at >= 0) & (at < L), other=0) != 0)
    else:
        pads = (_pad(mask_ptr, t, b, ok, L, HAS_MASK), _pad(mask_ptr, t + step, b, ok, L, HAS_MASK),
                _pad(mask_ptr, t + 2 * step, b, ok, L, HAS_MASK), _pad(mask_ptr, t + 3 * step, b, ok, L, HAS_MASK),
                _pad(mask_ptr, t + 4 * step, b, ok, L, HAS_MASK), _pad(mask_ptr, t + 5 * step, b, ok, L, HAS_MASK),
                _pad(mask_ptr, t + 6 * step, b, ok, L, HAS_MASK), _pad(mask_ptr, t + 7 * step, b, ok, L, HAS_MASK))
    return pads


@triton.jit
def _scan_inputs8(x_ptr, mask_ptr, t, step, cut, b, d, ok, L, B, D, HAS_MASK: tl.constexpr,
                  TRUNCATED: tl.constexpr, TILED: tl.constexpr = False):
    """The inputs of 8 steps of a forward scan from time t: x and its padding flags at t, ..., t + 7 step,
    and (truncated) at the lags K behind them (without truncation, x and its flags again, unused)."""
    xs = _load8(x_ptr, t, step, b, d, ok, L, B, D, TILED)
    pads = _pad8(mask_ptr, t, step, b, ok, L, HAS_MASK, TILED)
    xks, pks = xs, pads
    if TRUNCATED:
        xks = _load8(x_ptr, t - step * cut, step, b, d, ok, L, B, D, TILED)
        pks = _pad8(mask_ptr, t - step * cut, step, b, ok, L, HAS_MASK, TILED)
    return xs, pads, xks, pks


@triton.jit
def _adjoint_inputs8(g_ptr, y_ptr, x_ptr, t, step, cut, b, d, ok, L, B, D, TRUNCATED: tl.constexpr,
                     TILED: tl.constexpr = False):
    """What 8 steps of the adjoint scan read from time t (step: the scan's direction): the output
    gradient g, the EMA y and x at t, ..., t + 7 step, and (truncated) the same K ahead of them in time
    order, at t - K step (without truncation, the first three again, unused)."""
    gs = _load8(g_ptr, t, step, b, d, ok, L, B, D, TILED)
    ys = _load8(y_ptr, t, step, b, d, ok, L, B, D, TILED)
    xs = _load8(x_ptr, t, step, b, d, ok, L, B, D, TILED)
    gks, yks, xks = gs, ys, xs
    if TRUNCATED:
        gks = _load8(g_ptr, t - step * cut, step, b, d, ok, L, B, D, TILED)
        yks = _load8(y_ptr, t - step * cut, step, b, d, ok, L, B, D, TILED)
        xks = _load8(x_ptr, t - step * cut, step, b, d, ok, L, B, D, TILED)
    return gs, ys, xs, gks, yks, xks


@triton.jit
def _adjoint_step(nu, w, g, y, x, g_cut, y_cut, x_cut, omega, q, q_cut, dq_cut, TRUNCATED: tl.constexpr):
    """One step of the adjoint nu[t] = q nu[t+1] + dz[t] - q^K dz[t+K] and of its q-derivative
    w[t] = q w[t+1] + nu[t+1] - K q^(K-1) dz[t+K]; returns nu, w and dz[t]."""
    dz = _silu_grad(g, y, x, omega)
    if TRUNCATED:
        dz_cut = _silu_grad(g_cut, y_cut, x_cut, omega)
        w = q * w + nu - dq_cut * dz_cut
        nu = q * nu + dz - q_cut * dz_cut
    else:
        w = q * w + nu
        nu = q * nu + dz
    return nu, w, dz


@triton.jit
def _signal(x, pad, HAS_MASK: tl.constexpr):
    """The EMA input: x in float32 with pads zeroed."""
    x = x.to(tl.float32)
    if HAS_MASK:
        x = tl.where(pad, 0.0, x)
    return x


@triton.jit
def _store(ptr, t, value, b, d, ok, L, B, D):
    tl.store(ptr + _offsets(t, b, d, B, D), value.to(ptr.dtype.element_ty), mask=ok & (t >= 0) & (t < L))


@triton.jit
def _silu_grad(g, y, x, omega):
    """d out / d z * g for out = silu(z), z = y + omega x; float32."""
    z = y.to(tl.float32) + omega * x.to(tl.float32)
    sig = tl.sigmoid(z)
    return g.to(tl.float32) * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _chunk_span(TC, L):
    """This program's chunk: its first time step and its length rounded up to 8 (the steps past the
    sequence end read zeros)."""
    start = tl.program_id(2) * TC
    return start, (tl.minimum(TC, L - start) + 7) // 8 * 8


@triton.jit
def _rows_sum(tile, ROWS: tl.constexpr, BD: tl.constexpr):
    """(R, ROWS * BD) -> (R, BD): the sum over this program's batch rows."""
    return tl.sum(tl.reshape(tile, (tile.shape[0], ROWS, BD)), axis=1)


# ------------------------------------------------------------------ forward


@triton.jit(do_not_specialize=["L", "B", "TC", "cut"])
def _ema_forward_kernel(
    x_ptr, mask_ptr, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, omega_ptr, state_ptr, final_ptr, y_ptr, out_ptr,
    x_copy_ptr, L, B, D, TC, cut, scale, state_stride_b, state_stride_chunk, state_stride_dir, state_stride_n,
    state_stride_d,
    N: tl.constexpr, ROWS: tl.constexpr, BD: tl.constexpr, DIRS: tl.constexpr, TRUNCATED: tl.constexpr,
    HAS_MASK: tl.constexpr, STATE_IN: tl.constexpr, STORE_FINAL: tl.constexpr, STORE_Y: tl.constexpr,
    STORE_X: tl.constexpr, SCALED_STATE: tl.constexpr,
):
    """One chunk of every direction from its incoming state, then the layer output:
    h[t] = q h[t-1] + a (x[t] - q^K x[t-K]), y = sum_n c h over the directions, out = silu(y + omega x)
    (in out's dtype). The scan carries h / a, s[t] = q s[t-1] + x[t] - q^K x[t-K], and weighs it by a c
    at the output (a multiply less a step); SCALED_STATE: the incoming state is h itself (a carried
    state), and the scan carries h. Direction 1 runs first and leaves its part of y in y (x's dtype),
    which STORE_Y overwrites with the whole EMA. STORE_X: x also goes to x_copy in its dtype (the
    projections' input under autocast). STORE_FINAL (causal): the last state goes to final (B, D, N),
    scaled."""
    b, d, ok = _columns(B, D, ROWS, BD)
    chunk = tl.program_id(2)
    start, span = _chunk_span(TC, L)
    n = tl.arange(0, N)
    tile_ok = ok & (n[:, None] < N)
    omega = tl.load(omega_ptr + d, mask=ok, other=0.0).to(tl.float32)
    for index in tl.static_range(DIRS):  # unrolled: a pass compiles without the work it masks off
        direction = DIRS - 1 - index
        step = 1 - 2 * direction
        last = direction == 0  # the pass that writes the layer output
        q, a, c, q_cut, _ = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, direction, D, scale,
                                          cut, N)
        if not SCALED_STATE:
            c = a * c
        h = tl.zeros((N, ROWS * BD), tl.float32)
        if STATE_IN:
            at = b.to(tl.int64) * state_stride_b + chunk * state_stride_chunk + direction * state_stride_dir \
                + n[:, None] * state_stride_n + d * state_stride_d
            h = tl.load(state_ptr + at, mask=tile_ok, other=0.0)
        first = start + direction * (span - 1)
        k = 0
        while k < span:
            t0 = first + step * k
            xs, pads, xks, pks = _scan_inputs8(x_ptr, mask_ptr, t0, step, cut, b, d, ok, L, B, D, HAS_MASK,
                                               TRUNCATED)
            if DIRS == 2:  # in the last pass: direction 1's part of y
                earlier = _load8(y_ptr, t0, step, b, d, ok & last, L, B, D)
            for i in tl.static_range(8):
                t = t0 + step * i
                signal = _signal(xs[i], pads[i], HAS_MASK)
                if TRUNCATED:
                    signal -= q_cut * _signal(xks[i], pks[i], HAS_MASK)
                if SCALED_STATE:
                    signal *= a
                h_next = q * h + signal
                if STORE_FINAL:
                    h_next = tl.where(t < L, h_next, h)
                h = h_next
                y = tl.sum(c * h, axis=0, keep_dims=True)
                if DIRS == 2:
                    y += earlier[i].to(tl.float32)
                if STORE_Y:
                    _store(y_ptr, t, y, b, d, ok, L, B, D)
                elif DIRS == 2:
                    _store(y_ptr, t, y, b, d, ok & (direction == 1), L, B, D)
                z = y + omega * xs[i].to(tl.float32)
                _store(out_ptr, t, z * tl.sigmoid(z), b, d, ok & last, L, B, D)
                if STORE_X:
                    _store(x_copy_ptr, t, xs[i], b, d, ok & last, L, B, D)
            k += 8
        if DIRS == 2:
            tl.debug_barrier()
        if STORE_FINAL:
            at = b.to(tl.int64) * (D * N) + d * N + n[:, None]
            tl.store(final_ptr + at, h if SCALED_STATE else a * h, mask=tile_ok & last & (start + TC >= L))


# ------------------------------------------------------------------ chunk states (long sequences)


@triton.jit(do_not_specialize=["L", "B", "TC", "cut", "num_chunks"])
def _chunk_states_kernel(
    x_ptr, mask_ptr, g_ptr, y_ptr, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, omega_ptr, states_ptr,
    L, B, D, TC, cut, scale, num_chunks, plane,
    N: tl.constexpr, ROWS: tl.constexpr, BD: tl.constexpr, DIRS: tl.constexpr, TRUNCATED: tl.constexpr,
    HAS_MASK: tl.constexpr, GRAD: tl.constexpr, STAGES: tl.constexpr,
):
    """Each chunk's own contribution, from a zero start, to the state it passes on (grid axis 2 =
    chunk * DIRS + direction). Forward: the unscaled state s at the chunk's end (plane 0). GRAD
    (backward): the adjoint nu[t] = q nu[t+1] + dz[t] - q^K dz[t+K], run against the direction, and
    its q-derivative w[t] = q w[t+1] + nu[t+1] - K q^(K-1) dz[t+K], at the chunk's start (planes 0
    and 1); dz is the gradient at z = y + omega x."""
    b, d, ok = _columns(B, D, ROWS, BD)
    chunk = tl.program_id(2) // DIRS
    direction = tl.program_id(2) % DIRS
    step = 1 - 2 * direction
    start = chunk * TC
    span = (tl.minimum(TC, L - start) + 7) // 8 * 8
    q, a, c, q_cut, dq_cut = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, direction, D, scale,
                                           cut, N)
    at = _state_offsets(b, d, chunk, direction, num_chunks, D, DIRS, N)
    tile_ok = ok & (tl.arange(0, N)[:, None] < N)
    if GRAD:
        omega = tl.load(omega_ptr + d, mask=ok, other=0.0).to(tl.float32)
        nu = tl.zeros((N, ROWS * BD), tl.float32)
        w = tl.zeros((N, ROWS * BD), tl.float32)
        first = start + (1 - direction) * (span - 1)
        for k in tl.range(0, span, 8, num_stages=STAGES):
            t0 = first - step * k
            gs, ys, xs, gks, yks, xks = _adjoint_inputs8(g_ptr, y_ptr, x_ptr, t0, -step, cut, b, d, ok, L, B, D,
                                                         TRUNCATED, TILED=True)
            for i in tl.static_range(8):
                nu, w, _ = _adjoint_step(nu, w, gs[i], ys[i], xs[i], gks[i], yks[i], xks[i], omega, q, q_cut, dq_cut,
                                         TRUNCATED)
        tl.store(states_ptr + at, nu, mask=tile_ok)
        tl.store(states_ptr + plane + at, w, mask=tile_ok)
    else:
        s = tl.zeros((N, ROWS * BD), tl.float32)
        first = start + direction * (span - 1)
        for k in tl.range(0, span, 8, num_stages=STAGES):
            t0 = first + step * k
            xs, pads, xks, pks = _scan_inputs8(x_ptr, mask_ptr, t0, step, cut, b, d, ok, L, B, D, HAS_MASK,
                                               TRUNCATED, TILED=True)
            for i in tl.static_range(8):
                s = q * s + _signal(xs[i], pads[i], HAS_MASK)
                if TRUNCATED:
                    s -= q_cut * _signal(xks[i], pks[i], HAS_MASK)
        tl.store(states_ptr + at, s, mask=tile_ok)


@triton.jit(do_not_specialize=["L", "B", "TC", "num_chunks"])
def _joint_chunk_states_kernel(
    x_ptr, mask_ptr, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, states_ptr, L, B, D, TC, num_chunks,
    N: tl.constexpr, ROWS: tl.constexpr, BD: tl.constexpr, HAS_MASK: tl.constexpr, STAGES: tl.constexpr,
):
    """The forward chunk states of both directions of an untruncated bidirectional layer from one pass
    over the chunk in time order (grid axis 2 = chunk), the values _chunk_states_kernel stores one
    direction a program: direction 0's s0 = sum_t q0^(end - t) x[t] by its recurrence; direction 1's
    s1 = sum_t q1^(t - start) x[t] by groups of 8 steps from t8: q1^(t8 - start) times the group's own
    sum, which its recurrence takes backward through the group's inputs (in registers)."""
    b, d, ok = _columns(B, D, ROWS, BD)
    chunk = tl.program_id(2)
    start, span = _chunk_span(TC, L)
    q0 = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, 0, D, 1.0, 0, N)[0]
    q1 = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, 1, D, 1.0, 0, N)[0]
    q1_squared = q1 * q1
    q1_eighth = q1_squared * q1_squared
    q1_eighth *= q1_eighth
    s0 = tl.zeros((N, ROWS * BD), tl.float32)
    s1 = tl.zeros((N, ROWS * BD), tl.float32)
    power = tl.full((N, ROWS * BD), 1.0, tl.float32)  # q1^(t8 - start)
    for k in tl.range(0, span, 8, num_stages=STAGES):
        xs, pads, _, _ = _scan_inputs8(x_ptr, mask_ptr, start + k, 1, 0, b, d, ok, L, B, D, HAS_MASK, False,
                                       TILED=True)
        group = tl.zeros((N, ROWS * BD), tl.float32)
        for i in tl.static_range(8):
            s0 = q0 * s0 + _signal(xs[i], pads[i], HAS_MASK)
            group = q1 * group + _signal(xs[7 - i], pads[7 - i], HAS_MASK)
        s1 += power * group
        power *= q1_eighth
    tile_ok = ok & (tl.arange(0, N)[:, None] < N)
    tl.store(states_ptr + _state_offsets(b, d, chunk, 0, num_chunks, D, 2, N), s0, mask=tile_ok)
    tl.store(states_ptr + _state_offsets(b, d, chunk, 1, num_chunks, D, 2, N), s1, mask=tile_ok)


@triton.jit
def _scan_chunk(i, direction, num_chunks, REVERSE: tl.constexpr):
    """The chunk at position i of a direction's scan order (direction 1 starts at the last chunk);
    REVERSE: of the opposite order (the adjoint's)."""
    if REVERSE:
        i = num_chunks - 1 - i
    return i + direction * (num_chunks - 1 - 2 * i)


@triton.jit
def _chunk_tile(ptr, b, d, i, direction, num_chunks, D, tile_ok, DIRS: tl.constexpr, N: tl.constexpr,
                REVERSE: tl.constexpr):
    """The (N, COLS) tile of a state plane at scan position i (zero past the last chunk)."""
    chunk = _scan_chunk(i, direction, num_chunks, REVERSE)
    return tl.load(ptr + _state_offsets(b, d, chunk, direction, num_chunks, D, DIRS, N),
                   mask=tile_ok & (i < num_chunks), other=0.0)


@triton.jit
def _chunk_tiles4(ptr, b, d, i, direction, num_chunks, D, tile_ok, DIRS: tl.constexpr, N: tl.constexpr,
                  REVERSE: tl.constexpr):
    """_chunk_tile at scan positions i, ..., i + 3, issued together."""
    return (_chunk_tile(ptr, b, d, i, direction, num_chunks, D, tile_ok, DIRS, N, REVERSE),
            _chunk_tile(ptr, b, d, i + 1, direction, num_chunks, D, tile_ok, DIRS, N, REVERSE),
            _chunk_tile(ptr, b, d, i + 2, direction, num_chunks, D, tile_ok, DIRS, N, REVERSE),
            _chunk_tile(ptr, b, d, i + 3, direction, num_chunks, D, tile_ok, DIRS, N, REVERSE))


@triton.jit(do_not_specialize=["L", "B", "TC", "num_chunks"])
def _chunk_prefix_kernel(
    states_ptr, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, h0_ptr,
    L, B, D, TC, num_chunks, plane,
    N: tl.constexpr, ROWS: tl.constexpr, BD: tl.constexpr, DIRS: tl.constexpr, HAS_H0: tl.constexpr,
    GRAD: tl.constexpr,
):
    """Turns the chunks' own states into incoming states, in place (grid axis 2 = direction): a chunk
    of length m maps a state S to q^m S + its own. Forward, in scan order: S (the forward scan weighs it
    by a), or with a carried h0 (B, D, N) (into direction 0) the scaled h = a S + q^t h0. GRAD, in the
    adjoint's order: nu and its q-derivative w, which a chunk maps as w -> q^m w + m q^(m-1) nu + its own.
    The scan is sequential over chunks: the own states of 4 chunks are loaded together, so that the chain
    waits on memory once per 4 chunks."""
    b, d, ok = _columns(B, D, ROWS, BD)
    direction = tl.program_id(2)
    n = tl.arange(0, N)
    tile_ok = ok & (n[:, None] < N)
    q, a, c, q_cut, dq_cut = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, direction, D, 1.0,
                                           0, N)
    log_q = tl.log2(tl.maximum(q, 1e-30))
    if HAS_H0:
        h0 = tl.load(h0_ptr + b.to(tl.int64) * (D * N) + d * N + n[:, None], mask=tile_ok,
                     other=0.0)
    state = tl.zeros((N, ROWS * BD), tl.float32)
    state_dq = tl.zeros((N, ROWS * BD), tl.float32)  # GRAD: w
    i = 0
    while i < num_chunks:
        owns = _chunk_tiles4(states_ptr, b, d, i, direction, num_chunks, D, tile_ok, DIRS, N, GRAD)
        if GRAD:
            own_ws = _chunk_tiles4(states_ptr + plane, b, d, i, direction, num_chunks, D, tile_ok, DIRS, N, True)
        for j in tl.static_range(4):
            chunk = _scan_chunk(i + j, direction, num_chunks, GRAD)
            at = _state_offsets(b, d, chunk, direction, num_chunks, D, DIRS, N)
            store_ok = tile_ok & (i + j < num_chunks)
            steps = tl.minimum(TC, L - chunk * TC).to(tl.float32)
            decay = tl.exp2(steps * log_q)
            if GRAD:
                tl.store(states_ptr + at, state, mask=store_ok)
                tl.store(states_ptr + plane + at, state_dq, mask=store_ok)
                state_dq = decay * state_dq + steps * tl.exp2((steps - 1.0) * log_q) * state + own_ws[j]
            elif HAS_H0:
                h = a * state + tl.exp2((chunk * TC).to(tl.float32) * log_q) * h0
                tl.store(states_ptr + at, h, mask=store_ok)
            else:
                tl.store(states_ptr + at, state, mask=store_ok)
            state = decay * state + owns[j]
        i += 4


# ------------------------------------------------------------------ backward


@triton.jit(do_not_specialize=["L", "B", "TC", "cut", "num_chunks"])
def _ema_backward_kernel(
    g_ptr, x_ptr, mask_ptr, y_ptr, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, omega_ptr, states_ptr,
    dx_ptr, partial_ptr, g_copy_ptr,
    L, B, D, TC, cut, scale, num_chunks, plane,
    N: tl.constexpr, ROWS: tl.constexpr, BD: tl.constexpr, DIRS: tl.constexpr, TRUNCATED: tl.constexpr,
    HAS_MASK: tl.constexpr, STATE_IN: tl.constexpr, HAS_G_COPY: tl.constexpr, TILED: tl.constexpr,
    STAGES: tl.constexpr,
):
    """One chunk of the backward pass from the gradient g of out = silu(z), z = y + omega x, in one
    scan per direction against its time order: the adjoint nu and its q-derivative w (from the
    incoming states of ``_chunk_prefix_kernel``) give dx = dz omega + the sum over directions of
    sum_n a c nu (pads excluded) and the sums U = sum x nu = sum dz s and V = sum x w = sum dz ds/dq
    (x with pads zeroed) over this program's rows and chunk, hence d(a) = c U, d(c) = a U,
    d(q) = a c V. HAS_G_COPY: dx also sums g_copy, the gradient of the forward's copy of x. Writes dx and
    one row of partial sums (U, V (2, DIRS, N, D) and sum dz x (D,)) per (row block, chunk)."""
    b, d, ok = _columns(B, D, ROWS, BD)
    chunk = tl.program_id(2)
    start, span = _chunk_span(TC, L)
    n = tl.arange(0, N)
    tile_ok = ok & (n[:, None] < N)
    omega = tl.load(omega_ptr + d, mask=ok, other=0.0).to(tl.float32)
    omega_sum = tl.zeros((1, ROWS * BD), tl.float32)
    width = 2 * DIRS * N * D + D
    partial_row = partial_ptr + (tl.program_id(0) * num_chunks + chunk).to(tl.int64) * width
    tile_d = tl.program_id(1) * BD + tl.arange(0, BD)
    for direction in tl.static_range(DIRS):  # unrolled: a pass compiles without the work it masks off
        step = 1 - 2 * direction
        first_pass = direction == 0  # writes dx from scratch and sums omega's gradient
        q, a, c, q_cut, dq_cut = _coefficients(alpha_ptr, delta_ptr, beta_ptr, gamma_ptr, d, ok, direction, D, scale,
                                               cut, N)
        ac = a * c
        nu = tl.zeros((N, ROWS * BD), tl.float32)
        w = tl.zeros((N, ROWS * BD), tl.float32)
        if STATE_IN:
            at = _state_offsets(b, d, chunk, direction, num_chunks, D, DIRS, N)
            nu = tl.load(states_ptr + at, mask=tile_ok, other=0.0)
            w = tl.load(states_ptr + plane + at, mask=tile_ok, other=0.0)
        u_sum = tl.zeros((N, ROWS * BD), tl.float32)
        v_sum = tl.zeros((N, ROWS * BD), tl.float32)
        first = start + (1 - direction) * (span - 1)
        for k in tl.range(0, span, 8, num_stages=STAGES):
            t0 = first - step * k
            gs, ys, xs, gks, yks, xks = _adjoint_inputs8(g_ptr, y_ptr, x_ptr, t0, -step, cut, b, d, ok, L, B, D,
                                                         TRUNCATED, TILED)
            pads = _pad8(mask_ptr, t0, -step, b, ok, L, HAS_MASK, TILED)
            if DIRS == 2:  # in the second pass: what the first left in dx
                earlier = _load8(dx_ptr, t0, -step, b, d, ok & (direction == 1), L, B, D, TILED)
            if HAS_G_COPY:  # summed in the first pass
                copies = _load8(g_copy_ptr, t0, -step, b, d, ok & first_pass, L, B, D, TILED)
            for i in tl.static_range(8):
                t = t0 - step * i
                nu, w, dz = _adjoint_step(nu, w, gs[i], ys[i], xs[i], gks[i], yks[i], xks[i], omega, q, q_cut, dq_cut,
                                          TRUNCATED)
                signal = _signal(xs[i], pads[i], HAS_MASK)
                u_sum += signal * nu
                v_sum += signal * w
                grad = tl.sum(ac * nu, axis=0, keep_dims=True)
                if HAS_MASK:
                    grad = tl.where(pads[i], 0.0, grad)
                direct = dz * omega
                if HAS_G_COPY:
                    direct += copies[i].to(tl.float32)
                if DIRS == 2:
                    grad += tl.where(first_pass, direct, earlier[i].to(tl.float32))
                    omega_sum += tl.where(first_pass, dz * xs[i].to(tl.float32), 0.0)
                else:
                    grad += direct
                    omega_sum += dz * xs[i].to(tl.float32)
                _store(dx_ptr, t, grad, b, d, ok, L, B, D)
        if DIRS == 2:
            tl.debug_barrier()
        out_at = n[:, None] * D + tile_d[None, :]
        out_ok = (tile_d < D)[None, :] & (n[:, None] < N)
        tl.store(partial_row + direction * N * D + out_at, _rows_sum(u_sum, ROWS, BD), mask=out_ok)
        tl.store(partial_row + (DIRS + direction) * N * D + out_at, _rows_sum(v_sum, ROWS, BD), mask=out_ok)
    omega_rows = tl.sum(tl.reshape(omega_sum, (ROWS, BD)), axis=0)
    tl.store(partial_row + 2 * DIRS * N * D + tile_d, omega_rows, mask=tile_d < D)


@triton.jit
def _column_sums(ptr, columns, ok, rows, width, ROW_BLOCK: tl.constexpr):
    """Sum over the rows of a (rows, width) float32 matrix at the given columns."""
    r = tl.arange(0, ROW_BLOCK)
    total = tl.zeros((ROW_BLOCK, columns.shape[0]), tl.float32)
    start = 0
    while start < rows:
        row = start + r
        at = row.to(tl.int64)[:, None] * width + columns[None, :]
        total += tl.load(ptr + at, mask=(row < rows)[:, None] & ok[None, :], other=0.0)
        start += ROW_BLOCK
    return tl.sum(total, axis=0)


@triton.jit(do_not_specialize=["rows"])
def _grad_finalize_kernel(
    partial_ptr, rows, alpha_ptr, delta_ptr, beta_ptr, gamma_ptr,
    dalpha_ptr, ddelta_ptr, dbeta_ptr, dgamma_ptr, domega_ptr, D, scale,
    N: tl.constexpr, DIRS: tl.constexpr, BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr,
):
    """Sums the backward kernel's partial rows and applies the chain rule from (q, a, c) to the raw
    parameters: p = sigmoid(delta), q = 1 - p sigmoid(alpha), a = p beta, c = gamma scale."""
    params = DIRS * N * D
    width = 2 * params + D
    param_programs = tl.cdiv(params, BLOCK)
    pid = tl.program_id(0)
    if pid < param_programs:
        i = pid * BLOCK + tl.arange(0, BLOCK)
        ok = i < params
        u = _column_sums(partial_ptr, i, ok, rows, width, ROW_BLOCK)
        v = _column_sums(partial_ptr + params, i, ok, rows, width, ROW_BLOCK)
        direction = i // (N * D)
        at = (direction * D + i % D) * N + (i // D) % N
        alpha = tl.load(alpha_ptr + at, mask=ok, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + at, mask=ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + at, mask=ok, other=0.0).to(tl.float32)
        gamma = tl.load(gamma_ptr + at, mask=ok, other=0.0).to(tl.float32)
        p = tl.sigmoid(delta)
        sig_alpha = tl.sigmoid(alpha)
        a = p * beta
        c = gamma * scale
        grad_a = c * u
        grad_q = a * c * v
        tl.store(dgamma_ptr + at, (scale * a * u).to(dgamma_ptr.dtype.element_ty), mask=ok)
        tl.store(dbeta_ptr + at, (p * grad_a).to(dbeta_ptr.dtype.element_ty), mask=ok)
        tl.store(ddelta_ptr + at, ((beta * grad_a - sig_alpha * grad_q) * p * (1.0 - p)).to(
            ddelta_ptr.dtype.element_ty), mask=ok)
        tl.store(dalpha_ptr + at, (-p * sig_alpha * (1.0 - sig_alpha) * grad_q).to(dalpha_ptr.dtype.element_ty),
                 mask=ok)
    else:
        i = (pid - param_programs) * BLOCK + tl.arange(0, BLOCK)
        ok = i < D
        total = _column_sums(partial_ptr + 2 * params, i, ok, rows, width, ROW_BLOCK)
        tl.store(domega_ptr + i, total.to(domega_ptr.dtype.element_ty), mask=ok)
