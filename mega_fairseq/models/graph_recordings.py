"""A count of the CUDA graphs torch's CUDA graph trees record in this process (the layer graphs': see
``compile``). Each recording leaves Python objects that live as long as the process (the graph's node,
its inputs' and outputs' descriptions), which is what ``garbage_collection`` watches for."""
import functools

from ..patching import patch_once

_recorded = {"graphs": 0}


def graphs_recorded() -> int:
    """How many CUDA graphs the graph trees have recorded in this process so far (counted once
    ``count_graph_recordings`` ran)."""
    return _recorded["graphs"]


def _counting_recordings(record_function):
    @functools.wraps(record_function)
    def wrapper(*args, **kwargs):
        output = record_function(*args, **kwargs)
        _recorded["graphs"] += 1
        return output

    return wrapper


def count_graph_recordings() -> None:
    """Count every ``CUDAGraphTreeManager.record_function`` call (patched once; a torch without that
    method is left as it is and counts nothing)."""
    from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

    if hasattr(CUDAGraphTreeManager, "record_function"):
        patch_once(CUDAGraphTreeManager, "record_function", _counting_recordings)
