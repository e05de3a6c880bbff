"""The statistics sums (stats_sync) through fairseq's Trainer._fast_stat_sync_sum against float64 sums
written here and against fairseq's own all_reduce_dict, in 2 processes: gloo on the CPU, NCCL on 2 GPUs
(skipped with fewer), where the host numbers must come back while the compute stream is still busy."""
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer

import mega_fairseq  # noqa: F401  (applies the patches)
from fairseq_helpers import free_port
from mega_fairseq.stats_sync import _summing_without_waiting

FAIRSEQ_ALL_REDUCE_DICT = distributed_utils.all_reduce_dict.__wrapped__


def fairseq_sum(trainer, logs, *extra):
    """Trainer._fast_stat_sync_sum with fairseq's own all_reduce_dict."""
    patched = distributed_utils.all_reduce_dict
    distributed_utils.all_reduce_dict = FAIRSEQ_ALL_REDUCE_DICT
    try:
        return Trainer._fast_stat_sync_sum(trainer, logs, *extra)
    finally:
        distributed_utils.all_reduce_dict = patched


def rank_statistics(rank: int, device: torch.device, host_tensor: bool):
    """Two batches' logging outputs and the trainer's extra statistics of worker ``rank``: Python ints
    and floats, ``device`` tensors of three dtypes (one a vector), a CPU tensor where ``host_tensor``."""
    generator = torch.Generator().manual_seed(rank)
    logs = []
    for batch in range(2):
        log = {"ntokens": 1000 + 37 * rank + batch, "nsentences": 31 + rank, "sample_size": 977 + rank * 5 + batch,
               "loss": torch.rand((), generator=generator).to(device) * 1e3,
               "nll_loss": torch.rand((), generator=generator, dtype=torch.float64).to(device) * 1e3,
               "n_correct": torch.randint(0, 100, (3,), generator=generator).to(device)}
        if host_tensor:
            log["host_loss"] = torch.rand(2, generator=generator) * 1e3
        logs.append(log)
    extra = (977 * 2 + rank, 0, 12.25 + math.pi * rank)
    return logs, extra


def expected_sums(device: torch.device, host_tensor: bool):
    """Every worker's statistics summed over the workers in float64 here (a worker's batches are summed
    in their own dtype first, as fairseq's trainer sums them)."""
    per_rank = [rank_statistics(rank, device, host_tensor) for rank in range(2)]
    logs = {k: sum(torch.as_tensor(sum(log[k] for log in logs)).double().cpu() for logs, _ in per_rank)
            for k in per_rank[0][0][0]}
    extra = [sum(torch.tensor(extra[i], dtype=torch.float64) for _, extra in per_rank) for i in range(3)]
    return logs, extra


def trainer_like(device: torch.device):
    return SimpleNamespace(device=device, data_parallel_process_group=dist.group.WORLD)


def check_against_fairseq(rank: int, device: torch.device, host_tensor: bool) -> None:
    trainer = trainer_like(device)
    patched = Trainer._fast_stat_sync_sum
    logs, extra = rank_statistics(rank, device, host_tensor)
    (summed,), sums = patched(trainer, logs, *extra)
    (fairseq_summed,), fairseq_sums = fairseq_sum(trainer, logs, *extra)
    expected_logs, expected_extra = expected_sums(device, host_tensor)
    assert list(summed) == list(logs[0])
    for k, value in summed.items():
        first = logs[0][k]
        if torch.is_tensor(first):
            assert value.device == first.device and value.dtype == torch.float64 and value.shape == first.shape, k
        else:
            assert type(value) is type(first), k
        assert torch.equal(torch.as_tensor(value).cpu(), fairseq_summed[k].cpu()), k
        assert torch.equal(torch.as_tensor(value, dtype=torch.float64).cpu(), expected_logs[k]), k
    assert [type(s) for s in sums] == [int, int, float]
    assert [torch.tensor(s, dtype=torch.float64) for s in sums] == [s.cpu() for s in fairseq_sums]
    assert [torch.tensor(s, dtype=torch.float64) for s in sums] == expected_extra
    (ignored,), ignored_sums = patched(trainer, logs, *extra, ignore=True)
    assert all(not torch.as_tensor(v).any() for v in ignored.values())
    assert [type(v) for v in ignored.values()] == [type(v) if not torch.is_tensor(v) else torch.Tensor
                                                   for v in logs[0].values()]
    assert torch.tensor(ignored_sums, dtype=torch.float64).tolist() == [s.item() for s in expected_extra]
    no_logs, only_sums = patched(trainer, [], *extra)
    assert no_logs == [] and only_sums == sums


def gloo_rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        check_against_fairseq(rank, torch.device("cpu"), host_tensor=False)
    finally:
        dist.destroy_process_group()


def nccl_rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=2, device_id=device)
    try:
        check_against_fairseq(rank, device, host_tensor=True)
        logs, extra = rank_statistics(rank, device, host_tensor=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)  # about a second of the compute stream's time
        (summed,), sums = Trainer._fast_stat_sync_sum(trainer_like(device), logs, *extra)
        assert not torch.cuda.current_stream().query(), "the host waited for the compute stream"
        assert isinstance(summed["ntokens"], int) and isinstance(sums[0], int)
        assert summed["host_loss"].device.type == "cpu"
        torch.cuda.synchronize()
        expected_logs, _ = expected_sums(device, host_tensor=True)
        assert torch.equal(summed["loss"].cpu(), expected_logs["loss"])
    finally:
        dist.destroy_process_group()


def test_the_plugin_patches_all_reduce_dict():
    assert "_summing_without_waiting" in distributed_utils.all_reduce_dict.mega_patches


def test_sums_equal_fairseqs_on_two_cpu_processes():
    """Ints stay ints, floats floats, tensors float64 tensors of their shape; ignored batches sum to
    zeros of their types; no logging outputs; all equal to fairseq's sums and to float64 sums."""
    mp.spawn(gloo_rank, args=(free_port(),), nprocs=2)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_host_sums_do_not_wait_for_the_gpus_queue():
    mp.spawn(nccl_rank, args=(free_port(),), nprocs=2)


@pytest.mark.parametrize("device", [torch.device("meta"), torch.device("xla")])
def test_fairseqs_all_reduce_dict_runs_on_other_devices(device):
    calls = []

    def recording_fairseq_all_reduce_dict(data, device, group):
        calls.append((data, device, group))
        return "fairseq's"

    summing = _summing_without_waiting(recording_fairseq_all_reduce_dict)
    assert summing({"ntokens": 3}, device=device, group=None) == "fairseq's"
    assert calls == [({"ntokens": 3}, device, None)]
