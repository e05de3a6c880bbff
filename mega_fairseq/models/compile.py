"""torch.compile of the Mega layers: ``--compile-layers`` and ``--layer-graphs``.

``--compile-layers`` compiles each layer in place (``nn.Module.compile``: parameter names and
checkpoints are unchanged) with inductor and dynamic shapes, so that batches of new lengths reuse the
compiled code; incremental decoding steps run the layers eagerly (see ``MegaDecoder``).

``--layer-graphs`` (default ``auto``: on when training on CUDA) replays the training forward and
backward of a whole encoder or decoder layer stack from CUDA graphs. The stack is traced once by
torch.compile with dynamic lengths and batch size (static widths) and its forward and backward graphs
run through torch's CUDA graph trees (the ``cudagraphs`` backend: no code generation, the same kernels
as eager): a graph is recorded per batch shape, all shapes share one memory pool, and a replay costs
one launch per graph instead of the host time of every kernel and autograd node. Batches repeat their
shapes from the second epoch on (fairseq's batches are fixed), so the recording cost is paid once per
shape (on several GPUs only if each GPU keeps its batches: ``--fix-batches-to-gpus``). The dropout seeds
of the fused kernels are device tensors drawn inside the graph, so each replay drops anew. The parameters'
gradients leave the graphs' memory pool as each backward replay returns them, so that they accumulate over
several backward passes (``--update-freq``) like eager gradients.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..options import LAYER_GRAPHS, check_choice
from .graph_recordings import count_graph_recordings
from .graph_tree_lookups import speed_up_graph_tree_lookups

COMPILE_LAYERS_HELP = ("compile every Mega layer with torch.compile (dynamic shapes) for training and "
                       "full-sequence passes; incremental decoding steps stay eager")
BACKEND = "inductor"
LAYER_GRAPHS_HELP = ("replay the training forward and backward of the encoder and decoder layer stacks from CUDA "
                     "graphs, one per batch shape (torch.compile's cudagraphs backend; no code generation). auto: "
                     "on when training on a CUDA device without --compile-layers; off: eager")


def copied_out_of_pool(outputs, positions):
    """The tensors of a backward replay's ``outputs`` (list) at ``positions`` copied out of the graphs'
    memory pool, exactly (a batched multiply by 1: a few launches for all of them); other entries kept.

    The gradients of the graph's leaf inputs (the parameters) become their ``.grad``. Left in the pool, the
    next replay overwrites them: gradients accumulated over several backward passes (fairseq's
    --update-freq) would read overwritten memory (torch's CUDA graph trees raise, or with some access
    patterns sum stale values; pytorch/pytorch#169545). The gradients of the other inputs (a stack's
    input, the encoder's output) are consumed by the same backward pass and stay in the pool."""
    positions = [i for i in positions if isinstance(outputs[i], Tensor)]
    if not positions:
        return outputs
    copies = torch._foreach_mul([outputs[i] for i in positions], 1)
    outputs = list(outputs)
    for i, copy in zip(positions, copies):
        outputs[i] = copy
    return outputs


def leaf_positions(example_inputs) -> List[int]:
    """Positions of a graph's inputs that are leaf tensors requiring a gradient (the parameters)."""
    return [i for i, t in enumerate(example_inputs) if isinstance(t, Tensor) and t.is_leaf and t.requires_grad]


def record_per_shape(record, leaves: List[int], num_inputs: int):
    """A ``cudagraphify_impl`` that records with ``record`` once per shape of a graph's inputs and copies the
    gradients of the leaves among its ``num_inputs`` inputs (positions ``leaves``) out of the memory pool
    as each backward replay returns them: AOT autograd's backward has one output per input of the traced
    graph, in order. A backward with another number of outputs has every output copied."""
    def per_shape(model, inputs, static_input_idxs, *args, **kwargs):
        recordings = {}
        is_backward = bool(kwargs.get("is_backward", False))

        def run(new_inputs):
            key = tuple(tuple(t.shape) if isinstance(t, Tensor) else t for t in new_inputs)
            if key not in recordings:
                recordings[key] = record(model, list(new_inputs), static_input_idxs, *args, **kwargs)
            outputs = recordings[key](new_inputs)
            if not is_backward:
                return outputs
            return copied_out_of_pool(outputs, leaves if len(outputs) == num_inputs else range(len(outputs)))
        return run
    return per_shape


def shape_keyed_cudagraphs(graph: torch.fx.GraphModule, example_inputs):
    """torch's ``cudagraphs`` backend, with its forward and backward graphs recorded per shape of their
    inputs. With dynamic shapes the stock backend keys its recordings on the graph's int inputs only,
    and a graph whose sizes all come from its tensors (the backward, a forward with the batch size
    only in a tensor) would replay a recording of another shape. The key here is every input's shape
    (the backward's "static" inputs, the saved activations, change shape with the batch too); all
    recordings stay in torch's CUDA graph trees (one memory pool), whose output lookups are replaced by
    faster ones first (``graph_tree_lookups``). The parameters' gradients leave the pool as each
    backward replay returns them (see ``copied_out_of_pool``)."""
    from torch._dynamo.backends.registry import lookup_backend
    from torch._inductor import cudagraph_trees

    speed_up_graph_tree_lookups()
    count_graph_recordings()
    record = cudagraph_trees.cudagraphify_impl
    per_shape = record_per_shape(record, leaf_positions(example_inputs), len(example_inputs))
    cudagraph_trees.cudagraphify_impl = per_shape  # read once by the backend, for this graph only
    try:
        return lookup_backend("cudagraphs")(graph, example_inputs)
    finally:
        cudagraph_trees.cudagraphify_impl = record


GRAPH_BACKEND = shape_keyed_cudagraphs


def compile_layers(layers: nn.ModuleList) -> None:
    """Compile each layer of ``layers`` in place (lazily: the first call of a layer compiles it)."""
    for layer in layers:
        layer.compile(dynamic=True, backend=BACKEND)


def prepare_stack(layers: nn.ModuleList, compile_each: bool, layer_graphs: str) -> str:
    """Applies --compile-layers to a stack's layers; returns its --layer-graphs setting (checked), ``off``
    when the layers are compiled."""
    check_choice(layer_graphs, LAYER_GRAPHS, "--layer-graphs")
    if compile_each:
        compile_layers(layers)
        return "off"
    return layer_graphs


def graphs_apply(setting: str, training: bool, x: Tensor) -> bool:
    """Whether a stack call runs on graphs: ``auto``, training, CUDA input."""
    return setting == "auto" and training and x.is_cuda


def encoder_stack(layers: nn.ModuleList, x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """x (L, B, D) through every encoder layer."""
    for layer in layers:
        x = layer(x, padding_mask)
    return x


def decoder_stack(layers: nn.ModuleList, x: Tensor, memory: Optional[Tensor], memory_padding_mask: Optional[Tensor],
                  padding_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], List[Tensor]]:
    """x (T, B, D) through every decoder layer without incremental state: the output, the last layer's
    cross-attention weights (B, T, S) or None, and the inputs and outputs of the layers."""
    attn, states = None, [x]
    for layer in layers:
        x, attn = layer(x, memory, memory_padding_mask, padding_mask)
        states.append(x)
    return x, attn, states


_compiled = {}


def mark_length_and_batch_dynamic(tensors) -> None:
    """Marks the first two dims (length and batch, in either order) of every tensor dynamic for
    torch.compile; the other dims (model widths) stay static, which keeps the traced shape expressions
    simple (all-dynamic tracing took twice as long and re-traced once after specializing the widths)."""
    for tensor in tensors:
        if tensor is not None:
            for dim in range(min(tensor.dim(), 2)):
                torch._dynamo.maybe_mark_dynamic(tensor, dim)


def compiled_stack(stack):
    """``stack`` (encoder_stack or decoder_stack) compiled for GRAPH_BACKEND (once), its lengths and batch
    size dynamic: called as ``stack(layers, *tensors)``."""
    key = (stack, GRAPH_BACKEND)
    if key not in _compiled:
        compiled = torch.compile(stack, backend=GRAPH_BACKEND)

        def run(layers: nn.ModuleList, *tensors: Optional[Tensor]):
            mark_length_and_batch_dynamic(tensors)
            return compiled(layers, *tensors)
        _compiled[key] = run
    return _compiled[key]
