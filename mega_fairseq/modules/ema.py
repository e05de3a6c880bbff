"""Multi-dimensional damped exponential moving average (EMA), section 1 of the spec.

For every channel d and every EMA dimension n (independently)::

    h_t = p * beta * x_t + q * h_{t-1},     p = sigmoid(delta), q = 1 - p * sigmoid(alpha)
    y_t = sqrt(1/N) * sum_n gamma * h_t

which is the causal convolution ``y = x * k`` with kernel
``k[d, j] = sqrt(1/N) * sum_n gamma * p * beta * q^j``. Parameter roles and the
bidirectional kernel are those of the spec and of the released original code.

Ways of computing the same function:
  * ``fft_ema``: FFT convolution of the whole sequence (training / encoding; the reference),
  * ``ema_step``: the recurrence for one step with a carried hidden state,
  * ``ema_chunk_with_state``: several steps at once from a carried state,
  * ``ema_triton.fused_ema_layer``: the recurrence as a fused Triton scan on a GPU (``impl``).
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ema_triton
from .config import check_choice, EMA_IMPLS, MegaConfigError


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


class MultiDimensionalEMA(nn.Module):
    """The EMA sub-layer of a Mega block: ``silu(EMA(x) + omega * x)``.

    Args:
        embed_dim: D.
        ndim: N, the EMA order (expansion dimension).
        bidirectional: add an anti-causal EMA with its own D kernels (encoders).
        truncation: kernel length cap (None or <= 0: no cap).
        impl: "fft" (reference, any device), "triton" (fused GPU scan) or "auto" (triton when
            the input is on a GPU, triton is installed and N is a power of two).
    Parameters: alpha, delta, beta, gamma (D', N) with D' = 2D if bidirectional
    else D; omega (D,).
    """

    def __init__(self, embed_dim: int, ndim: int = 16, bidirectional: bool = False,
                 truncation: Optional[int] = None, impl: str = "auto"):
        super().__init__()
        check_choice(impl, EMA_IMPLS, "--ema-impl")
        if embed_dim <= 0:
            raise MegaConfigError(f"EMA embed_dim must be positive, got {embed_dim}")
        if ndim <= 0:
            raise MegaConfigError(f"EMA n_dim (--encoder-n-dim / --decoder-n-dim) must be positive, got {ndim}")
        self.embed_dim = embed_dim
        self.ndim = ndim
        self.bidirectional = bidirectional
        self.truncation = truncation if truncation is not None and truncation > 0 else None
        self.impl = impl
        self.scale = math.sqrt(1.0 / ndim)
        kernel_dim = 2 * embed_dim if bidirectional else embed_dim
        self.alpha = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.delta = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.beta = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.gamma = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.omega = nn.Parameter(torch.empty(embed_dim))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            nn.init.normal_(self.alpha, mean=0.0, std=0.2)
            nn.init.normal_(self.delta, mean=0.0, std=0.2)
            signs = torch.ones(self.ndim)
            signs[1::2] = -1.0
            self.beta.normal_(mean=0.0, std=0.02).add_(signs)
            nn.init.normal_(self.gamma, mean=0.0, std=1.0)
            nn.init.normal_(self.omega, mean=0.0, std=1.0)

    def _step_parameters(self) -> Tuple[Tensor, Tensor, Tensor]:
        """p * beta, q and scaled gamma, (D', N) each, in float32 (or float64) even for half-precision weights."""
        dtype = torch.promote_types(self.alpha.dtype, torch.float32)
        p, q = ema_coefficients(self.alpha.to(dtype), self.delta.to(dtype))
        return p * self.beta.to(dtype), q, self.gamma.to(dtype) * self.scale

    def kernel(self, length: int) -> Tensor:
        """(D', K) convolution kernel, K = min(length, truncation)."""
        kernel_size = length if self.truncation is None else min(self.truncation, length)
        p_beta, q, gamma = self._step_parameters()
        powers = ema_powers(q, kernel_size)
        return torch.einsum("dnl,dn->dl", p_beta.unsqueeze(-1) * powers, gamma)

    def fused_unavailable(self, x: Tensor, state: Optional[Dict[str, Tensor]]) -> Optional[str]:
        """Why the fused Triton scan cannot run on x (None when it can)."""
        if not ema_triton.triton_available():
            return "triton is not installed"
        if not (x.is_cuda or ema_triton.interpreting()):
            return "the input is not on a CUDA device"
        if self.ndim & (self.ndim - 1):
            return f"the EMA n-dim {self.ndim} is not a power of two"
        if state is not None and torch.is_grad_enabled() and self.alpha.requires_grad:
            return "a carried incremental state is not differentiable there"
        return None

    def use_fused(self, x: Tensor, state: Optional[Dict[str, Tensor]] = None) -> bool:
        """Whether forward runs the fused scan (``impl``); a forced one that cannot run raises."""
        if self.impl == "fft":
            return False
        reason = self.fused_unavailable(x, state)
        if self.impl == "triton" and reason is not None:
            raise MegaConfigError(f"--ema-impl triton cannot run: {reason}; use --ema-impl fft or auto")
        return reason is None

    def scan_terms(self, length: int) -> List[ema_triton.ScanTerm]:
        """The recurrences whose sum is the EMA over ``length`` steps: one per direction, and with
        a truncation K < length, minus the lags >= K (output weight gamma q^K, input shifted by K)."""
        p_beta, q, gamma = self._step_parameters()
        directions = [(slice(0, self.embed_dim), False)]
        if self.bidirectional:
            directions.append((slice(self.embed_dim, 2 * self.embed_dim), True))
        terms = [ema_triton.ScanTerm(q[rows], p_beta[rows], gamma[rows], reverse) for rows, reverse in directions]
        if self.truncation is not None and self.truncation < length:
            cut = self.truncation
            terms += [ema_triton.ScanTerm(q[rows], p_beta[rows], -gamma[rows] * q[rows] ** cut, reverse, shift=cut)
                      for rows, reverse in directions]
        return terms

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        state: Optional[Dict[str, Tensor]] = None,
    ) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool, True at pads; state: a dict holding
        ``ema_hidden`` (B, D, N) between calls (incremental decoding, causal only),
        updated in place. Returns (L, B, D)."""
        length, batch, dim = x.shape
        if dim != self.embed_dim:
            raise ValueError(f"EMA expected inputs with {self.embed_dim} channels, got shape {tuple(x.shape)}")
        fused = self.use_fused(x, state)
        if fused and state is None:
            return ema_triton.fused_ema_layer(x, self.omega, self.scan_terms(length), padding_mask)
        residual = x * self.omega
        signal = x.permute(1, 2, 0)  # B x D x L
        if padding_mask is not None:
            signal = signal.masked_fill(padding_mask.unsqueeze(1), 0.0)

        if state is not None:
            if self.bidirectional:
                raise ValueError("a bidirectional EMA has no incremental state (it looks at future inputs)")
            p_beta, q, gamma = self._step_parameters()
            hidden = state.get("ema_hidden")
            if length == 1:
                y, hidden = ema_step(signal[..., 0], p_beta, q, gamma, hidden)
                y = y.unsqueeze(-1)
            elif fused:
                y, hidden = ema_triton.fused_ema_with_state(signal.permute(2, 0, 1), q, p_beta, gamma, hidden)
                y = y.permute(1, 2, 0)
            else:
                y, hidden = ema_chunk_with_state(signal, p_beta, q, gamma, hidden)
            state["ema_hidden"] = hidden
        else:
            kernel = self.kernel(length)
            if self.bidirectional:
                y = fft_ema(signal, kernel[: self.embed_dim], kernel[self.embed_dim:])
            else:
                y = fft_ema(signal, kernel)
        return F.silu(y.permute(2, 0, 1).to(x.dtype) + residual)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, ndim={self.ndim}, bidirectional={self.bidirectional}, "
                f"truncation={self.truncation}, impl={self.impl}")
