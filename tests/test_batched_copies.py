"""The batched copies (batched_copies) against float64 expectations and fairseq's own per-parameter
loops: FP16Optimizer on optimizers whose flat fp32 weights are laid out as fairseq lays them out (CPU:
the flat tensor is keyed by the parameters' device index, None), and LegacyDistributedDataParallel's
gradient all-reduce in 2 processes (gloo)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq.distributed.legacy_distributed_data_parallel import LegacyDistributedDataParallel
from fairseq.optim import fp16_optimizer

import mega_fairseq  # noqa: F401  (applies the patches)
from fairseq_helpers import free_port
from mega_fairseq.batched_copies import (_batched_all_reduce_grads, _batched_fp32_params_to_fp16, _batched_grads_to_fp32,
                                         GatherBuffer, _flat_params)

MIXIN = fp16_optimizer._FP16OptimizerMixin
SHAPES = [(7, 5), (13,), (3, 1, 9), (1,), (64, 3)]


class FlatOptimizer(MIXIN):
    """The mixin's state as FP16Optimizer builds it with flat fp32 weights."""

    def __init__(self, params):
        super().__init__()
        self.fp16_params = params
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        flat = torch.nn.Parameter(flat)
        flat.grad = torch.zeros_like(flat)
        self.fp32_params = {params[0].device.index: flat}
        self._needs_sync = False


def half_params(seed: int, shapes=SHAPES, dtype=torch.float16):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def set_grads(params, seed: int, missing=()):
    generator = torch.Generator().manual_seed(seed)
    for i, p in enumerate(params):
        p.grad = None if i in missing else torch.randn(p.shape, generator=generator).to(p.dtype)


def fallback_not_expected(optimizer):
    raise AssertionError("fairseq's per-parameter loop ran where the batched copy applies")


def test_the_plugin_patches_fp16_optimizer():
    assert "_batched_grads_to_fp32" in MIXIN._sync_fp16_grads_to_fp32.mega_patches
    assert "_batched_fp32_params_to_fp16" in MIXIN._sync_fp32_params_to_fp16.mega_patches


@pytest.mark.parametrize("seed, missing", [(0, ()), (1, (1,)), (2, (0, 4))])
def test_gradients_reach_the_flat_fp32_gradient_exactly(seed, missing):
    params = half_params(seed)
    optimizer = FlatOptimizer(params)
    set_grads(params, seed + 10, missing)
    optimizer._needs_sync = True
    _batched_grads_to_fp32(fallback_not_expected)(optimizer)
    expected = torch.cat([(p.grad.double() if p.grad is not None else torch.zeros(p.shape, dtype=torch.float64))
                          .reshape(-1) for p in params])
    assert torch.equal(optimizer.fp32_params[None].grad.double(), expected)
    assert not optimizer._needs_sync


def test_gradients_are_copied_only_when_needed():
    params = half_params(3)
    optimizer = FlatOptimizer(params)
    set_grads(params, 4)
    optimizer._sync_fp16_grads_to_fp32()  # _needs_sync False: nothing to copy
    assert torch.count_nonzero(optimizer.fp32_params[None].grad) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_return_to_the_half_parameters_rounded_as_fairseq_rounds_them(seed):
    params = half_params(seed)
    optimizer = FlatOptimizer(params)
    new_weights = torch.randn(optimizer.fp32_params[None].numel(), generator=torch.Generator().manual_seed(seed))
    optimizer.fp32_params[None].data.copy_(new_weights)
    reference = FlatOptimizer(half_params(seed))
    reference.fp32_params[None].data.copy_(new_weights)
    MIXIN._sync_fp32_params_to_fp16.__wrapped__(reference)

    _batched_fp32_params_to_fp16(fallback_not_expected)(optimizer)
    offset = 0
    for p, q in zip(params, reference.fp16_params):
        expected = new_weights[offset:offset + p.numel()].double().reshape(p.shape)
        assert p.dtype == torch.float16 and torch.equal(p.detach(), q.detach())
        assert torch.allclose(p.detach().double(), expected, rtol=1e-3, atol=1e-4)
        offset += p.numel()
    assert all(p.requires_grad and p.grad_fn is None for p in params)


def test_same_results_as_fairseqs_loops_over_several_updates():
    params, reference_params = half_params(5), half_params(5)
    optimizer, reference = FlatOptimizer(params), FlatOptimizer(reference_params)
    for update in range(3):
        for ps, opt, sync_grads, sync_weights in (
                (params, optimizer, MIXIN._sync_fp16_grads_to_fp32, MIXIN._sync_fp32_params_to_fp16),
                (reference_params, reference, MIXIN._sync_fp16_grads_to_fp32.__wrapped__,
                 MIXIN._sync_fp32_params_to_fp16.__wrapped__)):
            set_grads(ps, 20 + update, missing=(update,))
            opt._needs_sync = True
            sync_grads(opt)
            flat = opt.fp32_params[None]
            flat.data.add_(flat.grad, alpha=-0.1)  # an SGD step on the master weights
            sync_weights(opt)
        assert torch.equal(optimizer.fp32_params[None].grad, reference.fp32_params[None].grad)
        assert all(torch.equal(p, q) for p, q in zip(params, reference_params))


@pytest.mark.parametrize("case", ["mixed dtypes", "frozen parameter", "sizes do not add up"])
def test_fairseqs_loops_run_where_the_batched_copies_do_not_apply(case):
    params = half_params(6)
    optimizer = FlatOptimizer(params)
    if case == "mixed dtypes":
        params[2].data = params[2].data.float()
    elif case == "frozen parameter":
        params[1].requires_grad_(False)
    else:
        optimizer.fp16_params = params[:-1]
    set_grads(params, 7)
    optimizer._needs_sync = True
    calls = []
    original = MIXIN._sync_fp16_grads_to_fp32.__wrapped__

    def recording_fairseq_loop(self):
        calls.append("fairseq")
        return original(self)

    _batched_grads_to_fp32(recording_fairseq_loop)(optimizer)
    assert calls == ["fairseq"]


@pytest.mark.parametrize("change", ["frozen parameter", "mixed dtypes"])
def test_a_parameter_changed_between_updates_brings_back_fairseqs_loop(change):
    """The layouts kept after a batched update are worked out again when a parameter's requires_grad or dtype
    changes: fairseq's loop runs while the batched copy does not apply, the batched copy again after."""
    params = half_params(8)
    optimizer = FlatOptimizer(params)
    calls = []
    original = MIXIN._sync_fp16_grads_to_fp32.__wrapped__

    def recording_fairseq_loop(self):
        calls.append("fairseq")
        return original(self)

    sync = _batched_grads_to_fp32(recording_fairseq_loop)
    dtype = params[3].dtype
    for changed in (False, True, False):
        if change == "frozen parameter":
            params[3].requires_grad_(not changed)
        else:
            params[3].data = params[3].data.to(torch.float32 if changed else dtype)
        set_grads(params, 9)
        optimizer._needs_sync = True
        calls.clear()
        sync(optimizer)
        assert calls == (["fairseq"] if changed else [])
        if not changed:
            expected = torch.cat([p.grad.double().reshape(-1) for p in params])
            assert torch.equal(optimizer.fp32_params[None].grad.double(), expected)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_fp16_optimizer_steps_match_fairseqs_loops(device, monkeypatch):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if device == "cpu":  # fairseq keys the flat weights by the current CUDA device: the CPU's index is None
        monkeypatch.setattr(torch.cuda, "current_device", lambda: None)

    def build(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 7))
        model = model.to(device).half()
        args = options.parse_args_and_arch(options.get_training_parser(), input_args=[
            "data", "--arch", "transformer", "--optimizer", "adam", "--lr", "0.01", "--fp16",
            "--fp16-init-scale", "128"])
        cfg = convert_namespace_to_omegaconf(args)
        return model, fp16_optimizer.FP16Optimizer.build_optimizer(cfg, list(model.parameters()))

    (model, optimizer), (reference_model, reference) = build(0), build(0)
    assert _flat_params(optimizer, next(iter(optimizer.fp32_params))) is not None  # the batched copies apply
    patched = (MIXIN._sync_fp16_grads_to_fp32, MIXIN._sync_fp32_params_to_fp16)
    inputs = torch.randn(17, 33, device=device).half()
    for net, opt, batched in ((model, optimizer, True), (reference_model, reference, False)):
        if not batched:
            monkeypatch.setattr(MIXIN, "_sync_fp16_grads_to_fp32", patched[0].__wrapped__)
            monkeypatch.setattr(MIXIN, "_sync_fp32_params_to_fp16", patched[1].__wrapped__)
        for _ in range(3):
            opt.zero_grad()
            opt.backward(net(inputs).float().pow(2).mean())
            opt.clip_grad_norm(1.0)
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference_model.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), build(0)[0].parameters()))


def rank_grads(model: torch.nn.Module, rank: int, missing: int):
    """Seeded gradients of ``rank``; parameter number ``missing`` has none."""
    generator = torch.Generator().manual_seed(100 + rank)
    for i, p in enumerate(model.parameters()):
        grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        p.grad = None if i == missing else grad


def small_model(dtype: torch.dtype) -> torch.nn.Module:
    """Parameters of 35, 5, 15, 3, 33 and 11 elements."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3), torch.nn.Linear(3, 11)).to(dtype)


LEGACY_CASES = [(2**28, torch.float32), (20, torch.float32), (16, torch.float16)]  # (buffer size, dtype)


def legacy_ddp_rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for buffer_size, dtype in LEGACY_CASES:
            batched, reference = (LegacyDistributedDataParallel(small_model(dtype), dist.group.WORLD, buffer_size)
                                  for _ in "ab")
            rank_grads(batched.module, rank, missing=3)
            rank_grads(reference.module, rank, missing=3)
            calls = []
            _batched_all_reduce_grads_recording(calls)(batched)
            assert calls == [], "fairseq's loop ran where the batched all-reduce applies"
            LegacyDistributedDataParallel.all_reduce_grads.__wrapped__(reference)
            ranks = [small_model(dtype) for _ in "ab"]
            for r, m in enumerate(ranks):
                rank_grads(m, r, missing=3)
            tolerance = 1e-3 if dtype == torch.float16 else 1e-6
            for i, (p, q) in enumerate(zip(batched.module.parameters(), reference.module.parameters())):
                assert torch.equal(p.grad, q.grad), f"{buffer_size} {dtype} parameter {i}: not fairseq's result"
                rank_params = [list(m.parameters())[i] for m in ranks]
                expected = sum(torch.zeros(p.shape, dtype=torch.float64) if rp.grad is None else rp.grad.double()
                               for rp in rank_params) / 2
                torch.testing.assert_close(p.grad.double(), expected, rtol=tolerance, atol=tolerance)
            with batched.no_sync():
                before = [p.grad.clone() for p in batched.module.parameters()]
                batched.all_reduce_grads()
                assert all(torch.equal(p.grad, b) for p, b in zip(batched.module.parameters(), before))
            for frozen in (True, False):  # a parameter frozen, then trained again: the kept plan follows
                for model in (batched.module, reference.module):
                    list(model.parameters())[1].requires_grad_(not frozen)
                    rank_grads(model, rank + 2, missing=4)
                _batched_all_reduce_grads_recording(calls)(batched)
                LegacyDistributedDataParallel.all_reduce_grads.__wrapped__(reference)
                assert calls == [] and all(torch.equal(p.grad, q.grad) for p, q in zip(
                    batched.module.parameters(), reference.module.parameters())), f"frozen {frozen}: not fairseq's"
        model = LegacyDistributedDataParallel(small_model(torch.float32), dist.group.WORLD)
        rank_grads(model.module, rank, missing=3)
        next(model.module.parameters()).grad.requires_grad_(True)
        with pytest.raises(RuntimeError, match="only works with gradients that don't require grad"):
            model.all_reduce_grads()
    finally:
        dist.destroy_process_group()


def _batched_all_reduce_grads_recording(calls):
    def recording_fairseq_loop(self):
        calls.append("fairseq")
        return LegacyDistributedDataParallel.all_reduce_grads.__wrapped__(self)
    return _batched_all_reduce_grads(recording_fairseq_loop)


def test_the_plugin_patches_legacy_ddp():
    assert "_batched_all_reduce_grads" in LegacyDistributedDataParallel.all_reduce_grads.mega_patches


def test_legacy_ddp_all_reduce_matches_fairseqs_loop_on_two_processes():
    """Buffers holding all parameters, a group at a time (one parameter larger than the buffer), fp16."""
    mp.spawn(legacy_ddp_rank, args=(free_port(),), nprocs=2)


def test_gather_buffer_is_kept_until_the_layout_changes():
    """gather equals torch.cat (several dtypes, a non-contiguous tensor), its pieces are the buffer's views
    shaped like the tensors, it keeps its buffer and pieces for the next call with the same layout, and
    makes new ones when a size, shape or dtype changes."""
    generator = torch.Generator().manual_seed(3)
    gathered = GatherBuffer()
    for dtype in (torch.float16, torch.float32, torch.float64):
        tensors = [torch.randn(shape, generator=generator).to(dtype) for shape in SHAPES]
        tensors.append(torch.randn(4, 6, generator=generator).to(dtype).t())  # not contiguous
        first = gathered.gather(tensors)
        assert torch.equal(first, torch.cat([t.reshape(-1) for t in tensors]))
        assert all(torch.equal(piece, t) for piece, t in zip(gathered.pieces, tensors))
        pieces = gathered.pieces
        again = [t * 2 for t in tensors]
        second = gathered.gather(again)
        assert second.data_ptr() == first.data_ptr() and gathered.pieces is pieces
        assert torch.equal(second, torch.cat([t.reshape(-1) for t in again]))
        second.zero_()
        assert all(not piece.any() for piece in gathered.pieces)
    shorter = gathered.gather(tensors[:-1])
    assert shorter.numel() == sum(t.numel() for t in tensors[:-1]) and shorter.data_ptr() != second.data_ptr()
    reshaped = gathered.gather([t.reshape(-1) for t in tensors[:-1]])
    assert [piece.shape for piece in gathered.pieces] == [t.reshape(-1).shape for t in tensors[:-1]]
    assert torch.equal(reshaped, shorter)
