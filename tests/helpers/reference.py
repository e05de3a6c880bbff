"""Test inputs (seeded random tensors, padding masks, parameter refills), the package's references, and
the attention rows they define.

The plain float64 references live in ``mega_fairseq/ops/*_ref.py``; they are re-exported here for
the tests that compare against them.
"""
from typing import Optional

import torch

from mega_fairseq.ops.attention_ref import (LAPLACE_MU, LAPLACE_SIGMA, attention_function_reference,  # noqa: F401
                                            attention_row_reference, chunk_attention_reference, query_chunk)
from mega_fairseq.ops.block_ref import (cross_attention_reference, decoder_layer_reference,  # noqa: F401
                                        ema_module_reference, encoder_layer_reference, mega_block_reference,
                                        nffn_reference, norm_reference, position_bias_reference)
from mega_fairseq.ops.ema_ref import ema_kernel_reference, ema_p_q, ema_reference  # noqa: F401
from mega_fairseq.ops.norm_ref import (batchnorm_reference, batchnorm_statistics_reference,  # noqa: F401
                                       layernorm_reference, rms_scale_reference)
from mega_fairseq.ops.position_bias_ref import (rotary_bias_reference, rotary_tables, rotate_reference,  # noqa: F401
                                                simple_bias_reference)
from mega_fairseq.ops.ref_utils import ACTIVATIONS, DTYPE, f64, linear, silu  # noqa: F401

# Agreement expected between a float64 module and a float64 reference.
TOL = 1e-10


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


def specified_rows(attention_fn, causal, mask, batch, query_length, key_length, chunk_size):
    """(B, Lq) bool: the rows of chunk_attention whose result docs/math.md (sections 2 and 5) defines.

    Left out: a non-causal softmax row whose chunk is the short last one and holds only padding.
    Such a row is a padding query (outputs there are discarded); the original's models would pad the
    chunk with pad tokens, the module pads it internally with zero keys, and it leaves the row
    unmasked over those as well."""
    rows = torch.ones(batch, query_length, dtype=torch.bool)
    if attention_fn != "softmax" or causal or mask is None:
        return rows
    chunk = key_length if chunk_size < 0 else chunk_size
    for r in range(query_length):
        start = ((key_length - query_length + r) // chunk) * chunk
        stop = min(start + chunk, key_length)
        if stop - start < chunk:
            rows[:, r] = ~mask[:, start:stop].all(dim=1)
    return rows
