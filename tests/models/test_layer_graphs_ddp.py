"""--layer-graphs under DistributedDataParallel (fairseq's default --ddp-backend c10d), 2 processes on the
CPU (gloo). Inside DDP's forward, torch.compile hands the stacks' graphs to its DDPOptimizer, which splits
them at gradient-bucket boundaries and compiles each piece (on a GPU: a CUDA graph each). The stacks run
traced and split here (AOT autograd, no code generation) and must give the eager model's outputs and
gradients on each rank. Marked slow (about 40 s of tracing)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.backends.common import aot_autograd

from fairseq_helpers import build_model, free_port, loss_and_grads, make_dictionary, translation_batch, translation_loss
from mega_fairseq.models import compile as compile_module
from mega_fairseq.models import mega as mega_module

WIDE = ["--encoder-embed-dim", "128", "--encoder-hidden-dim", "512", "--encoder-ffn-embed-dim", "512",
        "--encoder-z-dim", "64"]  # about 4 MB of parameters per layer: several 1 MB buckets per stack


def rank_checks(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        pieces = []

        def counting_compiler(graph, inputs):
            pieces.append(graph)
            return graph

        compile_module.GRAPH_BACKEND = aot_autograd(fw_compiler=counting_compiler, bw_compiler=counting_compiler)
        mega_module.graphs_apply = lambda setting, training, x: setting == "auto" and training
        dictionary = make_dictionary()
        graphed = build_model(WIDE, dictionary, seed=4).train()
        eager = build_model([*WIDE, "--layer-graphs", "off"], dictionary, seed=4).train()
        wrapped = torch.nn.parallel.DistributedDataParallel(graphed, bucket_cap_mb=1)
        for seed, sources, targets in ((0, [7, 5, 2], [6, 4, 6]), (1, [11, 9], [9, 3])):
            batch = translation_batch(dictionary, sources, targets, seed)
            wrapped.zero_grad()
            out, _ = wrapped(*batch)
            translation_loss(out).backward()
            expected, grads = loss_and_grads(eager, batch)
            torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
            for name, parameter in graphed.named_parameters():
                torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-9, atol=1e-12, msg=name)
        assert len(pieces) > 4, f"DDPOptimizer was expected to split the stacks: {len(pieces)} compiled graphs"
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_stacks_under_ddp_match_eager():
    mp.spawn(rank_checks, args=(free_port(),), nprocs=2)
