"""Faster output lookups in torch's CUDA graph trees, which record the layer graphs.

Recording a graph node asks, for every input and every output of the node, whether the tensor is
an output of a node earlier in the tree's path (``CUDAGraphNode._is_cuda_graph_recorded_tensor``) and
whether it aliases a live one (``_is_alias_of_live_recorded_tensor``). torch answers by walking all
the path's outputs and, at each, building the tensor's storage object again (and, for the second
question, testing the output's liveness first), so a recording costs the product of the node's
tensors and the path's outputs in Python object constructions. With layer graphs that was most of
the start-up's recording time. The replacements here answer the same questions with the same
results: the tensor's data pointer is read once, and liveness is tested only where the pointers match.
"""
from typing import Optional, Tuple

from torch import Tensor

from ..patching import patch_once


def is_path_output(node, tensor: Tensor) -> bool:
    """Whether ``tensor``'s storage is an output of a node in ``node``'s path (alive or not: the graphs'
    memory is never released)."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(ref is not None and ref.data_ptr() == pointer for refs in node.path_weakrefs for ref in refs)


def live_path_output_index(node, tensor: Tensor) -> Optional[Tuple[int, int]]:
    """(depth, output index) of the first live output in ``node``'s path whose storage ``tensor`` shares,
    or None."""
    pointer = tensor.untyped_storage().data_ptr()
    for depth, refs in enumerate(node.path_weakrefs):
        for index, ref in enumerate(refs):
            if ref is not None and ref.data_ptr() == pointer and ref() is not None:
                return depth, index
    return None


def _pointer_first_recorded_lookup(original):
    return is_path_output


def _pointer_first_alias_lookup(original):
    return live_path_output_index


def speed_up_graph_tree_lookups() -> None:
    """Install the lookups in torch's CUDAGraphNode (once; a torch without these methods is left as it is)."""
    from torch._inductor.cudagraph_trees import CUDAGraphNode

    if hasattr(CUDAGraphNode, "_is_cuda_graph_recorded_tensor"):
        patch_once(CUDAGraphNode, "_is_cuda_graph_recorded_tensor", _pointer_first_recorded_lookup)
    if hasattr(CUDAGraphNode, "_is_alias_of_live_recorded_tensor"):
        patch_once(CUDAGraphNode, "_is_alias_of_live_recorded_tensor", _pointer_first_alias_lookup)
