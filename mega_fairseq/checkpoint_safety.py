"""Let fairseq checkpoints load under PyTorch's ``weights_only=True`` default (torch >= 2.6).

fairseq's ``torch.load`` calls use the default, which refuses any pickled
class that is not on PyTorch's allow-list. fairseq checkpoints need a few:
``argparse.Namespace`` (the ``args`` of checkpoints written from command-line
arguments, e.g. by fairseq 0.9 or converted ones) and plain numpy arrays and
scalars (the BLEU statistics of ``--eval-bleu`` in the saved meters). Exactly
these are added; everything else stays refused.
"""
import argparse

import numpy as np
import torch

_NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)


def fairseq_checkpoint_globals() -> list:
    """The classes and functions fairseq checkpoints pickle besides tensors and builtins."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in _NUMPY_DTYPES]
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


def allow_fairseq_checkpoints() -> None:
    """Add the fairseq checkpoint classes to ``torch.load``'s weights-only allow-list."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
