"""A decoding step replayed from a CUDA graph (docs/math.md, section 4.1).

``GraphedStep(fn)`` calls ``fn()`` eagerly the first time (which also warms up the libraries the
step uses), captures it in a CUDA graph on the second call and replays the graph from then on:
the host then launches one graph instead of every kernel of the step. ``fn`` must read its inputs
from, and write its state to, tensors that stay the same between calls (see ``decoding.StepBuffers``)
and must not synchronize with the host. On a CPU, under autocast (whose cast cache would outlive
neither the graph nor the context), or with the environment variable ``MEGA_CUDA_GRAPHS=0``,
every call runs eagerly.
"""
import logging
import os
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs for decoding steps on this device (disabled with MEGA_CUDA_GRAPHS=0)."""
    return device.type == "cuda" and os.environ.get("MEGA_CUDA_GRAPHS", "1") != "0"


class GraphedStep:
    """Run ``fn`` (no arguments, returns a tuple of tensors or None) eagerly once, then from a graph."""

    def __init__(self, fn: Callable[[], Tuple[Optional[Tensor], ...]], use_graph: bool):
        self.fn = fn
        self.use_graph = use_graph
        self.calls = 0
        self.graph = None
        self.outputs = None

    def __call__(self) -> Tuple[Optional[Tensor], ...]:
        self.calls += 1
        if torch.is_autocast_enabled("cuda"):
            return self.fn()
        if self.graph is None and self.use_graph and self.calls > 1:
            self._capture()
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.outputs

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self.fn()
        except RuntimeError as error:  # an operation that cannot be captured: keep running eagerly
            logger.warning("decoding step not captured in a CUDA graph, running it eagerly: %s", error)
            self.use_graph = False
            return
        self.graph, self.outputs = graph, outputs
