"""Mega in one file: one Mega layer on plain tensors, the first code to read.

A Mega layer (Ma et al., ICLR 2023) is single-head gated attention whose queries and keys come from a
multi-dimensional damped exponential moving average (EMA) of the input, followed by a feed-forward
network. This file computes one layer from a dict of its parameters, top to bottom, in the order and
notation of docs/math.md. The package computes the same with everything left out here: padding,
dropout, the laplace and relu2 attention functions, rotary biases, other norms, truncation,
incremental decoding and the fast paths (``ops/``, ``modules/``); tests/test_minimal.py checks that
both agree.

Here: no padding, no dropout; softmax attention, the simple relative position bias, layer norm,
SiLU; the length L a multiple of the chunk C (the package pads the last chunk). The parameter names
are those of ``MegaEncoderLayer`` and of ``MegaDecoderLayer`` without cross-attention
(``dict(layer.named_parameters())``).

Shapes: L length, B batch, D model width, H value width, Z query/key width, N EMA order,
C chunk length. Sequences are time-major, (L, B, D), as in fairseq.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

Params = Dict[str, Tensor]


def linear(x: Tensor, params: Params, name: str) -> Tensor:
    return x @ params[f"{name}.weight"].t() + params[f"{name}.bias"]


def layer_norm(x: Tensor, params: Params, name: str, eps: float = 1e-5) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], params[f"{name}.norm.weight"], params[f"{name}.norm.bias"], eps)


# ---------------------------------------------------------------- 1. the multi-dimensional damped EMA


def ema_kernel(alpha: Tensor, delta: Tensor, beta: Tensor, gamma: Tensor, length: int) -> Tensor:
    """(D', N) parameters -> (D', L) kernel ``k[d, j] = sqrt(1/N) sum_n gamma p beta q^j``: the EMA
    ``h_t = p beta x_t + q h_{t-1}``, ``y_t = sqrt(1/N) sum_n gamma h_t`` unrolled over lags j."""
    p = torch.sigmoid(delta)  # weight of the current input
    q = 1.0 - p * torch.sigmoid(alpha)  # decay, in (0, 1)
    powers = q.unsqueeze(-1) ** torch.arange(length, dtype=q.dtype)  # (D', N, L): q^j
    return ((gamma * p * beta).unsqueeze(-1) * powers).sum(dim=1) / math.sqrt(alpha.size(1))


def ema(x: Tensor, params: Params, causal: bool) -> Tensor:
    """The EMA sub-layer ``silu(EMA(x) + omega * x)``, x (L, B, D).

    Causal (decoders): ``y_t = sum_{j >= 0} k[j] x_{t-j}`` with D kernels. Bidirectional (encoders):
    2D kernels, the second D run backward in time, ``+ sum_{j >= 0} k'[j] x_{t+j}`` (lag 0 in both)."""
    length, _, dim = x.shape
    kernel = ema_kernel(params["move.alpha"], params["move.delta"], params["move.beta"], params["move.gamma"],
                        length)
    lag = torch.arange(length).unsqueeze(1) - torch.arange(length).unsqueeze(0)  # (L, L): t - s
    mix = torch.where(lag >= 0, kernel[:dim, lag.clamp(min=0)], 0.0)  # (D, L, L): weight of x_s in y_t
    if not causal:
        mix = mix + torch.where(lag <= 0, kernel[dim:, (-lag).clamp(min=0)], 0.0)
    y = torch.einsum("dts,sbd->tbd", mix, x)
    return F.silu(y + params["move.omega"] * x)


# ---------------------------------------------------------------- 2. gated attention within chunks


def simple_bias(weight: Tensor, chunk: int) -> Tensor:
    """(2P - 1,) weight -> (C, C) bias ``bias[i, j] = w[P - 1 + j - i]``: one scalar per distance."""
    positions = (weight.numel() + 1) // 2
    i = torch.arange(chunk)
    return weight[positions - 1 + i.unsqueeze(0) - i.unsqueeze(1)]


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, bias_weight: Tensor, chunk: int, causal: bool) -> Tensor:
    """Softmax attention inside each chunk of C positions (C = L when chunk < 0): q, k (L, B, Z),
    v (L, B, H) -> (L, B, H). ``S = Q K^T / sqrt(Z) + bias``; causal: no key after the query."""
    length, batch, z_dim = q.shape
    chunk = length if chunk < 0 else chunk
    q, k, v = (t.transpose(0, 1).reshape(batch, length // chunk, chunk, -1) for t in (q, k, v))  # (B, L/C, C, .)
    scores = q @ k.transpose(-1, -2) / math.sqrt(z_dim) + simple_bias(bias_weight, chunk)
    if causal:
        position = torch.arange(chunk)
        scores = scores.masked_fill(position.unsqueeze(0) > position.unsqueeze(1), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.reshape(batch, length, -1).transpose(0, 1)


def mega_block(x: Tensor, params: Params, chunk: int, causal: bool, prenorm: bool) -> Tensor:
    """The Mega block (``MovingAverageGatedAttention``): x (L, B, D) -> (L, B, D)."""
    params = {name[len("mega_layer."):]: value for name, value in params.items() if name.startswith("mega_layer.")}
    dim, z_dim, hidden_dim = x.size(-1), params["gamma"].size(1), params["v_proj.weight"].size(0)
    residual = x
    if prenorm:
        x = layer_norm(x, params, "norm")
    v = F.silu(linear(x, params, "v_proj"))  # (L, B, H) values, from the input itself
    mx = ema(x, params, causal)  # (L, B, D) the EMA output: the gates, queries and keys come from it
    u, zr, hx = torch.split(linear(mx, params, "mx_proj"), [dim, z_dim + hidden_dim, dim], dim=-1)
    u = torch.sigmoid(u)  # update gate
    z, r = torch.split(F.silu(zr), [z_dim, hidden_dim], dim=-1)  # shared query/key base; reset gate
    q = z * params["gamma"][0] + params["beta"][0]  # (L, B, Z) queries and keys: two affine maps of z
    k = z * params["gamma"][1] + params["beta"][1]
    o = chunk_attention(q, k, v, params["rel_pos_bias.weight"], chunk, causal)  # (L, B, H)
    h = F.silu(hx + linear(o * r, params, "h_proj"))  # candidate output (L, B, D)
    out = residual + u * (h - residual)  # gated update: u interpolates between h and the input
    return out if prenorm else layer_norm(out, params, "norm")


# ---------------------------------------------------------------- 3. the normalized feed-forward network


def normalized_feed_forward(x: Tensor, params: Params, prenorm: bool) -> Tensor:
    """``x + fc2(silu(fc1(x)))`` with a layer norm before (prenorm) or after; x (L, B, D)."""
    params = {name[len("nffn."):]: value for name, value in params.items() if name.startswith("nffn.")}
    residual = x
    if prenorm:
        x = layer_norm(x, params, "norm")
    out = linear(F.silu(linear(x, params, "fc1")), params, "fc2") + residual
    return out if prenorm else layer_norm(out, params, "norm")


def mega_layer(x: Tensor, params: Params, chunk: int = -1, causal: bool = False, prenorm: bool = False) -> Tensor:
    """One Mega layer: x (L, B, D) -> (L, B, D). Encoder layer: ``causal=False`` (bidirectional EMA,
    attention over the whole chunk); decoder layer without cross-attention: ``causal=True``."""
    return normalized_feed_forward(mega_block(x, params, chunk, causal, prenorm), params, prenorm)
