"""The cheap per-update host work (update_overheads) against what fairseq and torch do: the seeds set
directly on the generators equal torch.manual_seed's (CUDA's generators stood in for by CPU generators),
fairseq's seeding runs where the shortcut does not apply; a model's train()/eval() leaves every module's
flag as nn.Module.train does, whatever the mix before, and returns at once when nothing changes."""
from types import SimpleNamespace

import pytest
import torch
from fairseq import utils
from fairseq.models import BaseFairseqModel
from fairseq.trainer import Trainer
from torch import nn

import mega_fairseq  # noqa: F401  (applies the patches)
from fairseq_helpers import build_model
from mega_fairseq import update_overheads


def fake_trainer(seed: int, updates: int, tpu: bool = False):
    return SimpleNamespace(cfg=SimpleNamespace(common=SimpleNamespace(seed=seed)), get_num_updates=lambda: updates,
                           tpu=tpu)


def test_the_plugin_patches_seeding_and_mode_switches():
    assert "_seeding_generators" in Trainer._set_seed.mega_patches
    assert "_train_unless_settled" in BaseFairseqModel.train.mega_patches


@pytest.mark.parametrize("seed, updates", [(1, 0), (3, 17), (12345, 2001)])
def test_direct_seeds_equal_torch_manual_seed(monkeypatch, seed, updates):
    """With CUDA initialized (stood in for: two CPU generators as the CUDA devices' generators), the CPU
    generator and every CUDA generator are left as torch.manual_seed(seed + updates) leaves them."""
    devices = (torch.Generator(), torch.Generator())
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", devices)
    fairseq_calls = []
    set_seed = update_overheads._seeding_generators(lambda trainer: fairseq_calls.append(trainer))
    torch.manual_seed(999)
    for generator in devices:
        generator.manual_seed(998)
    set_seed(fake_trainer(seed, updates))
    assert not fairseq_calls
    expected = torch.Generator().manual_seed(seed + updates)
    for generator in (torch.default_generator, *devices):
        assert torch.equal(generator.get_state(), expected.get_state())
    assert torch.equal(torch.rand(5), torch.rand(5, generator=torch.Generator().manual_seed(seed + updates)))


@pytest.mark.parametrize("cuda_initialized, tpu, other_accelerator", [
    (False, False, False), (True, True, False), (True, False, True)])
def test_fairseq_seeds_where_the_shortcut_does_not_apply(monkeypatch, cuda_initialized, tpu, other_accelerator):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_initialized)
    monkeypatch.setattr(update_overheads, "_other_accelerator_available", lambda: other_accelerator)
    fairseq_calls = []
    set_seed = update_overheads._seeding_generators(lambda trainer: fairseq_calls.append(trainer))
    trainer = fake_trainer(5, 7, tpu=tpu)
    set_seed(trainer)
    assert fairseq_calls == [trainer]


def test_patched_set_seed_gives_fairseqs_seed_on_the_cpu():
    Trainer._set_seed(fake_trainer(4, 9))
    drawn = torch.rand(6)
    utils.set_torch_seed(13)
    assert torch.equal(drawn, torch.rand(6))


def flags(model: nn.Module):
    return [module.training for module in model.modules()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", [True, False])
def test_mode_switch_sets_every_module_as_nn_module_train(seed, mode):
    """Random mixes of modes before (including the settled ones) end as nn.Module.train leaves them."""
    generator = torch.Generator().manual_seed(seed)
    model, reference = build_model(), build_model()
    for module, twin in zip(model.modules(), reference.modules()):
        module.training = twin.training = bool(torch.rand((), generator=generator) < [0.0, 0.5, 0.95, 1.0][seed])
    assert model.train(mode) is model
    nn.Module.train(reference, mode)
    assert flags(model) == flags(reference) == [mode] * len(flags(model))
    model.eval()
    assert not any(flags(model))


def test_settled_mode_switch_returns_without_visiting_the_modules():
    model = build_model().train()
    visits = []
    switch = update_overheads._train_unless_settled(lambda module, mode: visits.append(mode))
    assert switch(model, True) is model and visits == []
    switch(model, False)
    assert visits == [False]
    with pytest.raises(ValueError, match="boolean"):
        model.train("yes")
