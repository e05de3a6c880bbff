"""fairseq's summed training statistics, all-reduced without making the host wait for the backward pass.

With several GPUs, fairseq's Trainer sums each update's statistics over the workers
(``_fast_stat_sync_sum`` through ``distributed_utils.all_reduce_dict``, which only it calls) before it
all-reduces the gradients. The host numbers among them (sample_size, ooms, the training time, the
criterion's ntokens and nsentences) reach the GPU through a blocking copy on the compute stream: the
host waits there for the whole backward pass, then issues the gradient all-reduce, the clipping and the
optimizer step while the GPU idles. The sums come back as GPU tensors that the host waits on again at
every use (``sample_size or 1.0``, each meter's ``n > 0``): 28 waits an update on 2 GPUs against 12 on
one (``benchmarks/e2e/profile_train_step.py --sync-sites``, 2 x H200).

Here the host numbers are summed on a side CUDA stream (pinned copy in, all-reduce, copy out), which
waits only for the other workers to reach the same point, and come back as host values: a Python number
for a Python number (an int for an int), a CPU float64 tensor for a CPU tensor. The GPU tensors (the
losses) are summed on the compute stream in float64, queued behind the backward pass with no wait, and
stay GPU tensors. The sums are fairseq's (float64 additions of the same values). On the CPU (gloo) the
host numbers are all-reduced directly. fairseq's ``all_reduce_dict`` runs on TPUs, on CUDA without NCCL
and on other device types.
"""
import functools
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from fairseq.distributed import utils as distributed_utils

from .patching import patch_once


@functools.lru_cache(maxsize=None)
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream on ``device`` that sums host numbers (made once)."""
    return torch.cuda.Stream(device=device)


def _sum_host_values(values: List[float], device: torch.device, group) -> List[float]:
    """``values`` summed over the workers of ``group``, in float64, without waiting for ``device``'s
    current stream."""
    local = torch.tensor(values, dtype=torch.float64)
    if device.type == "cpu":
        distributed_utils.all_reduce(local, group)
        return local.tolist()
    local = local.pin_memory()
    summed = torch.empty_like(local, pin_memory=True)
    stream = _side_stream(device)
    with torch.cuda.stream(stream):
        on_device = local.to(device, non_blocking=True)
        distributed_utils.all_reduce(on_device, group)
        summed.copy_(on_device, non_blocking=True)
    stream.synchronize()
    return summed.tolist()


def summed_statistics(data: Dict[str, Any], device: torch.device, group) -> Dict[str, Any]:
    """``data`` (names to Python numbers, CPU tensors and ``device`` tensors) summed over ``group``'s
    workers in float64: host values come back as host values (int for int, float for float, CPU float64
    tensors of their shape), ``device`` tensors as float64 ``device`` tensors of their shape."""
    on_host = {k: v for k, v in data.items() if not torch.is_tensor(v) or v.device.type != device.type}
    on_device = {k: v for k, v in data.items() if k not in on_host}
    summed = {}
    if on_host:
        flat = [float(x) for v in on_host.values()
                for x in (v.reshape(-1).tolist() if torch.is_tensor(v) else [v])]
        sums = _sum_host_values(flat, device, group)
        offset = 0
        for k, v in on_host.items():
            if torch.is_tensor(v):
                summed[k] = torch.tensor(sums[offset:offset + v.numel()], dtype=torch.float64).view(v.shape)
                offset += v.numel()
            else:
                summed[k] = int(sums[offset]) if isinstance(v, int) else sums[offset]
                offset += 1
    if on_device:
        flat = torch.cat([v.reshape(-1).to(torch.float64) for v in on_device.values()])
        distributed_utils.all_reduce(flat, group)
        pieces = flat.split([v.numel() for v in on_device.values()])
        summed.update((k, piece.view(v.shape)) for (k, v), piece in zip(on_device.items(), pieces))
    return {k: summed[k] for k in data}


def _summing_without_waiting(all_reduce_dict):
    @functools.wraps(all_reduce_dict)
    def wrapper(data: Dict[str, Any], device: torch.device, group) -> Dict[str, Any]:
        if device.type == "cpu" or (device.type == "cuda" and dist.get_backend(group) == "nccl"):
            return summed_statistics(data, device, group)
        return all_reduce_dict(data, device, group)

    return wrapper


def sum_statistics_without_waiting() -> None:
    """Patch fairseq's ``distributed_utils.all_reduce_dict`` once (see the module's docstring)."""
    patch_once(distributed_utils, "all_reduce_dict", _summing_without_waiting)
