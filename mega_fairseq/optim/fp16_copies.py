"""Batched gradient and weight copies for fairseq's FP16Optimizer (``--fp16``).

fairseq's FP16Optimizer keeps the fp32 master weights as one flat tensor per device. Every update it
copies the half-precision gradients into the flat fp32 gradient, and after the step the updated
weights back into the model, one parameter at a time: two Python loops of a slice and a copy per
parameter (331 parameters in mega_wmt_en_de: about 660 launches an update). The update's device-to-host
syncs (loss scaling, gradient clipping) make the GPU wait for that host time. The copies here do the
same in a few launches: the gradients concatenated in their dtype and converted into the flat gradient
with one copy; the flat weights converted once and copied into the parameters with one multi-tensor
copy. The values are the same bit for bit (the same conversions). fairseq's own loops still run where
the fp32 weights are not flat (``--fp16-no-flatten-grads``, ``--bf16``), or where the parameters do not
share one dtype or do not fill the flat tensor exactly.
"""
import functools
from typing import List, Optional

import torch
from fairseq.optim import fp16_optimizer
from torch import Tensor


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


def _batched_grads_to_fp32(sync_grads):
    @functools.wraps(sync_grads)
    def wrapper(self):
        if not self._needs_sync or not self.has_flat_params:
            return sync_grads(self)
        layouts = {device: _flat_params(self, device) for device in self.fp32_params}
        if any(params is None for params in layouts.values()):
            return sync_grads(self)
        for device, params in layouts.items():
            grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
            self.fp32_params[device].grad.copy_(torch.cat(grads))
        self._needs_sync = False

    wrapper.batched = True
    return wrapper


def _batched_fp32_params_to_fp16(sync_params):
    @functools.wraps(sync_params)
    def wrapper(self):
        if not self.has_flat_params:
            return sync_params(self)
        layouts = {device: _flat_params(self, device) for device in self.fp32_params}
        if any(params is None for params in layouts.values()):
            return sync_params(self)
        with torch.no_grad():
            for device, params in layouts.items():
                weights = self.fp32_params[device].detach().to(params[0].dtype)
                torch._foreach_copy_([p.view(-1) for p in params], torch.split(weights, [p.numel() for p in params]))

    wrapper.batched = True
    return wrapper


def batch_fp16_optimizer_copies() -> None:
    """Patch fairseq's FP16Optimizer (its mixin) once with the batched copies."""
    mixin = fp16_optimizer._FP16OptimizerMixin
    if not getattr(mixin._sync_fp16_grads_to_fp32, "batched", False):
        mixin._sync_fp16_grads_to_fp32 = _batched_grads_to_fp32(mixin._sync_fp16_grads_to_fp32)
    if not getattr(mixin._sync_fp32_params_to_fp16, "batched", False):
        mixin._sync_fp32_params_to_fp16 = _batched_fp32_params_to_fp16(mixin._sync_fp32_params_to_fp16)
