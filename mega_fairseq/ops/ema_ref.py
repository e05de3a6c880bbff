"""The EMA sub-layer in float64, by the recurrence or by the direct sum over lags (docs/math.md, section 1).

Shapes: L length, B batch, D width, N EMA order.
"""
import math
from typing import Optional

import torch

from .ref_utils import DTYPE, f64, silu


def ema_p_q(alpha: torch.Tensor, delta: torch.Tensor):
    """(D', N) -> input weight p = sigmoid(delta) and decay q = 1 - p * sigmoid(alpha) (docs/math.md, section 1)."""
    p = 1.0 / (1.0 + torch.exp(-f64(delta)))
    q = 1.0 - p / (1.0 + torch.exp(-f64(alpha)))
    return p, q


def ema_kernel_reference(alpha, delta, beta, gamma, length: int) -> torch.Tensor:
    """(D', N) parameters -> (D', length) kernel k[d, j] = sqrt(1/N) sum_n gamma p beta q^j."""
    p, q = ema_p_q(alpha, delta)
    ndim = p.size(1)
    kernel = torch.zeros(p.size(0), length, dtype=DTYPE)
    for j in range(length):
        kernel[:, j] = math.sqrt(1.0 / ndim) * (f64(gamma) * p * f64(beta) * q ** j).sum(-1)
    return kernel


def ema_reference(x, alpha, delta, beta, gamma, omega, bidirectional: bool = False,
                  truncation: Optional[int] = None, padding_mask=None, hidden=None, method: str = "recurrence"):
    """The EMA sub-layer ``silu(EMA(x) + omega * x)``.

    x: (L, B, D); alpha, delta, beta, gamma: (D', N), D' = 2D if bidirectional (the
    second D rows run backward in time); omega: (D,); padding_mask: (B, L) True at pads
    (zeroed before the EMA, not in ``omega * x``); hidden: (B, D, N) carried state (causal
    only). ``method``: "recurrence" (explicit loop over t) or "convolution" (direct sum
    over lags); a truncation length < L forces the truncated direct convolution.
    Returns the output (L, B, D) and the last forward hidden state (B, D, N) (None when
    computed by convolution).
    """
    x = f64(x)
    length, batch, dim = x.shape
    signal = x.clone()
    if padding_mask is not None:
        signal[padding_mask.t()] = 0.0
    p, q = ema_p_q(alpha, delta)
    beta, gamma = f64(beta), f64(gamma)
    scale = math.sqrt(1.0 / p.size(1))
    truncated = truncation is not None and 0 < truncation < length
    if hidden is not None and (bidirectional or truncated):
        raise ValueError("a carried state needs a causal, untruncated EMA")
    y = torch.zeros(length, batch, dim, dtype=DTYPE)
    last_hidden = None

    if method == "recurrence" and not truncated:
        h = torch.zeros(batch, dim, p.size(1), dtype=DTYPE) if hidden is None else f64(hidden).clone()
        for t in range(length):  # h_t = p beta x_t + q h_{t-1}
            h = p[:dim] * beta[:dim] * signal[t].unsqueeze(-1) + q[:dim] * h
            y[t] = scale * (gamma[:dim] * h).sum(-1)
        last_hidden = h
        if bidirectional:  # g_t = p beta x_t + q g_{t+1}: sum_{m >= 0} q^m p beta x_{t+m}
            g = torch.zeros(batch, dim, p.size(1), dtype=DTYPE)
            for t in reversed(range(length)):
                g = p[dim:] * beta[dim:] * signal[t].unsqueeze(-1) + q[dim:] * g
                y[t] += scale * (gamma[dim:] * g).sum(-1)
    else:
        kernel_size = min(truncation, length) if truncated else length
        kernel = ema_kernel_reference(alpha, delta, beta, gamma, kernel_size)
        for t in range(length):
            for j in range(min(kernel_size, t + 1)):  # forward: lags 0 .. K-1
                y[t] += kernel[:dim, j] * signal[t - j]
            if bidirectional:  # backward: x[t + m], m = 0 .. K-1 (lag 0 in both directions)
                for m in range(min(kernel_size, length - t)):
                    y[t] += kernel[dim:, m] * signal[t + m]
    return silu(y + f64(omega) * x), last_hidden
