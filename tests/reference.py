"""Slow, independent references for the Mega modules, straight from the formulas.

Everything here runs in float64 with explicit Python loops where the math is a
recurrence or a per-row rule. The references follow /work/shared/docs/mega-spec.md
except where docs/spec-notes.md says the implementation follows the original code:

* softmax rows with no allowed key drop the padding mask (keep the causal one);
* laplace / relu2 normalizer: i + 1 with a causal mask, else the non-pad keys of the chunk;
* batch norms take their statistics over non-padding positions only.

Nothing here calls the module helpers (fft_ema, ema_coefficients, chunk_attention,
attention_weights, ...); the full-block references only read a module's parameters.

Shapes: L length, B batch, D width, N EMA order, Z query/key width, H value width.
"""
import math
from typing import Callable, Optional

import torch

DTYPE = torch.float64

# Agreement expected between a float64 module and a float64 reference.
TOL = 1e-10


def f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(DTYPE)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Seeded float64 N(0, scale^2) sample."""
    return torch.randn(*shape, generator=generator(seed), dtype=DTYPE) * scale


def random_padding_mask(batch: int, length: int, seed: int, min_real: int = 1) -> torch.Tensor:
    """(B, L) bool, True at pads: row 0 unpadded, other rows right-padded to a random length >= min_real."""
    g = generator(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(1, batch):
        real = int(torch.randint(min(min_real, length), length + 1, (1,), generator=g))
        mask[b, real:] = True
    return mask


def randomize_parameters_(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Refill every parameter (and batch-norm running statistics) with seeded random values.

    The default initialisation (std 0.02 projections, zero biases) makes most terms tiny;
    O(1) values make every term of the formulas visible in the comparisons."""
    g = generator(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=g, dtype=DTYPE).to(param.dtype) * scale)
        for name, buf in sorted(module.named_buffers()):
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=DTYPE).to(buf.dtype))
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=DTYPE).to(buf.dtype) + 0.5)
    return module


ACTIVATIONS = {
    "silu": lambda x: x * torch.sigmoid(x),
    "relu": lambda x: x.clamp(min=0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """x @ W^T + b with the layer's parameters, in float64."""
    return x @ f64(layer.weight).t() + f64(layer.bias)


# --------------------------------------------------------------------------- EMA


def ema_p_q(alpha: torch.Tensor, delta: torch.Tensor):
    """(D', N) -> input weight p = sigmoid(delta) and decay q = 1 - p * sigmoid(alpha) (spec, section 1)."""
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


def ema_module_reference(ema, x, padding_mask=None, hidden=None, method="recurrence"):
    """ema_reference with the parameters of a MultiDimensionalEMA module."""
    return ema_reference(x, ema.alpha, ema.delta, ema.beta, ema.gamma, ema.omega, ema.bidirectional,
                         ema.truncation, padding_mask, hidden, method)


# --------------------------------------------------------------------------- position biases


def simple_bias_reference(weight, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """weight (2P - 1,) -> (Lq, Lk) with bias[i, j] = w[P - 1 + j - (offset + i)]."""
    weight = f64(weight)
    positions = (weight.numel() + 1) // 2
    bias = torch.empty(query_length, key_length, dtype=DTYPE)
    for i in range(query_length):
        for j in range(key_length):
            bias[i, j] = weight[positions - 1 + j - (offset + i)]
    return bias


def rotary_tables(length: int, z_dim: int):
    """sin, cos (length, Z/2) in float64: angle[m, k] = m * 10000^(-k / (Z/2))."""
    half = z_dim // 2
    angles = [[m * 10000.0 ** (-k / half) for k in range(half)] for m in range(length)]
    angles = torch.tensor(angles, dtype=DTYPE).reshape(length, half)
    return torch.sin(angles), torch.cos(angles)


def rotate_reference(vector, position: int, sin, cos) -> torch.Tensor:
    """vector (Z,) rotated to ``position``: halves (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = vector.numel() // 2
    first, second = vector[:half], vector[half:]
    return torch.cat([first * cos[position] - second * sin[position],
                      second * cos[position] + first * sin[position]])


def rotary_bias_reference(alpha, beta, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """alpha, beta (1, Z) -> (Lq, Lk) with bias[i, j] = rot(alpha, offset + i) . rot(beta, j)."""
    alpha, beta = f64(alpha).reshape(-1), f64(beta).reshape(-1)
    sin, cos = rotary_tables(max(offset + query_length, key_length), alpha.numel())
    bias = torch.empty(query_length, key_length, dtype=DTYPE)
    for i in range(query_length):
        a = rotate_reference(alpha, offset + i, sin, cos)
        for j in range(key_length):
            bias[i, j] = a @ rotate_reference(beta, j, sin, cos)
    return bias


def position_bias_reference(bias_module, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
    """Reference bias matrix from the parameters of a Simple/Rotary position-bias module."""
    if hasattr(bias_module, "weight"):
        return simple_bias_reference(bias_module.weight, query_length, key_length, offset)
    return rotary_bias_reference(bias_module.alpha, bias_module.beta, query_length, key_length, offset)


# --------------------------------------------------------------------------- attention

LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(1.0 / (4.0 * math.pi))


def attention_function_reference(name: str, scores: torch.Tensor) -> torch.Tensor:
    if name == "laplace":
        return 0.5 * (1.0 + torch.erf((scores - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))
    if name == "relu2":
        return scores.clamp(min=0.0) ** 2
    raise ValueError(name)


def attention_row_reference(query, keys, bias_row, attention_fn: str, valid, causal_ok, z_dim: int,
                            normalizer: float) -> torch.Tensor:
    """Weights of one query over its keys.

    query (Z,), keys (M, Z), bias_row (M,), valid / causal_ok (M,) bool;
    normalizer: n of laplace / relu2. Returns (M,) weights.
    """
    dots = keys @ query
    if attention_fn == "softmax":
        scores = dots / math.sqrt(z_dim) + bias_row
        allowed = valid & causal_ok
        if not allowed.any():  # a row with no allowed key ignores the padding mask (spec-notes)
            allowed = causal_ok.clone()
        weights = torch.zeros_like(scores)
        top = scores[allowed].max()
        exp = torch.exp(scores[allowed] - top)
        weights[allowed] = exp / exp.sum()
        return weights
    weights = attention_function_reference(attention_fn, dots / normalizer + bias_row)
    return weights * valid * causal_ok


def query_chunk(position: int, chunk: int, key_length: int):
    """The chunk [start, stop) of key positions that the query at key position ``position`` attends
    within, and its index i inside the chunk."""
    start = (position // chunk) * chunk
    return start, min(start + chunk, key_length), position - start


def chunk_attention_reference(q, k, v, chunk_size: int, attention_fn: str,
                              bias_matrix_fn: Callable[[int, int], float], causal: bool, key_padding_mask=None):
    """Chunked single-head attention by hand.

    q (B, Lq, Z), k (B, Lk, Z), v (B, Lk, H); query r sits at key position Lk - Lq + r.
    Chunks are [c C, (c + 1) C) of the key positions (one chunk when chunk_size < 0);
    bias_matrix_fn(i, j): bias between positions i (query) and j (key) inside the chunk.
    key_padding_mask (B, Lk) True at pads.
    Returns the output (B, Lq, H) and the dense weights (B, Lq, Lk) (0 outside the chunk).
    """
    q, k, v = f64(q), f64(k), f64(v)
    batch, query_length, z_dim = q.shape
    key_length = k.size(1)
    chunk = key_length if chunk_size < 0 else chunk_size
    out = torch.zeros(batch, query_length, v.size(-1), dtype=DTYPE)
    dense = torch.zeros(batch, query_length, key_length, dtype=DTYPE)
    for b in range(batch):
        for r in range(query_length):
            start, stop, i = query_chunk(key_length - query_length + r, chunk, key_length)
            keys = range(start, stop)
            bias_row = torch.tensor([bias_matrix_fn(i, j - start) for j in keys], dtype=DTYPE)
            valid = torch.tensor([key_padding_mask is None or not bool(key_padding_mask[b, j]) for j in keys])
            causal_ok = torch.tensor([(not causal) or j - start <= i for j in keys])
            normalizer = (i + 1) if causal else max(int(valid.sum()), 1)
            weights = attention_row_reference(q[b, r], k[b, start:stop], bias_row, attention_fn, valid, causal_ok,
                                              z_dim, normalizer)
            dense[b, r, start:stop] = weights
            out[b, r] = weights @ v[b, start:stop]
    return out, dense


# --------------------------------------------------------------------------- norms


def layernorm_reference(x, weight=None, bias=None, eps: float = 1e-5):
    """x (..., D): (x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance)."""
    x = f64(x)
    mean = x.sum(-1, keepdim=True) / x.size(-1)
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.size(-1)
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * f64(weight)
    if bias is not None:
        out = out + f64(bias)
    return out


def rms_scale_reference(x, weight=None, eps: float = 1e-5):
    """scalenorm (weight: one scalar) / rmsnorm (weight: (D,)): w * x / sqrt(mean(x^2) + eps)."""
    x = f64(x)
    out = x / torch.sqrt((x ** 2).sum(-1, keepdim=True) / x.size(-1) + eps)
    return out if weight is None else f64(weight) * out


def batchnorm_statistics_reference(x, padding_mask=None):
    """x (L, B, D) -> per-channel mean, biased variance and count over the non-pad positions (loop)."""
    x = f64(x)
    length, batch, dim = x.shape
    rows = [x[t, b] for t in range(length) for b in range(batch)
            if padding_mask is None or not bool(padding_mask[b, t])]
    count = len(rows)
    mean = sum(rows) / count
    var = sum((row - mean) ** 2 for row in rows) / count
    return mean, var, count


def batchnorm_reference(x, weight, bias, eps: float, padding_mask=None, running_mean=None, running_var=None):
    """x (L, B, D): normalize with statistics over non-pad positions (training) or the given
    running statistics (eval). Pads come out as 0 (as the module documents)."""
    x = f64(x)
    if running_mean is None:
        mean, var, _ = batchnorm_statistics_reference(x, padding_mask)
    else:
        mean, var = f64(running_mean), f64(running_var)
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * f64(weight) + f64(bias)
    if padding_mask is not None:
        out[padding_mask.t()] = 0.0
    return out


def norm_reference(norm, x, padding_mask=None):
    """Reference of a SequenceNorm module (reads its type and parameters). x (L, B, D)."""
    inner = norm.norm
    if norm.norm_type == "layernorm":
        return layernorm_reference(x, inner.weight, inner.bias, inner.eps)
    if norm.norm_type == "scalenorm":
        return rms_scale_reference(x, inner.scalar, inner.eps)
    if norm.norm_type == "rmsnorm":
        return rms_scale_reference(x, inner.weight, inner.eps)
    running = (None, None) if inner.training else (inner.running_mean, inner.running_var)
    return batchnorm_reference(x, inner.weight, inner.bias, inner.eps, padding_mask, *running)


# --------------------------------------------------------------------------- blocks


def mega_block_reference(module, x, padding_mask=None, activation: str = "silu"):
    """The Mega block (spec section 2), dropout off, from the parameters of a
    MovingAverageGatedAttention module. x (L, B, D) -> (L, B, D)."""
    act = ACTIVATIONS[activation]
    x = f64(x)
    dim, z_dim, hidden_dim = module.embed_dim, module.z_dim, module.hidden_dim
    residual = x
    if module.prenorm:
        x = norm_reference(module.norm, x, padding_mask)
    values = act(linear(x, module.v_proj))
    mx, _ = ema_module_reference(module.move, x, padding_mask)
    base = linear(mx, module.mx_proj)
    u = torch.sigmoid(base[..., :dim])
    z = silu(base[..., dim:dim + z_dim])
    r = silu(base[..., dim + z_dim:dim + z_dim + hidden_dim])
    hx = base[..., dim + z_dim + hidden_dim:]
    gamma, beta = f64(module.gamma), f64(module.beta)
    queries, keys = z * gamma[0] + beta[0], z * gamma[1] + beta[1]

    span = x.size(0) if module.chunk_size < 0 else min(module.chunk_size, x.size(0))
    bias = position_bias_reference(module.rel_pos_bias, span, span)
    out, _ = chunk_attention_reference(queries.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                                       module.chunk_size, module.attention_fn, lambda i, j: bias[i, j],
                                       module.causal, padding_mask)
    h = act(hx + linear(out.transpose(0, 1) * r, module.h_proj))
    out = residual + u * (h - residual)
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def cross_attention_reference(module, query, memory, memory_padding_mask=None, padding_mask=None,
                              query_offset: int = 0, activation: str = "silu"):
    """Gated cross-attention (spec section 3) from a GatedCrossAttention module's parameters.

    query (T, B, D) at target positions query_offset ..; memory (S, B, D);
    memory_padding_mask (B, S). Bias between target position i and source position j.
    Returns (T, B, D)."""
    act = ACTIVATIONS[activation]
    query, memory = f64(query), f64(memory)
    dim, z_dim = module.embed_dim, module.z_dim
    target_length, batch, _ = query.shape
    source_length = memory.size(0)
    x = norm_reference(module.norm, query, padding_mask) if module.prenorm else query
    base = linear(x, module.q_proj)
    u, r, q = torch.sigmoid(base[..., :dim]), silu(base[..., dim:2 * dim]), base[..., 2 * dim:]
    k = linear(memory, module.k_proj)
    v = act(linear(memory, module.v_proj))
    bias = position_bias_reference(module.rel_pos_bias, target_length, source_length, query_offset)
    attended = torch.zeros(target_length, batch, dim, dtype=DTYPE)
    for b in range(batch):
        valid = torch.ones(source_length, dtype=torch.bool)
        if memory_padding_mask is not None:
            valid = ~memory_padding_mask[b]
        for i in range(target_length):
            weights = attention_row_reference(q[i, b], k[:, b], bias[i], module.attention_fn, valid,
                                              torch.ones_like(valid), z_dim, max(int(valid.sum()), 1))
            attended[i, b] = weights @ v[:, b]
    h = act(linear(attended * r, module.h_proj))
    out = query + u * (h - query)
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def nffn_reference(module, x, padding_mask=None, activation: str = "silu"):
    """Normalized feed-forward: x + fc2(act(fc1(norm(x)))) (norm after instead when postnorm)."""
    x = f64(x)
    residual = x
    if module.prenorm:
        x = norm_reference(module.norm, x, padding_mask)
    out = linear(ACTIVATIONS[activation](linear(x, module.fc1)), module.fc2) + residual
    if not module.prenorm:
        out = norm_reference(module.norm, out, padding_mask)
    return out


def encoder_layer_reference(layer, x, padding_mask=None):
    out = mega_block_reference(layer.mega_layer, x, padding_mask)
    return out if layer.nffn is None else nffn_reference(layer.nffn, out, padding_mask)


def decoder_layer_reference(layer, x, encoder_out=None, encoder_padding_mask=None, padding_mask=None):
    out = mega_block_reference(layer.mega_layer, x, padding_mask)
    if layer.cross_attn is not None:
        out = cross_attention_reference(layer.cross_attn, out, encoder_out, encoder_padding_mask, padding_mask)
    return out if layer.nffn is None else nffn_reference(layer.nffn, out, padding_mask)
