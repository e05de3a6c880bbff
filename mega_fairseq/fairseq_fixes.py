"""Fixes for fairseq bugs that would otherwise give silently wrong results with this plugin.

``keep_last_batch``: fairseq's ``data_utils.batch_by_size`` drops the last batch when its size
is not a multiple of ``--required-batch-size-multiple`` (default 8), so ``fairseq-generate``
translates and scores only part of the test set, and validation skips examples
(facebookresearch/fairseq#5036). The wrapper puts the dropped examples back as a final batch.

``restore_numpy_compat``: fairseq uses ``numpy.compat.long``, removed in numpy 2, where it builds
blocks for inference (``fairseq-interactive``/``fairseq-generate`` with a language model) and
bucketed translation batches; without it they crash. ``numpy.compat.long`` was Python's ``int``.
"""
import functools
import types

import numpy as np
from fairseq.data import data_utils


def _batches_keeping_remainder(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        indices = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, np.ndarray) else indices
        batches = batch_by_size(indices, *args, **kwargs)
        covered = sum(len(batch) for batch in batches)
        if covered < len(indices):
            batches = list(batches) + [indices[covered:]]
        return batches

    wrapper.keeps_remainder = True
    return wrapper


def keep_last_batch() -> None:
    """Patch ``fairseq.data.data_utils.batch_by_size`` once so that no example is dropped."""
    if not getattr(data_utils.batch_by_size, "keeps_remainder", False):
        data_utils.batch_by_size = _batches_keeping_remainder(data_utils.batch_by_size)


def restore_numpy_compat() -> None:
    """Give numpy 2 back the ``numpy.compat.long`` alias (= int) that fairseq still uses."""
    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int)
