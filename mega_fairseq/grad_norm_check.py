"""fairseq's check that the workers' gradient norms agree, read one update later instead of waited for.

With several GPUs, fairseq's Trainer all-reduces every worker's clipped gradient norm after the loss
scaler's overflow check (``_check_grad_norms``) and tests on the host that they agree: two host waits an
update, each for an all-reduce that only ends once the other workers' hosts have issued it, while the
GPUs idle (the overflow check drained their queues). About 2 ms of a ~45 ms update on 2 x H200
(``benchmarks/e2e/profile_train_step.py --phase-times``).

Here the same all-reduce and the same test (every norm finite and within a relative 1e-6 of worker 0's;
with --amp non-finite norms pass) run on a side CUDA stream, and the verdict and the norms are copied to
the host without waiting. The verdict is read at the next check, long after it is ready, and before a
checkpoint is saved. A disagreement raises fairseq's FloatingPointError, naming the update and every
worker's norm, one update later (fairseq's handler then saves crash.pt and re-runs that update's batches
under its NaN detector); the last update of a run that saves no checkpoint is not checked.
"""
import contextlib
import functools
from typing import NamedTuple, Optional

import torch
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer
from torch import Tensor

from .patching import patch_once

PENDING = "_mega_pending_grad_norm_check"


class PendingCheck(NamedTuple):
    """A check whose verdict (host bool tensor) and norms (host float64, one per worker) are ready once
    ``copied`` (a CUDA event; None on the CPU) has passed; ``update`` is the update it checked."""
    update: int
    consistent: Tensor
    norms: Tensor
    copied: Optional[torch.cuda.Event]


def norms_agree(norms: Tensor, amp: bool) -> Tensor:
    """Whether the workers' gradient ``norms`` (1-D) agree: all finite and each within a relative 1e-6 of
    ``norms[0]``; with ``amp`` a non-finite norm also passes. A bool tensor on ``norms``'s device."""
    finite = torch.isfinite(norms).all()
    close = (norms - norms[0]).abs().max() / (norms[0] + 1e-6) < 1e-6
    return (finite & close) | (~finite & amp)


def resolve(trainer) -> None:
    """Read ``trainer``'s pending check, if any (waiting only for its copies), and raise fairseq's
    FloatingPointError if the norms disagreed."""
    pending = trainer.__dict__.pop(PENDING, None)
    if pending is None:
        return
    if pending.copied is not None:
        pending.copied.synchronize()
    if not pending.consistent.item():
        by_rank = "\n".join(f"rank {rank:3d} = {norm:.8f}" for rank, norm in enumerate(pending.norms.tolist()))
        raise FloatingPointError(
            f"Fatal error: gradients are inconsistent between workers at update {pending.update} (found at the "
            "next update's check). Try --ddp-backend=legacy_ddp, or check that all GPUs are of one generation.\n"
            f"grad_norm across the workers:\n{by_rank}")


@functools.lru_cache(maxsize=None)
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream on ``device`` that checks the norms (made once)."""
    return torch.cuda.Stream(device=device)


def start_check(trainer, grad_norm) -> None:
    """Queue the all-reduce of ``grad_norm`` into ``trainer._grad_norm_buf`` and the test, on a side stream
    behind the current one on CUDA, and keep them as ``trainer``'s pending check."""
    buffer = trainer._grad_norm_buf
    on_cuda = buffer.device.type == "cuda"
    stream = _side_stream(buffer.device) if on_cuda else None
    if on_cuda:
        stream.wait_stream(torch.cuda.current_stream(buffer.device))
        if torch.is_tensor(grad_norm):
            grad_norm.record_stream(stream)
    with torch.cuda.stream(stream) if on_cuda else contextlib.nullcontext():
        buffer.zero_()
        buffer[trainer.data_parallel_rank] = grad_norm
        distributed_utils.all_reduce(buffer, group=trainer.data_parallel_process_group)
        consistent = torch.empty((), dtype=torch.bool, pin_memory=on_cuda)
        norms = torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=on_cuda)
        consistent.copy_(norms_agree(buffer, bool(trainer.cfg.common.amp)), non_blocking=on_cuda)
        norms.copy_(buffer, non_blocking=on_cuda)
        copied = torch.cuda.Event() if on_cuda else None
        if on_cuda:
            copied.record(stream)
    setattr(trainer, PENDING, PendingCheck(trainer.get_num_updates() + 1, consistent, norms, copied))


def _checking_one_update_later(check_grad_norms):
    @functools.wraps(check_grad_norms)
    def wrapper(self, grad_norm):
        if self._grad_norm_buf is None:
            return check_grad_norms(self, grad_norm)
        resolve(self)
        start_check(self, grad_norm)

    return wrapper


def _resolving_before_saving(save_checkpoint):
    @functools.wraps(save_checkpoint)
    def wrapper(self, *args, **kwargs):
        resolve(self)
        return save_checkpoint(self, *args, **kwargs)

    return wrapper


def check_grad_norms_one_update_later() -> None:
    """Patch fairseq's Trainer._check_grad_norms and Trainer.save_checkpoint once (see the module's
    docstring)."""
    patch_once(Trainer, "_check_grad_norms", _checking_one_update_later)
    patch_once(Trainer, "save_checkpoint", _resolving_before_saving)
