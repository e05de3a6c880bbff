"""The fairseq-facing pieces besides the model: scheduler, checkpoint allow-list, batching fix, imports."""
import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq.data import data_utils
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


def test_modules_import_without_fairseq():
    code = ("import sys; sys.modules['fairseq'] = None; import mega_fairseq.modules as m; "
            "print(m.MultiDimensionalEMA.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "MultiDimensionalEMA" in result.stdout
