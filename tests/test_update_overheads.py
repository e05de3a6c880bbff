"""The cheap per-update host work (update_overheads) against what fairseq and torch do: the seeds set
directly on the generators equal torch.manual_seed's (CUDA's generators stood in for by CPU generators),
fairseq's seeding runs where the shortcut does not apply; a model's train()/eval() leaves every module's
flag as nn.Module.train does, whatever the mix before, and returns at once when nothing changes; the update
number reaches the modules fairseq's set_num_updates reaches, in its order, on random module trees (shared
modules, empty entries, attribute-forwarding wrappers, a cycle), with has_attribute answering as hasattr and
submodules listing what nn.Module.modules lists; an epoch iterator's first batch (the trainer's dummy batch) is
fairseq's, collated once for each set of frozen batches."""
import random
from types import SimpleNamespace

import pytest
import torch
from fairseq import utils
from fairseq.data.iterators import EpochBatchIterator
from fairseq.models import BaseFairseqModel, FairseqEncoder
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


def test_the_plugin_patches_the_update_number_passing():
    assert "_passing_updates_to_submodules" in BaseFairseqModel.set_num_updates.mega_patches
    assert "_passing_updates_through_apply" in FairseqEncoder.set_num_updates.mega_patches


class Counting(nn.Module):
    """A module with set_num_updates, recording each call as (its name, the number)."""

    def __init__(self, name: str, calls: list):
        super().__init__()
        self.name, self.calls = name, calls

    def set_num_updates(self, num_updates):
        self.calls.append((self.name, num_updates))


class Forwarding(nn.Module):
    """Its own __getattr__ answers for the wrapped module's attributes (as fairseq's ModuleProxyWrapper)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class Odd(nn.Module):
    flag = None
    helper = staticmethod(lambda: 1)

    @property
    def broken(self):
        raise AttributeError("not here")

    @property
    def fine(self):
        return 1

    @classmethod
    def make(cls):
        return cls()


def random_tree(rng: random.Random, calls: list, encoder_class) -> nn.Module:
    """A fairseq model of random depth and width: Counting and plain modules, some shared between parents,
    None entries, modules that forward attributes, an encoder (``encoder_class``) with Counting modules
    inside, and a cycle outside the encoder (a module registered under itself: nn.Module.apply, which the
    encoder uses, would not end)."""
    made = []

    def grow(path: list) -> nn.Module:
        kind = rng.random()
        module = Counting(f"c{len(made)}", calls) if kind < 0.4 else Odd() if kind < 0.5 else nn.Module()
        made.append(module)
        others = [m for m in made if m is not module and all(m is not ancestor for ancestor in path)]
        for index in range(rng.randrange(0, 4) if len(path) < 4 else 0):
            roll = rng.random()
            child = (None if roll < 0.1 else rng.choice(others) if roll < 0.25 and others else
                     Forwarding(grow(path + [module])) if roll < 0.35 else grow(path + [module]))
            module.register_module(f"m{index}", child)
        return module

    encoder = encoder_class(None)
    encoder.body, encoder.counting = grow([]), Counting("in the encoder", calls)
    model = BaseFairseqModel()
    model.encoder, model.rest, model.counting = encoder, grow([]), Counting("in the model", calls)
    model.rest.register_module("loop", model.rest)
    if rng.random() < 0.5:
        model.shared = encoder.body
    return model


@pytest.mark.parametrize("trial", range(6))
def test_submodules_list_what_modules_lists_in_its_order(trial):
    seed = random.randrange(2**32)
    model = random_tree(random.Random(seed), [], FairseqEncoder)
    assert update_overheads.submodules(model) == list(model.modules()), seed
    built = build_model()
    assert update_overheads.submodules(built) == list(built.modules())


def test_has_attribute_answers_as_hasattr():
    module = Odd()
    module.weight = nn.Parameter(torch.ones(2))
    module.register_buffer("scale", torch.ones(1))
    module.register_buffer("absent_buffer", None)
    module.child = nn.Linear(2, 2)
    module.register_module("empty_child", None)
    module.note = "an instance attribute"
    forwarding = Forwarding(module)
    names = ["weight", "scale", "absent_buffer", "child", "empty_child", "note", "flag", "helper", "broken", "fine",
             "make", "forward", "training", "set_num_updates", "missing", "__dict__", "_parameters", "bias"]
    for target in (module, forwarding, module.child, build_model()):
        for name in names:
            assert update_overheads.has_attribute(target, name) == hasattr(target, name), (type(target), name)


@pytest.mark.parametrize("trial", range(6))
def test_update_numbers_reach_the_modules_fairseq_reaches_in_its_order(trial):
    seed = random.randrange(2**32)
    calls, fairseq_calls = [], []
    model = random_tree(random.Random(seed), calls, FairseqEncoder)
    twin = random_tree(random.Random(seed), fairseq_calls, FairseqEncoder)
    fairseq_encoder = FairseqEncoder.set_num_updates.__wrapped__
    model.set_num_updates(7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FairseqEncoder, "set_num_updates", fairseq_encoder)
        BaseFairseqModel.set_num_updates.__wrapped__(twin, 7)
    assert calls == fairseq_calls, seed
    assert {("in the encoder", 7), ("in the model", 7)} <= set(calls)


class CountedCollation:
    """A collate function that stacks items and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, items):
        self.calls += 1
        return {"id": torch.tensor([item[0] for item in items]), "tokens": torch.stack([item[1] for item in items])}


class Items(torch.utils.data.Dataset):
    """Items (index, 5 random tokens)."""

    def __init__(self, rng: random.Random, count: int):
        self.items = [(i, torch.randint(0, 100, (5,), generator=torch.Generator().manual_seed(rng.randrange(10**6))))
                      for i in range(count)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def fairseqs_first_batch(iterator: EpochBatchIterator):
    return EpochBatchIterator.first_batch.fget.__wrapped__(iterator)


def assert_same_batch(batch, expected):
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)


def test_the_plugin_patches_the_first_batch_once():
    update_overheads.collate_first_batch_once()
    assert EpochBatchIterator.first_batch.fget.mega_patches == ("_first_batch_collated_once",)


@pytest.mark.parametrize("trial", range(3))
def test_first_batch_is_fairseqs_and_collated_once_while_the_batches_stay(trial):
    """Fixed batches (a list, as the translation task gives): the first batch equals fairseq's, and later epochs
    (each iterated to its end) give the same object without collating again."""
    rng = random.Random()
    items = Items(rng, rng.randint(5, 40))
    indices = list(range(len(items)))
    rng.shuffle(indices)
    batches, start = [], 0
    while start < len(indices):
        size = rng.randint(1, 6)
        batches.append(indices[start:start + size])
        start += size
    collate = CountedCollation()
    iterator = EpochBatchIterator(items, collate, batches, seed=trial)
    first = iterator.first_batch
    assert collate.calls == 1 and first["id"].tolist() == batches[0]
    assert_same_batch(first, fairseqs_first_batch(iterator))
    for _ in range(3):
        calls = collate.calls
        assert sum(1 for _ in iterator.next_epoch_itr(shuffle=True)) == len(batches)
        assert collate.calls == calls + len(batches)  # the epoch's own batches only
        assert iterator.first_batch is first and collate.calls == calls + len(batches)


def test_first_batch_follows_batches_remade_every_epoch():
    """A batch sampler called every epoch (fairseq then drops its frozen batches): the first batch is collated
    again for the new batches and equals fairseq's."""
    rng = random.Random()
    items = Items(rng, 30)

    def sampler(dataset, epoch):
        order = list(range(len(dataset)))
        random.Random(epoch).shuffle(order)
        return [order[i:i + 4] for i in range(0, len(order), 4)]

    collate = CountedCollation()
    iterator = EpochBatchIterator(items, collate, sampler, seed=1)
    firsts = {}
    for _ in range(4):
        first = iterator.first_batch
        assert_same_batch(first, fairseqs_first_batch(iterator))
        assert first["id"].tolist() == sampler(items, iterator.epoch)[0]
        assert iterator.first_batch is first
        assert firsts.setdefault(iterator.epoch, first) is first  # one collation an epoch's batches
        for _ in iterator.next_epoch_itr(shuffle=False):
            pass
    assert sorted(firsts) == [1, 2, 3]


def test_an_empty_dataset_still_gets_fairseqs_error():
    iterator = EpochBatchIterator(Items(random.Random(), 0), CountedCollation(), [], seed=1)
    with pytest.raises(Exception, match="The dataset is empty"):
        iterator.first_batch
