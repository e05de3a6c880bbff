"""The heap frozen after an update that recorded graphs (garbage_collection): the update's cyclic garbage
collected first, what is alive frozen; an update that recorded nothing leaves the collector alone. The
recordings counted by graph_recordings, checked on a stand-in for torch's record_function; GPU test: on torch's
own graph trees, the update that records freezes and the replays after it freeze nothing more."""
import gc
import weakref

import pytest
import torch
from fairseq.trainer import Trainer

from fairseq_helpers import build_model, make_dictionary, translation_batch, translation_loss

import mega_fairseq  # noqa: F401  (applies the patches)
from mega_fairseq import garbage_collection
from mega_fairseq.models import graph_recordings


class Cycle:
    def __init__(self):
        self.me = self


@pytest.fixture
def collector_paused():
    """Automatic collections off and nothing frozen while the test runs; the collector restored after."""
    gc.collect()
    gc.disable()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.enable()


def recording_update(records: int, kept: list, garbage: list):
    """A stand-in for Trainer.train_step: ``records`` graph recordings (through the counting patch),
    a cyclic object kept alive and one dropped."""
    record = graph_recordings._counting_recordings(lambda: None)

    def train_step(trainer, samples):
        for _ in range(records):
            record()
        kept.append(Cycle())
        garbage.append(weakref.ref(Cycle()))
        return "logging output"

    return train_step


def test_the_plugin_patches_train_step_and_counts_recordings():
    assert "_freezing_after_recordings" in Trainer.train_step.mega_patches
    before = graph_recordings.graphs_recorded()
    graph_recordings._counting_recordings(lambda: None)()
    assert graph_recordings.graphs_recorded() == before + 1


@pytest.mark.parametrize("records", [1, 3])
def test_an_update_that_records_collects_then_freezes(collector_paused, records):
    kept, garbage = [], []
    step = garbage_collection._freezing_after_recordings(recording_update(records, kept, garbage))
    assert step(None, []) == "logging output"
    assert garbage[0]() is None  # collected before the freeze, not frozen alive
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept[0] for obj in gc.get_objects())  # frozen: no collection visits it
    gc.unfreeze()
    assert any(obj is kept[0] for obj in gc.get_objects(generation=2))


def test_an_update_that_records_nothing_leaves_the_collector_alone(collector_paused):
    kept, garbage = [], []
    step = garbage_collection._freezing_after_recordings(recording_update(0, kept, garbage))
    assert step(None, []) == "logging output"
    assert gc.get_freeze_count() == 0
    assert garbage[0]() is not None  # no collection ran
    gc.collect()
    assert garbage[0]() is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_recording_on_the_gpu_freezes_and_replays_do_not(collector_paused):
    """A layer-graph model's update (forward and backward) on one batch shape four times: the graph trees warm
    up and record in the first updates (counted; the heap collected and frozen), the last ones replay (nothing
    recorded, nothing more frozen)."""
    dictionary = make_dictionary()
    model = build_model(["--encoder-chunk-size", "3", "--decoder-chunk-size", "3"], dictionary, seed=5)
    model = model.float().cuda().train()
    batch = tuple(t.cuda() for t in translation_batch(dictionary, [7, 5, 2], [6, 4, 6], 0))

    def update(trainer, samples):
        model.zero_grad(set_to_none=True)
        translation_loss(model(*batch)[0]).backward()
        torch.cuda.synchronize()

    step = garbage_collection._freezing_after_recordings(update)
    before = graph_recordings.graphs_recorded()
    recorded, frozen = [], []
    for _ in range(4):
        step(None, [])
        recorded.append(graph_recordings.graphs_recorded())
        frozen.append(gc.get_freeze_count())
    assert recorded[-1] > before and recorded[-1] == recorded[-2]
    assert 0 < frozen[-1] <= frozen[-2]  # frozen objects can be freed, none are added
