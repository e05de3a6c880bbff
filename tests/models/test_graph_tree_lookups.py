"""graph_tree_lookups: the replacements of CUDA graph trees' output lookups answer as torch's own do,
on a node's path of output references (live, dead, empty, aliased by views, a dead reference whose
pointer a live one reuses), and are installed once."""
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.cudagraph_trees import CUDAGraphNode, StorageWeakRefWrapper

from mega_fairseq.models import graph_tree_lookups as lookups

TORCH_RECORDED = CUDAGraphNode._is_cuda_graph_recorded_tensor
TORCH_ALIAS = CUDAGraphNode._is_alias_of_live_recorded_tensor


def dead_reference(pointer: int) -> StorageWeakRefWrapper:
    """A reference to a freed storage that recorded ``pointer`` (as after the memory was reused)."""
    reference = StorageWeakRefWrapper(torch.zeros(3))
    reference._data_ptr = pointer
    assert reference() is None
    return reference


@pytest.fixture
def path_and_queries():
    alive, viewed, reused, only_dead = (torch.randn(5) for _ in range(4))
    unrelated = torch.randn(4)
    path = [[StorageWeakRefWrapper(alive), None, dead_reference(reused.untyped_storage().data_ptr())],
            [StorageWeakRefWrapper(viewed), dead_reference(only_dead.untyped_storage().data_ptr())],
            [None, StorageWeakRefWrapper(reused), StorageWeakRefWrapper(alive[1:])]]
    node = SimpleNamespace(path_weakrefs=path)
    queries = {"alive": alive, "view": viewed[2:], "reused pointer": reused, "only a dead reference": only_dead,
               "unrelated": unrelated, "view of an unrelated tensor": unrelated[1:]}
    return node, queries, (alive, viewed, reused)


def test_lookups_answer_as_torch_does(path_and_queries):
    assert not hasattr(TORCH_RECORDED, "mega_patches") and not hasattr(TORCH_ALIAS, "mega_patches")
    node, queries, _ = path_and_queries
    answers = {}
    for name, tensor in queries.items():
        assert lookups.is_path_output(node, tensor) == TORCH_RECORDED(node, tensor), name
        assert lookups.live_path_output_index(node, tensor) == TORCH_ALIAS(node, tensor), name
        answers[name] = (lookups.is_path_output(node, tensor), lookups.live_path_output_index(node, tensor))
    assert answers == {"alive": (True, (0, 0)), "view": (True, (1, 0)), "reused pointer": (True, (2, 1)),
                       "only a dead reference": (True, None), "unrelated": (False, None),
                       "view of an unrelated tensor": (False, None)}


def test_installed_once(monkeypatch):
    monkeypatch.setattr(CUDAGraphNode, "_is_cuda_graph_recorded_tensor", TORCH_RECORDED)
    monkeypatch.setattr(CUDAGraphNode, "_is_alias_of_live_recorded_tensor", TORCH_ALIAS)
    lookups.speed_up_graph_tree_lookups()
    lookups.speed_up_graph_tree_lookups()
    assert CUDAGraphNode._is_cuda_graph_recorded_tensor is lookups.is_path_output
    assert CUDAGraphNode._is_alias_of_live_recorded_tensor is lookups.live_path_output_index
    assert lookups.is_path_output.mega_patches == ("_pointer_first_recorded_lookup",)
