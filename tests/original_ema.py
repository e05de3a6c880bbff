"""Float64 loop references of the two revisions of the original MultiHeadEMA (facebookresearch/mega).

Parameters are the original's: alpha, delta, beta (D', N, 1), gamma (D', N), omega (D,), with
D' = 2D for a bidirectional EMA (forward kernels first, then backward ones).

main  (branch main): p = sigmoid(delta), q = 1 - p * sigmoid(alpha); the kernel
      k[d, j] = sqrt(1/N) * sum_n gamma p beta q^j has K = L or min(L, truncation) lags;
      y_t = sum_{j=0}^{K-1} k[d, j] x_{t-j}, and a bidirectional EMA adds
      sum_{m=0}^{K-1} k[D + d, m] x_{t+m} (lag 0 weighed by both directions).
flash (branch flash, 06f2d0e and 7d00ee4): p = sigmoid(alpha), q = 1 - p * sigmoid(delta);
      K = L when truncation is None or < 1; the backward part is
      sum_{m=1}^{K} k[D + d, m - 1] x_{t+m} (it starts at lag 1).
Both: padded positions are zeroed before the EMA, out = silu(y + omega * x) with the unzeroed x.
Incremental steps (causal only) run the recurrence h = p beta x_t + q h, y_t = sqrt(1/N) sum_n
gamma h, whatever the truncation.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def coefficients(params, revision):
    """p (input weight) and q (decay), (D', N) each, as the revision computes them."""
    first, second = (params["delta"], params["alpha"]) if revision == "main" else (params["alpha"], params["delta"])
    p = torch.sigmoid(first[..., 0])
    return p, 1.0 - p * torch.sigmoid(second[..., 0])


def kernel_size(revision, length, truncation):
    """Number of lags K of the full-sequence kernel."""
    if truncation is None or (revision == "flash" and truncation < 1):
        return length
    assert truncation >= 1, "main cannot run truncation < 1"
    return min(truncation, length)


def original_ema(x, params, revision, truncation=None, padding_mask=None):
    """The full-sequence forward of the revision. x: (L, B, D); padding_mask: (B, L) True at pads.
    Returns (L, B, D)."""
    length, _, dim = x.shape
    bidirectional = params["gamma"].shape[0] == 2 * dim
    p, q = coefficients(params, revision)
    size = kernel_size(revision, length, truncation)
    weight = params["gamma"] * p * params["beta"][..., 0] / math.sqrt(p.shape[1])
    kernel = torch.stack([(weight * q ** j).sum(-1) for j in range(size)], -1)  # (D', K)
    signal = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    first_backward_lag = 1 if revision == "flash" else 0
    y = torch.zeros_like(x)
    for t in range(length):
        for j in range(min(t + 1, size)):
            y[t] += kernel[:dim, j] * signal[t - j]
        if bidirectional:
            for j in range(size):
                if t + first_backward_lag + j < length:
                    y[t] += kernel[dim:, j] * signal[t + first_backward_lag + j]
    return F.silu(y + params["omega"] * x)


def original_ema_steps(x, params, revision, hidden=None, padding_mask=None):
    """Incremental steps of a causal EMA from a hidden state (B, D, N) or None.
    x: (L, B, D). Returns the output (L, B, D) and the new hidden state."""
    p, q = coefficients(params, revision)
    signal = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    outputs = []
    for x_t in signal:
        new = p * params["beta"][..., 0] * x_t.unsqueeze(-1)
        hidden = new if hidden is None else new + q * hidden
        outputs.append((hidden * params["gamma"]).sum(-1) / math.sqrt(p.shape[1]))
    return F.silu(torch.stack(outputs) + params["omega"] * x), hidden


class OriginalEMA(nn.Module):
    """One revision of the original EMA with our module's call (x, padding_mask, state), to stand in
    for ``mega_layer.move`` in our model: the original model, given that the rest of the model is
    the original's (tests/test_convert_original.py checks that part)."""

    def __init__(self, params, revision, truncation):
        super().__init__()
        self.params = {name: tensor.double() for name, tensor in params.items()}
        self.revision = revision
        self.truncation = truncation

    def forward(self, x, padding_mask=None, state=None):
        if state is None:
            return original_ema(x, self.params, self.revision, self.truncation, padding_mask)
        out, state["original_hidden"] = original_ema_steps(x, self.params, self.revision,
                                                           state.get("original_hidden"), padding_mask)
        return out
