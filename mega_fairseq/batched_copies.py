"""Batched copies for fairseq's per-parameter loops: FP16Optimizer (``--fp16``) and the gradient all-reduce
of ``--ddp-backend legacy_ddp``.

fairseq's FP16Optimizer keeps the fp32 master weights as one flat tensor per device. Every update it
copies the half-precision gradients into the flat fp32 gradient, and after the step the updated weights
back into the model, one parameter at a time: two Python loops of a slice and a copy per parameter (331
parameters in mega_wmt_en_de: about 660 launches an update). The update's device-to-host syncs (loss
scaling, gradient clipping) make the GPU wait for that host time. The copies here do the same in a few
launches: the gradients gathered in their dtype into a kept buffer with one multi-tensor copy
(``GatherBuffer``) and converted into the flat gradient with one copy; the flat weights converted once
and copied into the parameters with one multi-tensor copy. The values are the same bit for bit (the same
conversions). fairseq's own loops still run where the fp32 weights are not flat
(``--fp16-no-flatten-grads``, ``--bf16``), or where the parameters do not share one dtype or do not fill
the flat tensor exactly.

fairseq's LegacyDistributedDataParallel (``--ddp-backend legacy_ddp``) all-reduces the gradients after
the backward pass through a buffer that it fills and empties one parameter at a time (two more loops of
a copy per parameter). The batched all-reduce gathers the gradients of up to the buffer's size at once
(``GatherBuffer``), divides, all-reduces and copies them back with one multi-tensor copy: the same
operations on the same values. Without torch's DistributedDataParallel, torch.compile does not split the
layer graphs at gradient buckets, and no autograd hook copies gradients one by one during the backward
pass. fairseq's loop still runs for expert parameters, parameters of another dtype than the module's
first, and gradients that require grad (it raises its error).

Which parameters each batched copy covers, and in which groups, is worked out once and kept until a
parameter's requires_grad or dtype changes: checking every parameter every update cost ~0.3 ms of host
time an update on the CPU.
"""
import functools
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.distributed import legacy_distributed_data_parallel as legacy_ddp
from fairseq.distributed import utils as distributed_utils
from fairseq.optim import fp16_optimizer
from torch import Tensor

from .patching import patch_once


def _flat_params(optimizer, device) -> Optional[List[Tensor]]:
    """The half-precision parameters laid out in the flat fp32 tensor of ``device``, or None where the
    batched copies do not apply (mixed dtypes, non-contiguous parameters, sizes that do not add up)."""
    params = [p for p in optimizer.fp16_params if p.device.index == device]
    flat = optimizer.fp32_params[device]
    if not params or not all(p.requires_grad and p.is_contiguous() and p.dtype == params[0].dtype for p in params):
        return None
    if sum(p.numel() for p in params) != flat.numel():
        return None
    return params


def _settings(params: List[Tensor]) -> tuple:
    """What the layouts kept between updates depend on and a training run may change: each parameter's
    requires_grad and dtype (any other change that breaks a layout breaks fairseq's loops too)."""
    return tuple([(p.requires_grad, p.dtype) for p in params])


def _flat_layouts(optimizer) -> Optional[Dict]:
    """``_flat_params`` of every device of the flat fp32 weights, or None where they do not apply to one; kept
    until the parameters' settings change (checking every parameter each call took 0.13 ms on the CPU)."""
    if not optimizer.has_flat_params:
        return None
    settings = _settings(optimizer.fp16_params)
    kept = optimizer.__dict__.get("_mega_flat_layouts")
    if (kept is not None and kept[0] is optimizer.fp16_params and kept[1] is optimizer.fp32_params
            and kept[2] == settings):
        return kept[3]
    layouts = {device: _flat_params(optimizer, device) for device in optimizer.fp32_params}
    layouts = None if any(params is None for params in layouts.values()) else layouts
    optimizer._mega_flat_layouts = (optimizer.fp16_params, optimizer.fp32_params, settings, layouts)
    return layouts


class GatherBuffer:
    """A flat buffer kept between calls, into which ``gather`` copies a list of tensors (one dtype and
    device) with one multi-tensor copy: torch.cat of the flattened tensors without cat's kernel, which
    moved the ~300 gradients of mega_wmt_en_de far below the memory bandwidth (0.85 ms an update on an
    H200, on the update's critical path). ``pieces`` are views of the buffer shaped like the gathered
    tensors, made once per layout (making ~300 views costs the host ~0.5 ms a call), for copying back.
    The buffer is overwritten by the next ``gather`` and allocated again when the layout changes."""

    def __init__(self):
        self.buffer: Optional[Tensor] = None
        self.pieces: List[Tensor] = []
        self._layout = None

    def shaped_like(self, tensors: List[Tensor]) -> "GatherBuffer":
        """The buffer and pieces for ``tensors``' dtype, device and shapes, without copying them."""
        layout = (tensors[0].dtype, tensors[0].device, [t.shape for t in tensors])
        if layout != self._layout:
            self.buffer = torch.empty(sum(t.numel() for t in tensors), dtype=layout[0], device=layout[1])
            pieces = self.buffer.split([t.numel() for t in tensors])
            self.pieces = [piece.view(shape) for piece, shape in zip(pieces, layout[2])]
            self._layout = layout
        return self

    def gather(self, tensors: List[Tensor]) -> Tensor:
        """The flattened ``tensors`` (N_i elements each) in one tensor of sum N_i elements."""
        torch._foreach_copy_(self.shaped_like(tensors).pieces, tensors)
        return self.buffer


def _gather_buffer(owner, key) -> GatherBuffer:
    """The GatherBuffer ``key`` kept on ``owner`` (an optimizer, a DDP wrapper)."""
    return owner.__dict__.setdefault("_mega_gather_buffers", {}).setdefault(key, GatherBuffer())


def _batched_grads_to_fp32(sync_grads):
    @functools.wraps(sync_grads)
    def wrapper(self):
        layouts = _flat_layouts(self) if self._needs_sync else None
        if layouts is None:
            return sync_grads(self)
        for device, params in layouts.items():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            self.fp32_params[device].grad.copy_(_gather_buffer(self, ("grads", device)).gather(grads))
        self._needs_sync = False

    return wrapper


def _batched_fp32_params_to_fp16(sync_params):
    @functools.wraps(sync_params)
    def wrapper(self):
        layouts = _flat_layouts(self)
        if layouts is None:
            return sync_params(self)
        with torch.no_grad():
            for device, params in layouts.items():
                weights = _gather_buffer(self, ("weights", device)).shaped_like(params)
                weights.buffer.copy_(self.fp32_params[device])
                torch._foreach_copy_(params, weights.pieces)

    return wrapper


def batch_fp16_optimizer_copies() -> None:
    """Patch fairseq's FP16Optimizer (its mixin) once with the batched copies."""
    patch_once(fp16_optimizer._FP16OptimizerMixin, "_sync_fp16_grads_to_fp32", _batched_grads_to_fp32)
    patch_once(fp16_optimizer._FP16OptimizerMixin, "_sync_fp32_params_to_fp16", _batched_fp32_params_to_fp16)


def _buffer_groups(params: List[Tensor], buffer_size: int) -> List[List[Tensor]]:
    """``params`` in order, in groups of at most ``buffer_size`` elements (a larger parameter alone)."""
    groups, group, size = [], [], 0
    for p in params:
        if group and size + p.numel() > buffer_size:
            groups.append(group)
            group, size = [], 0
        group.append(p)
        size += p.numel()
    return groups + [group] if group else groups


def _all_reduce_plan(ddp) -> Optional[List[Tuple[List[Tensor], List[Tuple[int, int]]]]]:
    """Per device, the parameters that need gradients and the (start, end) of their groups that fill the
    buffer; None where fairseq's loop runs (expert parameters, a dtype other than the module's first
    parameter's). Kept until the parameters' settings change."""
    params = [p for device_params in ddp.per_device_params for p in device_params]
    settings = _settings(params)
    kept = ddp.__dict__.get("_mega_all_reduce_plan")
    if kept is not None and kept[0] == settings:
        return kept[1]
    dtype = next(ddp.module.parameters()).dtype
    plan = []
    for device_params in ddp.per_device_params:
        trained = [p for p in device_params if p.requires_grad]
        if any(hasattr(p, "expert") or p.dtype != dtype for p in trained):
            plan = None
            break
        bounds, start = [], 0
        for group in _buffer_groups(trained, ddp.buffer_size):
            bounds.append((start, start + len(group)))
            start += len(group)
        plan.append((trained, bounds))
    ddp._mega_all_reduce_plan = (settings, plan)
    return plan


def _batched_all_reduce_grads(all_reduce_grads):
    @functools.wraps(all_reduce_grads)
    def wrapper(self):
        if self.accumulate_grads:
            return
        plan = _all_reduce_plan(self)
        if plan is None:
            return all_reduce_grads(self)
        per_device = []
        for params, _ in plan:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            per_device.append([p.grad for p in params])
        if any(grad.requires_grad for grads in per_device for grad in grads):
            return all_reduce_grads(self)  # fairseq's error: DDP only works with gradients that don't require grad
        for (params, bounds), grads in zip(plan, per_device):
            for index, (start, end) in enumerate(bounds):
                group = grads[start:end]
                gathered = _gather_buffer(self, (params[0].device, index))
                flat = gathered.gather(group)
                flat.div_(self.world_size)
                distributed_utils.all_reduce(flat, self.process_group)
                torch._foreach_copy_(group, gathered.pieces)

    return wrapper


def batch_legacy_ddp_all_reduce() -> None:
    """Patch fairseq's LegacyDistributedDataParallel once with the batched all-reduce."""
    patch_once(legacy_ddp.LegacyDistributedDataParallel, "all_reduce_grads", _batched_all_reduce_grads)
