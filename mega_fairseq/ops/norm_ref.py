"""The five normalizations in float64 (layer, scale, RMS, batch norm; batch statistics over non-pad positions)."""
import torch

from .ref_utils import f64


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
