"""The fairseq-facing pieces besides the model: scheduler, checkpoint allow-list, batching fixes, imports."""
import argparse
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq.data import FairseqDataset, data_utils, iterators
from fairseq.optim import FairseqOptimizer

import mega_fairseq  # noqa: F401  (registers the plugin, applies the fixes)
from mega_fairseq.optim.linear_decay import LinearDecayConfig, LinearDecaySchedule


class RecordingOptimizer(FairseqOptimizer):
    def __init__(self):
        self.lr = None

    def set_lr(self, lr):
        self.lr = lr

    def get_lr(self):
        return self.lr


def schedule(**options):
    cfg = LinearDecayConfig(**{"lr": [1e-3], "warmup_updates": 4, "total_num_update": 14, **options})
    optimizer = RecordingOptimizer()
    return LinearDecaySchedule(cfg, optimizer), optimizer


@pytest.mark.parametrize("warmup_init_lr, power, end_lr", [(1e-7, 1, 0.0), (-1, 2, 1e-4)])
def test_linear_decay_follows_the_original_schedule(warmup_init_lr, power, end_lr):
    scheduler, optimizer = schedule(warmup_init_lr=warmup_init_lr, warmup_power=power, end_learning_rate=end_lr)
    init = max(warmup_init_lr, 0.0)
    assert optimizer.lr == init
    for step in range(20):
        if step <= 4:
            expected = init + (1e-3 - init) * (step / 4) ** power
        elif step >= 14:
            expected = end_lr
        else:
            expected = end_lr + (1e-3 - end_lr) * (14 - step) / 10
        assert scheduler.step_update(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert optimizer.lr == scheduler.lr


@pytest.mark.parametrize("options, message", [({"lr": [1e-3, 1e-4]}, "single --lr"),
                                              ({"total_num_update": 4}, "--total-num-update"),
                                              ({"warmup_init_lr": 2e-3}, "--warmup-init-lr")])
def test_linear_decay_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        schedule(**options)


def test_checkpoints_with_namespace_and_numpy_load_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"args": argparse.Namespace(arch="mega"), "meter": np.array([1, 2]), "best": np.float64(3.5),
                "model": {"w": torch.ones(2)}}, path)
    state = torch.load(path)
    assert state["args"].arch == "mega" and state["best"] == 3.5 and state["meter"].tolist() == [1, 2]


class NotAllowed:
    pass


def test_other_classes_stay_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"payload": NotAllowed()}, path)
    with pytest.raises(Exception, match="NotAllowed"):
        torch.load(path)


@pytest.mark.parametrize("count, multiple", [(30, 8), (7, 8), (64, 8), (13, 1)])
def test_batching_keeps_every_example(count, multiple):
    sizes = np.random.RandomState(count).randint(3, 20, size=count)
    order = np.argsort(sizes, kind="mergesort")
    batches = data_utils.batch_by_size(order, lambda i: sizes[i], max_tokens=None, max_sentences=16,
                                       required_batch_size_multiple=multiple)
    flat = np.concatenate([np.asarray(b) for b in batches])
    assert sorted(flat.tolist()) == list(range(count))


class Numbers(FairseqDataset):
    """Item i is i; a batch collates to the tuple of its items. Does not prefetch."""

    def __init__(self, count):
        self.count = count

    def __getitem__(self, index):
        return index

    def __len__(self):
        return self.count

    def collater(self, samples):
        return tuple(samples)


def numbers_iterator(shard_id, num_shards, grouped_shuffling=False, batches=40):
    """fairseq's EpochBatchIterator for one GPU of ``num_shards`` over ``batches`` batches of 2 items."""
    dataset = Numbers(2 * batches)
    return iterators.EpochBatchIterator(dataset, dataset.collater, [[i, i + 1] for i in range(0, 2 * batches, 2)],
                                        seed=3, num_shards=num_shards, shard_id=shard_id,
                                        grouped_shuffling=grouped_shuffling)


def fairseqs_order(iterator, epoch=1):
    """The batches fairseq's own EpochBatchIterator.ordered_batches deals, shuffled, without the fix."""
    return [tuple(batch) for batch in iterators.EpochBatchIterator.ordered_batches.__wrapped__(
        iterator, epoch, False, True)]


def batches_per_epoch(shard_id, num_shards, fix_batches_to_gpus, grouped_shuffling=False, epochs=3, batches=40):
    """The batches (tuples of item ids) one GPU of ``num_shards`` gets in each of ``epochs`` epochs:
    ``batches`` batches of 2 items, fairseq's EpochBatchIterator, shuffled."""
    iterator = numbers_iterator(shard_id, num_shards, grouped_shuffling, batches)
    return [list(iterator.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus))
            for _ in range(epochs)]


@pytest.mark.parametrize("grouped_shuffling", [False, True])
def test_fixed_batches_stay_on_their_gpu_every_epoch(grouped_shuffling):
    """--fix-batches-to-gpus on a dataset that does not prefetch (fairseq ignored it there): each of 2 GPUs
    gets the same 20 batches every epoch, in a new order each epoch; together they get every batch once.
    With --grouped-shuffling (fairseq's own way, unchanged) too."""
    every_batch = {(i, i + 1) for i in range(0, 80, 2)}
    shards = [batches_per_epoch(shard, 2, True, grouped_shuffling) for shard in (0, 1)]
    for epochs in shards:
        assert len(epochs[0]) == 20
        assert all(set(epoch) == set(epochs[0]) for epoch in epochs)
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert set(shards[0][0]) | set(shards[1][0]) == every_batch
    assert not set(shards[0][0]) & set(shards[1][0])


@pytest.mark.parametrize("batches, gpus", [(41, 2), (43, 4), (2, 3)])
def test_grouped_shuffling_trains_on_every_batch(batches, gpus):
    """fairseq's --grouped-shuffling dropped the batches left over after the groups of one batch per GPU.
    Now every batch is trained on once an epoch, each GPU keeps its batches, the groups keep fairseq's
    order, and the GPUs without a leftover batch get fairseq's empty dummy batch."""
    shards = [batches_per_epoch(shard, gpus, False, grouped_shuffling=True, batches=batches) for shard in range(gpus)]
    for epoch in range(3):
        dealt = [batch for shard in shards for batch in shard[epoch] if batch]
        assert sorted(dealt) == [(i, i + 1) for i in range(0, 2 * batches, 2)]
    for epochs in shards:
        assert all(set(epoch) == set(epochs[0]) for epoch in epochs)
    for shard, epochs in enumerate(shards):
        groups = batches // gpus
        assert fairseqs_order(numbers_iterator(shard, gpus, True, batches))[:groups] == epochs[0][:groups]
        assert len(epochs[0]) == -(-batches // gpus)  # as many updates on every GPU
        assert epochs[0][groups:] == ([(2 * (groups * gpus + shard), 2 * (groups * gpus + shard) + 1)]
                                      if shard < batches % gpus else [()])


@pytest.mark.parametrize("fix_batches_to_gpus", [True, False])
def test_a_resumed_epoch_deals_its_batches_as_before(fix_batches_to_gpus):
    """A run resumed from a checkpoint saved mid-epoch gets the rest of that epoch and the next epochs as the
    interrupted run would have, on each GPU. fairseq rebuilt the resumed epoch's batches without
    --fix-batches-to-gpus (its iterator state does not hold the flag), dealing the rest of the epoch from
    another order (batches trained twice, others skipped) and every later epoch anew."""
    for shard in (0, 1):
        iterator = numbers_iterator(shard, 2)
        epoch = iterator.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus)
        done = list(itertools.islice(epoch, 7))
        state = iterator.state_dict()
        rest = list(epoch)
        following = [list(iterator.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus))
                     for _ in range(2)]
        resumed = numbers_iterator(shard, 2)
        resumed.load_state_dict(state)
        assert list(resumed.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus)) == rest
        assert sorted(done + rest) == sorted(batches_per_epoch(shard, 2, fix_batches_to_gpus, epochs=1)[0])
        assert [list(resumed.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus))
                for _ in range(2)] == following


def test_unfixed_batches_move_between_gpus():
    """Without the flag fairseq deals the shuffled batches anew each epoch (unchanged); one GPU gets all."""
    epochs = batches_per_epoch(0, 2, False)
    assert set(epochs[0]) != set(epochs[1])
    assert fairseqs_order(numbers_iterator(0, 2)) == epochs[0]
    assert all(len(set(epoch)) == 40 for epoch in batches_per_epoch(0, 1, True))


def test_modules_import_without_fairseq():
    code = ("import sys; sys.modules['fairseq'] = None; import mega_fairseq.modules as m; "
            "print(m.MultiDimensionalEMA.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "MultiDimensionalEMA" in result.stdout
