"""The multi-dimensional damped EMA as functions on tensors (docs/math.md, section 1).

For every channel d and every EMA dimension n (independently)::

    h_t = p * beta * x_t + q * h_{t-1},     p = sigmoid(delta), q = 1 - p * sigmoid(alpha)
    y_t = sqrt(1/N) * sum_n gamma * h_t

which is the causal convolution ``y = x * k`` with kernel
``k[d, j] = sqrt(1/N) * sum_n gamma * p * beta * q^j``.

Ways of computing it here: ``fft_ema`` (FFT convolution of the whole sequence; the reference for
training and encoding), ``ema_step`` (one step from a carried state) and ``ema_chunk_with_state``
(several steps from a carried state). ``ops.triton.ema_scan`` runs the recurrence as a fused GPU
scan; ``ops.ema_ref`` holds the plain float64 loops all of them are tested against.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ema_coefficients(alpha: Tensor, delta: Tensor) -> Tuple[Tensor, Tensor]:
    """(D', N) raw parameters -> p = sigmoid(delta) (input weight) and q = 1 - p * sigmoid(alpha)
    (decay), both (D', N) in (0, 1)."""
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    return p, q


def ema_powers(q: Tensor, length: int) -> Tensor:
    """q (D', N) -> q^j for j = 0..length-1, shape (D', N, length)."""
    steps = torch.arange(length, device=q.device, dtype=q.dtype)
    return torch.exp(steps * torch.log(q).unsqueeze(-1))


def fft_ema(x: Tensor, forward_kernel: Tensor, backward_kernel: Optional[Tensor] = None) -> Tensor:
    """EMA by FFT convolution.

    x: (B, D, L); forward_kernel: (D, K), entry j weighs x[t - j] (causal);
    backward_kernel: (D, K) or None, entry m weighs x[t + m] (anti-causal). Both
    directions include lag 0, so x[t] is weighed by forward[0] + backward[0].
    Returns (B, D, L) in x's dtype; the convolution runs in float32 (or float64).
    """
    length = x.size(-1)
    kernel_size = forward_kernel.size(-1)
    fft_len = length + kernel_size
    if backward_kernel is None:
        kernel = F.pad(forward_kernel, (0, length))
    else:
        lag_zero = F.pad(backward_kernel[:, :1], (0, kernel_size - 1))
        kernel = (F.pad(forward_kernel + lag_zero, (0, length))
                  + F.pad(backward_kernel[:, 1:].flip(-1), (length + 1, 0)))
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    x_f = torch.fft.rfft(x.to(compute_dtype), n=fft_len)
    k_f = torch.fft.rfft(kernel.to(compute_dtype), n=fft_len)
    return torch.fft.irfft(x_f * k_f, n=fft_len)[..., :length].to(x.dtype)


def ema_step(x: Tensor, p_beta: Tensor, q: Tensor, gamma: Tensor, hidden: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One recurrent step. x: (B, D); p_beta, q, gamma: (D, N) (gamma pre-scaled);
    hidden: (B, D, N) or None. Returns y (B, D) and the new hidden state (B, D, N)."""
    new_hidden = p_beta * x.unsqueeze(-1).to(p_beta.dtype)
    if hidden is not None:
        new_hidden = new_hidden + q * hidden
    return torch.einsum("bdn,dn->bd", new_hidden, gamma), new_hidden


def ema_chunk_with_state(
    x: Tensor, p_beta: Tensor, q: Tensor, gamma: Tensor, hidden: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Several steps from a carried state. x: (B, D, L); hidden: (B, D, N) or None;
    parameters as in ``ema_step``. The output and state are in the parameters' dtype.

    y_t = conv(x, k)_t + sum_n gamma * q^(t+1) * hidden,
    new hidden = q^L * hidden + sum_j p * beta * q^(L-1-j) * x_j.
    Returns y (B, D, L) and the new hidden state (B, D, N).
    """
    length = x.size(-1)
    powers = ema_powers(q, length + 1)  # (D, N, L+1)
    decay = p_beta.unsqueeze(-1) * powers[..., :length]  # (D, N, L)
    kernel = torch.einsum("dnl,dn->dl", decay, gamma)
    y = fft_ema(x.to(kernel.dtype), kernel)
    new_hidden = torch.einsum("bdl,dnl->bdn", x.to(kernel.dtype), decay.flip(-1))
    if hidden is not None:
        y = y + torch.einsum("bdn,dnl->bdl", hidden, powers[..., 1:] * gamma.unsqueeze(-1))
        new_hidden = new_hidden + powers[..., -1] * hidden
    return y, new_hidden
