"""What the plain float64 references (``ops/*_ref.py``) share: the dtype, upcasting and activations.

The references compute Mega's operations straight from the formulas, in float64, with explicit
Python loops where the math is a recurrence or a per-row rule; they call none of the fast
functions, and the tests compare every fast path with them.
"""
import math
from typing import Optional

import torch

DTYPE = torch.float64


def f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(DTYPE)


ACTIVATIONS = {
    "silu": lambda x: x * torch.sigmoid(x),
    "relu": lambda x: x.clamp(min=0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """x @ W^T + b with the layer's parameters, in float64."""
    return x @ f64(layer.weight).t() + f64(layer.bias)
