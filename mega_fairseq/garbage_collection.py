"""Python's cyclic garbage collector kept from pausing training on layer graphs.

Every CUDA graph that torch's graph trees record leaves Python objects that live as long as the process,
and torch.compile's traces add more. Python's full collections visit every object the collector tracks,
so they grow with the heap: training mega_wmt_en_de on Multi30k on an H200 (fp16, layer graphs), one
full collection paused an update of ~40 ms for 713 ms in the third epoch (benchmarks/e2e/profile_train_step.py
--batch-times; see benchmarks/RESULTS.md). On several GPUs each process pauses at its own times and the
others wait for it at the next all-reduce.

Here, after each update in which the graph trees recorded a graph (``graphs_recorded`` changed), the
garbage is collected once and every object left alive is frozen (``gc.freeze``): later collections,
full ones included, visit only the objects created since. The first such collection visits the heap
built so far; each later one only what the last recording update added. With batches that keep their
shapes (fairseq's fixed batches; ``--fix-batches-to-gpus`` on several GPUs) the recordings, and so the
collections, end with the second epoch. A frozen object that becomes cyclic garbage later is not
collected; objects freed by their reference count (tensors, most of an update's objects) are freed as
before. Runs that record no graphs (the CPU, ``--layer-graphs off``, the Transformer) are unchanged.
"""
import functools
import gc

from fairseq.trainer import Trainer

from .models.graph_recordings import graphs_recorded
from .patching import patch_once


def _freezing_after_recordings(train_step):
    @functools.wraps(train_step)
    def wrapper(self, *args, **kwargs):
        recorded = graphs_recorded()
        output = train_step(self, *args, **kwargs)
        if graphs_recorded() != recorded:
            gc.collect()
            gc.freeze()
        return output

    return wrapper


def freeze_heap_after_recordings() -> None:
    """Patch fairseq's Trainer.train_step once (see the module's docstring)."""
    patch_once(Trainer, "train_step", _freezing_after_recordings)
