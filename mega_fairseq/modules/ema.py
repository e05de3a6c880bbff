"""The EMA sub-layer of a Mega block as an ``nn.Module`` (docs/math.md, section 1).

The functions it computes with live in ``mega_fairseq.ops``: ``ops.ema`` (FFT convolution, steps
with a carried state) and ``ops.triton.ema_scan`` (the fused GPU layer, chosen by ``impl``).
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ema import ema_chunk_with_state, ema_coefficients, ema_powers, ema_step, fft_ema
from ..ops.triton import ema_scan
from ..options import check_choice, EMA_IMPLS, MegaConfigError
from .config import autocast_dtype


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
        if not ema_scan.triton_available():
            return "triton is not installed"
        if not (x.is_cuda or ema_scan.interpreting()):
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

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        state: Optional[Dict[str, Tensor]] = None,
    ) -> Tensor:
        """x: (L, B, D); padding_mask: (B, L) bool, True at pads; state: a dict holding
        ``ema_hidden`` (B, D, N) between calls (incremental decoding, causal only),
        updated in place. Returns (L, B, D), under autocast in its dtype (the projection
        that reads it would cast it)."""
        self._check_input(x, state)
        out_dtype = autocast_dtype(x)
        if not self.use_fused(x, state):
            out = self._reference(x, padding_mask, state)
        elif state is None:
            return ema_scan.fused_ema_layer(x, padding_mask, self.alpha, self.delta, self.beta, self.gamma, self.omega,
                                            self.bidirectional, self.truncation or 0, out_dtype)
        else:
            out, state["ema_hidden"] = ema_scan.fused_ema_with_state(
                x, padding_mask, self.alpha, self.delta, self.beta, self.gamma, self.omega, state.get("ema_hidden"))
        return out if out_dtype is None else out.to(out_dtype)

    def forward_and_input(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``forward`` without state, and x for the block's other projection: under autocast both in its
        dtype, cast by the fused scan's own launch (whose backward sums the two gradients of x), else
        x itself. Returns (out, x), (L, B, D) each."""
        self._check_input(x, None)
        dtype = autocast_dtype(x)
        if dtype is None:
            return self.forward(x, padding_mask), x
        if self.use_fused(x, None):
            return ema_scan.fused_ema_layer_with_copy(x, padding_mask, self.alpha, self.delta, self.beta, self.gamma,
                                                      self.omega, self.bidirectional, self.truncation or 0, dtype)
        return self._reference(x, padding_mask, None).to(dtype), x.to(dtype)

    def _check_input(self, x: Tensor, state: Optional[Dict[str, Tensor]]) -> None:
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"EMA expected inputs (L, B, D) with {self.embed_dim} channels, "
                             f"got shape {tuple(x.shape)}")
        if state is not None and self.bidirectional:
            raise ValueError("a bidirectional EMA has no incremental state (it looks at future inputs)")

    def _reference(self, x: Tensor, padding_mask: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        """The PyTorch path: FFT convolution, or steps from the carried state."""
        length = x.size(0)
        residual = x * self.omega
        signal = x.permute(1, 2, 0)  # B x D x L
        if padding_mask is not None:
            signal = signal.masked_fill(padding_mask.unsqueeze(1), 0.0)

        if state is not None:
            p_beta, q, gamma = self._step_parameters()
            hidden = state.get("ema_hidden")
            if length == 1:
                y, hidden = ema_step(signal[..., 0], p_beta, q, gamma, hidden)
                y = y.unsqueeze(-1)
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

