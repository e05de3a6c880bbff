"""The gradient-norm check read one update later (grad_norm_check): its verdict against a float64 rule
written here, and in 2 processes against fairseq's own Trainer._check_grad_norms (gloo on the CPU: the
same norms fail, one update later, with every worker's norm named; a checkpoint is not saved past a
failure); on CUDA (NCCL, one and two GPUs, skipped with fewer) the host does not wait for the GPU's queue."""
import math
import os
import random
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq.trainer import Trainer

import mega_fairseq  # noqa: F401  (applies the patches)
from fairseq_helpers import free_port
from mega_fairseq.grad_norm_check import PENDING, _resolving_before_saving, norms_agree

FAIRSEQ_CHECK = Trainer._check_grad_norms.__wrapped__


def agree_in_python(norms, amp: bool) -> bool:
    """fairseq's rule on Python floats: all finite and within a relative 1e-6 of the first, or (amp) not all finite."""
    finite = all(math.isfinite(n) for n in norms)
    gaps = [abs(n - norms[0]) for n in norms]
    close = not any(math.isnan(g) for g in gaps) and max(gaps) / (norms[0] + 1e-6) < 1e-6
    return (finite and close) or (amp and not finite)


def random_norms(rng: random.Random, workers: int) -> list:
    first = rng.choice([0.0, rng.uniform(1e-3, 1.0), rng.uniform(1.0, 1e4)])
    norms = [first] * workers
    for rank in rng.sample(range(workers), rng.randint(0, workers)):
        norms[rank] = rng.choice([first * (1 + rng.choice([1e-9, -1e-9, 1e-5, -1e-5, 0.5])), first + 1e-9,
                                  math.inf, -math.inf, math.nan, rng.uniform(0.0, 10.0)])
    return norms


def test_the_plugin_patches_the_check_and_the_checkpoint_save():
    assert "_checking_one_update_later" in Trainer._check_grad_norms.mega_patches
    assert "_resolving_before_saving" in Trainer.save_checkpoint.mega_patches


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_verdict_equals_fairseqs_rule(workers):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(300):
        norms, amp = random_norms(rng, workers), rng.random() < 0.5
        verdict = norms_agree(torch.tensor(norms, dtype=torch.float64), amp)
        assert verdict.dtype == torch.bool and verdict.shape == ()
        assert verdict.item() == agree_in_python(norms, amp), (seed, norms, amp)


def stand_in_trainer(rank: int, device: torch.device, amp: bool = False):
    updates = {"n": 0}
    return SimpleNamespace(_grad_norm_buf=torch.zeros(2, dtype=torch.float64, device=device), data_parallel_rank=rank,
                           data_parallel_process_group=dist.group.WORLD, cfg=SimpleNamespace(common=SimpleNamespace(amp=amp)),
                           get_num_updates=lambda: updates["n"], updates=updates)


def updates_that_fail(check, rank: int, device: torch.device, norms_by_update, amp: bool = False) -> list:
    """The updates (1-based) at whose check ``check`` raised fairseq's error, each with its message."""
    trainer, failed = stand_in_trainer(rank, device, amp), []
    for norms in norms_by_update:
        try:
            check(trainer, torch.tensor(norms[rank], device=device))
        except FloatingPointError as error:
            failed.append((trainer.updates["n"] + 1, str(error)))
        trainer.updates["n"] += 1
    return failed


def check_against_fairseq(rank: int, device: torch.device) -> None:
    norms_by_update = [(1.5, 1.5), (1.5, 2.5), (3.0, 3.0), (math.inf, 2.0), (2.0, 2.0), (4.0, 4.0 * (1 + 1e-9)), (1.0, 1.0)]
    fairseq_failures = [update for update, _ in updates_that_fail(FAIRSEQ_CHECK, rank, device, norms_by_update)]
    failures = updates_that_fail(Trainer._check_grad_norms, rank, device, norms_by_update)
    assert fairseq_failures == [2, 4]
    assert [update for update, _ in failures] == [3, 5]
    message = failures[0][1]
    assert "inconsistent between workers at update 2" in message
    assert "rank   0 = 1.50000000" in message and "rank   1 = 2.50000000" in message
    assert "rank   0 = inf" in failures[1][1]
    amp_failures = updates_that_fail(Trainer._check_grad_norms, rank, device, norms_by_update, amp=True)
    assert [update for update, _ in amp_failures] == [3]

    saved = []
    save = _resolving_before_saving(lambda trainer, filename, extra: saved.append(filename))
    trainer = stand_in_trainer(rank, device)
    Trainer._check_grad_norms(trainer, torch.tensor(1.0 + rank, device=device))
    with pytest.raises(FloatingPointError, match="at update 1"):
        save(trainer, "checkpoint_last.pt", {})
    assert saved == [] and PENDING not in vars(trainer)
    Trainer._check_grad_norms(trainer, torch.tensor(2.0, device=device))
    save(trainer, "checkpoint_last.pt", {})
    save(trainer, "checkpoint_best.pt", {})
    assert saved == ["checkpoint_last.pt", "checkpoint_best.pt"]

    trainer._grad_norm_buf = None  # fairseq's trainer on one worker, or on the CPU: fairseq's check (none)
    Trainer._check_grad_norms(trainer, torch.tensor(1.0 + rank, device=device))
    assert PENDING not in vars(trainer)


def gloo_rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        check_against_fairseq(rank, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_disagreeing_norms_fail_one_update_after_fairseq_on_two_cpu_processes():
    """fairseq fails the updates whose norms disagree (2, and 4 with an infinite norm); here the next
    update's check fails (3, 5), naming the update and the norms; with --amp an infinite norm passes; a
    checkpoint save reads a pending check first."""
    mp.spawn(gloo_rank, args=(free_port(),), nprocs=2)


def nccl_rank(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
    try:
        if world_size == 2:
            check_against_fairseq(rank, device)
        trainer = stand_in_trainer(rank, device)
        trainer._grad_norm_buf = torch.zeros(world_size, dtype=torch.float64, device=device)
        for norm in (2.0, 2.0 + rank):
            grad_norm = torch.full((), norm, device=device)
            torch.cuda.synchronize()
            torch.cuda._sleep(2_000_000_000)  # about a second of the compute stream's time
            Trainer._check_grad_norms(trainer, grad_norm)
            assert not torch.cuda.current_stream().query(), "the host waited for the compute stream"
            trainer.updates["n"] += 1
        if world_size == 2:
            with pytest.raises(FloatingPointError, match="at update 2"):
                Trainer._check_grad_norms(trainer, torch.full((), 2.0, device=device))
        torch.cuda.synchronize()
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.parametrize("world_size", [1, 2])
def test_the_check_does_not_wait_for_the_gpus_queue(world_size):
    if torch.cuda.device_count() < world_size:
        pytest.skip(f"needs {world_size} CUDA GPUs")
    mp.spawn(nccl_rank, args=(world_size, free_port()), nprocs=world_size)
