"""syncbatchnorm across 2 CPU processes (gloo): statistics, running buffers and gradients equal
a batch norm over the rows of both ranks together."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mega_fairseq.modules import SequenceNorm

ROWS = {0: 5, 1: 9}
DIM = 6


def rank_inputs(rank):
    generator = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(ROWS[rank], DIM, generator=generator, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(ROWS[rank], DIM, generator=generator, dtype=torch.float64)
    return x, upstream


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = SequenceNorm("syncbatchnorm", DIM).double().train()
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.5, 0.5)
    x, upstream = rank_inputs(rank)
    x.requires_grad_(True)
    out = norm(x.view(ROWS[rank], 1, DIM)).view(ROWS[rank], DIM)
    (out * upstream).sum().backward()
    torch.save({"out": out.detach(), "grad": x.grad, "running_mean": norm.norm.running_mean,
                "running_var": norm.norm.running_var, "weight_grad": norm.norm.weight.grad,
                "weight": norm.norm.weight.detach(), "bias": norm.norm.bias.detach()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_statistics_and_gradients_are_shared_across_ranks(tmp_path):
    # forked workers start at once; spawned ones would import torch, pytest and the plugin again (~20 s)
    mp.start_processes(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    inputs = [rank_inputs(rank) for rank in (0, 1)]
    x = torch.cat([inputs[0][0], inputs[1][0]]).requires_grad_(True)
    upstream = torch.cat([inputs[0][1], inputs[1][1]])
    weight = results[0]["weight"].clone().requires_grad_(True)
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * weight + results[0]["bias"]
    (expected * upstream).sum().backward()
    torch.testing.assert_close(torch.cat([r["out"] for r in results]), expected.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]), x.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[0]["weight_grad"] + results[1]["weight_grad"], weight.grad,
                               rtol=1e-9, atol=1e-9)
    count = x.size(0)
    for r in results:
        torch.testing.assert_close(r["running_mean"], 0.1 * mean.detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(r["running_var"], 0.9 + 0.1 * var.detach() * count / (count - 1),
                                   rtol=1e-9, atol=1e-12)
