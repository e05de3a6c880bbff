"""torch.compile of the Mega layers (``--compile-layers``).

Each layer is compiled in place (``nn.Module.compile``: parameter names and checkpoints are
unchanged) with dynamic shapes, so that batches of new lengths reuse the compiled code. The
compiler fuses the layer's elementwise work (gates, activations, norms, their backward) into few
kernels, which is where an eager Mega layer spends most of its GPU time below 16k tokens and most of
its host time on short sentences. The fused Triton EMA runs as its own kernels between compiled
graphs; incremental decoding steps run the layers eagerly (see ``MegaDecoder``).
"""
from torch import nn

COMPILE_LAYERS_HELP = ("compile every Mega layer with torch.compile (dynamic shapes) for training and "
                       "full-sequence passes; incremental decoding steps stay eager")
BACKEND = "inductor"


def compile_layers(layers: nn.ModuleList) -> None:
    """Compile each layer of ``layers`` in place (lazily: the first call of a layer compiles it)."""
    for layer in layers:
        layer.compile(dynamic=True, backend=BACKEND)
