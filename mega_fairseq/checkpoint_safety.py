"""Safe fairseq checkpoints: weights-only loading, atomic writes, a resume that survives a broken
``checkpoint_last.pt``, and a refusal of non-finite weights.

* ``allow_fairseq_checkpoints``: fairseq's ``torch.load`` calls use PyTorch's ``weights_only=True``
  default (torch >= 2.6), which refuses any pickled class not on its allow-list. fairseq
  checkpoints need a few: ``argparse.Namespace`` (the ``args`` of checkpoints written from
  command-line arguments, e.g. by fairseq 0.9 or converted ones) and plain numpy arrays and
  scalars (the BLEU statistics of ``--eval-bleu`` in the saved meters). Exactly these are added.
* ``write_checkpoints_atomically``: fairseq saves one checkpoint file, then copies it to
  ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with a plain copy, so a kill during the copy
  leaves a truncated ``checkpoint_last.pt``. Every save and copy now goes to a temporary file in
  the same folder, which replaces the target only once complete.
* ``resume_from_readable_checkpoint``: a resume (``--restore-file`` left at its default) that
  finds an unreadable ``checkpoint_last.pt`` continues from the newest readable checkpoint of
  ``--save-dir`` and logs which one.
* ``refuse_non_finite_checkpoints``: every checkpoint fairseq loads (training, validation,
  generation, evaluation) must hold finite floating-point weights and optimizer state; a
  corrupted one is refused with the names of the tensors that are not finite.
"""
import argparse
import contextlib
import copy
import functools
import logging
import os
import re
import shutil
import uuid
import zipfile
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from .patching import patch_once

logger = logging.getLogger(__name__)

_NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")  # the names atomic_target gives


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with what to do about it."""


def fairseq_checkpoint_globals() -> list:
    """The classes and functions fairseq checkpoints pickle besides tensors and builtins."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in _NUMPY_DTYPES]
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


def allow_fairseq_checkpoints() -> None:
    """Add the fairseq checkpoint classes to ``torch.load``'s weights-only allow-list."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_target(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` (after an fsync) when the
    block ends, and is removed if the block fails. A kill leaves ``path`` as it was."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield temporary
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _is_local(path: str) -> bool:
    from fairseq.file_io import PathManager

    return not PathManager.path_requires_pathmanager(path)


def _atomic_copy(copy_file):
    @functools.wraps(copy_file)
    def wrapper(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not (_is_local(src_path) and _is_local(dst_path)):
            return copy_file(src_path, dst_path, overwrite)
        with atomic_target(dst_path) as temporary:
            shutil.copyfile(src_path, temporary)
        return True

    return wrapper


def _atomic_save(save):
    @functools.wraps(save)
    def wrapper(obj, filename: str, async_write: bool = False):
        if async_write or not _is_local(filename):
            return save(obj, filename, async_write)
        with atomic_target(filename) as temporary:
            torch.save(obj, temporary)

    return wrapper


def write_checkpoints_atomically() -> None:
    """Make fairseq's checkpoint save and its copies to checkpoint_last/best atomic (once)."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    patch_once(PathManager, "copy", _atomic_copy)
    patch_once(checkpoint_utils, "torch_persistent_save", _atomic_save)


# ----------------------------------------------------------------------------------------------
# resuming past an unreadable checkpoint_last.pt
# ----------------------------------------------------------------------------------------------

def unreadable_reason(path: str) -> Optional[str]:
    """Why ``path`` cannot be loaded as a checkpoint (None when it can). The tensors of a zip-format
    checkpoint (what torch.save writes) are memory-mapped, not read, so this costs little."""
    if os.path.getsize(path) == 0:
        return "an empty file"
    try:
        torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
    except Exception as error:  # any failure to load means unreadable: say which
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def checkpoints_newest_first(save_dir: str, suffix: str, exclude: str) -> List[str]:
    """The checkpoint files (checkpoint*{suffix}.pt) of save_dir but ``exclude``, newest first."""
    pattern = re.compile(rf"^checkpoint.*{re.escape(suffix)}\.pt$")
    paths = [os.path.join(save_dir, name) for name in os.listdir(save_dir) if pattern.match(name)]
    paths = [path for path in paths if os.path.isfile(path) and not os.path.samefile(path, exclude)]
    return sorted(paths, key=lambda path: (os.path.getmtime(path), path), reverse=True)


def newest_readable_checkpoint(save_dir: str, suffix: str, broken: str) -> Tuple[Optional[str], List[str]]:
    """(the newest readable checkpoint of save_dir other than ``broken``, or None; the unreadable ones met)."""
    skipped = []
    for path in checkpoints_newest_first(save_dir, suffix, broken):
        reason = unreadable_reason(path)
        if reason is None:
            return path, skipped
        skipped.append(f"{os.path.basename(path)} ({reason})")
    return None, skipped


def remove_partial_files(save_dir: str) -> None:
    """Remove the temporary files that a killed save left in save_dir."""
    for name in os.listdir(save_dir):
        if _TEMPORARY.match(name):
            logger.info(f"removing {os.path.join(save_dir, name)}, left by an interrupted checkpoint save")
            os.remove(os.path.join(save_dir, name))


def _resume_from_readable(load_checkpoint):
    @functools.wraps(load_checkpoint)
    def wrapper(cfg, trainer, **passthrough_args):
        suffix = trainer.checkpoint_suffix
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        if not _is_local(last) or not os.path.isdir(cfg.save_dir):
            return load_checkpoint(cfg, trainer, **passthrough_args)
        if trainer.data_parallel_rank == 0:
            remove_partial_files(cfg.save_dir)
        if cfg.restore_file != "checkpoint_last.pt" or not os.path.isfile(last):
            return load_checkpoint(cfg, trainer, **passthrough_args)
        reason = unreadable_reason(last)
        if reason is None:
            return load_checkpoint(cfg, trainer, **passthrough_args)
        fallback, skipped = newest_readable_checkpoint(cfg.save_dir, suffix, last)
        if fallback is None:
            raise CheckpointError(
                f"cannot resume: {last} is unreadable ({reason}) and --save-dir {cfg.save_dir} holds no other "
                f"readable checkpoint{' (' + '; '.join(skipped) + ')' if skipped else ''}: remove it to train "
                f"from scratch, or give a checkpoint with --restore-file")
        logger.warning(f"{last} is unreadable ({reason}); resuming from {fallback}, the newest readable checkpoint "
                       f"in {cfg.save_dir}" + (f" (also unreadable: {'; '.join(skipped)})" if skipped else ""))
        cfg = copy.deepcopy(cfg)
        cfg.restore_file = fallback[: -len(f"{suffix}.pt")] + ".pt"
        cfg.finetune_from_model = None
        return load_checkpoint(cfg, trainer, **passthrough_args)

    return wrapper


def resume_from_readable_checkpoint() -> None:
    """Make fairseq-train's resume fall back past an unreadable checkpoint_last.pt (once)."""
    from fairseq import checkpoint_utils

    patch_once(checkpoint_utils, "load_checkpoint", _resume_from_readable)


# ----------------------------------------------------------------------------------------------
# non-finite weights
# ----------------------------------------------------------------------------------------------

def non_finite_tensors(tree, prefix: str = "") -> List[str]:
    """'name (k of n values)' for every floating tensor in the nested dicts/lists ``tree`` with a
    nan or an infinity."""
    if isinstance(tree, torch.Tensor):
        if not tree.is_floating_point():
            return []
        bad = int((~torch.isfinite(tree)).sum())
        return [f"{prefix} ({bad} of {tree.numel()} values)"] if bad else []
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    found = []
    for key, value in items:
        found += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def check_finite(state: dict, path: str) -> None:
    """Refuse a checkpoint whose model weights or optimizer state hold non-finite values."""
    bad = non_finite_tensors({"model": state.get("model"), "last_optimizer_state": state.get("last_optimizer_state")})
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise CheckpointError(f"{path} is corrupted: {len(bad)} tensor(s) hold nan or inf values: {shown}. "
                              f"Use an earlier checkpoint (checkpoint_EPOCH_UPDATES.pt, checkpoint_best.pt); "
                              f"fairseq-train resumes from one with --restore-file FILE")


def _finite_only(load_checkpoint_to_cpu):
    @functools.wraps(load_checkpoint_to_cpu)
    def wrapper(path, *args, **kwargs):
        state = load_checkpoint_to_cpu(path, *args, **kwargs)
        check_finite(state, path)
        return state

    return wrapper


def refuse_non_finite_checkpoints() -> None:
    """Check every checkpoint fairseq loads for non-finite tensors (once)."""
    from fairseq import checkpoint_utils

    patch_once(checkpoint_utils, "load_checkpoint_to_cpu", _finite_only)
