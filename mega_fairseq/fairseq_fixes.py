"""Fixes for fairseq bugs that would otherwise give silently wrong results with this plugin.

``keep_last_batch``: fairseq's ``data_utils.batch_by_size`` drops the last batch when its size
is not a multiple of ``--required-batch-size-multiple`` (default 8), so ``fairseq-generate``
translates and scores only part of the test set, and validation skips examples
(facebookresearch/fairseq#5036). The wrapper puts the dropped examples back as a final batch.

``restore_numpy_compat``: fairseq uses ``numpy.compat.long``, removed in numpy 2, where it builds
blocks for inference (``fairseq-interactive``/``fairseq-generate`` with a language model) and
bucketed translation batches; without it they crash. ``numpy.compat.long`` was Python's ``int``.

``deal_batches_to_gpus``: two bugs of fairseq's ``EpochBatchIterator`` for datasets that do not prefetch
(translation's LanguagePairDataset, language modelling's). ``--fix-batches-to-gpus`` ("don't shuffle
batches between GPUs") is silently ignored: the globally shuffled batches are dealt to the GPUs anew
each epoch. ``--grouped-shuffling`` shuffles the batches in groups of one per GPU and drops the batches
left over when their count is not a multiple of the GPU count: those examples are never trained on
(Multi30k: 1 of its 69 batches on 2 GPUs, every epoch). Now with ``--fix-batches-to-gpus`` each GPU
keeps the same batches every epoch and shuffles their order, as fairseq does for prefetching datasets,
and ``--grouped-shuffling`` deals the leftover batches after the shuffled groups (the GPUs without one
take fairseq's empty dummy batch); otherwise the batches are fairseq's. Layer graphs need a GPU to keep
its batches: a GPU records a graph per batch shape it meets, and one whose batches change every epoch
keeps meeting new shapes for many epochs. A third bug, for every dataset: a run resumed from a checkpoint
saved mid-epoch rebuilt that epoch's batches without ``--fix-batches-to-gpus`` (the iterator's state does not
hold it), so the rest of the epoch came from another order (batches trained twice, others skipped) and,
the data loader being reused, every later epoch was dealt anew. The state now holds the flag, and the
resumed epoch's batches follow it.

``fork_data_loader_workers``: fairseq starts one process per GPU with ``torch.multiprocessing.spawn``, and Python
gives a process started so the start method 'spawn', so each data loader's workers in it are fresh interpreters
that import torch and fairseq before their first batch; a single process forks them. On 2 x H200 a run with
``--grouped-shuffling`` (whose data loader fairseq rebuilds every epoch) lost ~18 s an epoch to them. The
processes fairseq spawns now fork their data-loader workers (Linux), as a single process does.

``end_process_group_after_success``: fairseq never destroys the process group of a distributed
run, so a successful multi-GPU run ends with PyTorch's "destroy_process_group() was not called"
stack trace and TCPStore errors of the ranks that outlive rank 0 (which hosts the store). After
fairseq's ``main`` returns, every rank now waits for the others and destroys the group.
"""
import functools
import itertools
import multiprocessing
import sys
import types

import numpy as np
import torch
from fairseq.data import data_utils, iterators
from fairseq.distributed import utils as distributed_utils

from .patching import patch_once


def _batches_keeping_remainder(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        indices = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, np.ndarray) else indices
        batches = batch_by_size(indices, *args, **kwargs)
        covered = sum(len(batch) for batch in batches)
        if covered < len(indices):
            batches = list(batches) + [indices[covered:]]
        return batches

    return wrapper


def keep_last_batch() -> None:
    """Patch ``fairseq.data.data_utils.batch_by_size`` once so that no example is dropped."""
    patch_once(data_utils, "batch_by_size", _batches_keeping_remainder)


def restore_numpy_compat() -> None:
    """Give numpy 2 back the ``numpy.compat.long`` alias (= int) that fairseq still uses."""
    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int)


def _main_then_end_process_group(main, cfg, **kwargs):
    """fairseq's main, then (in a distributed run) a barrier and the end of the process group."""
    result = main(cfg, **kwargs)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _calling_main_through(rank_main):
    """A wrap of fairseq's ``call_main`` that runs ``rank_main(main, cfg, **kwargs)`` in place of ``main``, in
    every process (named after ``rank_main`` for ``patch_once``)."""
    def wrap(call_main):
        @functools.wraps(call_main)
        def wrapper(cfg, main, **kwargs):
            # a partial of a module-level function: spawned processes unpickle it by name
            return call_main(cfg, functools.partial(rank_main, main), **kwargs)

        return wrapper

    wrap.__name__ = rank_main.__name__
    return wrap


def end_process_group_after_success() -> None:
    """Patch ``fairseq.distributed.utils.call_main`` once so that a successful run ends its process group."""
    patch_once(distributed_utils, "call_main", _calling_main_through(_main_then_end_process_group))


def _main_with_forked_data_workers(main, cfg, **kwargs):
    """fairseq's main with data-loader workers forked (Linux) in a process started with the method 'spawn'."""
    if sys.platform == "linux" and multiprocessing.get_start_method(allow_none=True) == "spawn":
        multiprocessing.set_start_method("fork", force=True)
    return main(cfg, **kwargs)


def fork_data_loader_workers() -> None:
    """Patch ``fairseq.distributed.utils.call_main`` once so that the processes it spawns (one per GPU) fork
    their data-loader workers."""
    patch_once(distributed_utils, "call_main", _calling_main_through(_main_with_forked_data_workers))


def _grouped_shuffle(batches: list, group_size: int) -> list:
    """``batches`` shuffled in groups of ``group_size`` (numpy's global state), the leftover ones last."""
    grouped = len(batches) - len(batches) % group_size
    groups = [batches[i:i + group_size] for i in range(0, grouped, group_size)]
    np.random.shuffle(groups)
    return list(itertools.chain(*groups)) + batches[grouped:]


def _batches_dealt_to_gpus(ordered_batches):
    @functools.wraps(ordered_batches)
    def wrapper(self, epoch, fix_batches_to_gpus, shuffle):
        if self._supports_prefetch:
            return ordered_batches(self, epoch, fix_batches_to_gpus, shuffle)
        batches = list(self.frozen_batches)
        fixed = fix_batches_to_gpus and not self.grouped_shuffling  # grouped: each GPU keeps its batches
        if shuffle and not fixed:
            with data_utils.numpy_seed(self.seed + epoch):
                if self.grouped_shuffling:
                    batches = _grouped_shuffle(batches, self.num_shards)
                else:
                    np.random.shuffle(batches)
        batches = list(iterators.ShardedIterator(batches, self.num_shards, self.shard_id, fill_value=[]))
        if shuffle and fixed:
            with data_utils.numpy_seed(self.seed + epoch + self.shard_id):
                np.random.shuffle(batches)
        return batches

    return wrapper


def _state_with_dealing(state_dict):
    @functools.wraps(state_dict)
    def wrapper(self):
        sampler = getattr(self, "epoch_batch_sampler", None)
        fixed = sampler is not None and bool(sampler.fix_batches_to_gpus)  # a sampler's truth is its length
        return {**state_dict(self), "fix_batches_to_gpus": fixed}

    return wrapper


def _resumed_with_dealing(load_state_dict):
    @functools.wraps(load_state_dict)
    def wrapper(self, state_dict):
        self.resumed_fix_batches_to_gpus = state_dict.get("fix_batches_to_gpus", False)
        try:
            load_state_dict(self, state_dict)
        finally:
            del self.resumed_fix_batches_to_gpus

    return wrapper


def _iterator_dealt_as_resumed(get_iterator_for_epoch):
    @functools.wraps(get_iterator_for_epoch)
    def wrapper(self, epoch, shuffle, fix_batches_to_gpus=False, offset=0):
        fix_batches_to_gpus = fix_batches_to_gpus or getattr(self, "resumed_fix_batches_to_gpus", False)
        return get_iterator_for_epoch(self, epoch, shuffle, fix_batches_to_gpus=fix_batches_to_gpus, offset=offset)

    return wrapper


def deal_batches_to_gpus() -> None:
    """Patch ``EpochBatchIterator`` once: --fix-batches-to-gpus holds and --grouped-shuffling keeps every batch
    for datasets that do not prefetch, and a run resumed mid-epoch deals its batches as the saved run did."""
    patch_once(iterators.EpochBatchIterator, "ordered_batches", _batches_dealt_to_gpus)
    patch_once(iterators.EpochBatchIterator, "state_dict", _state_with_dealing)
    patch_once(iterators.EpochBatchIterator, "load_state_dict", _resumed_with_dealing)
    patch_once(iterators.EpochBatchIterator, "_get_iterator_for_epoch", _iterator_dealt_as_resumed)
