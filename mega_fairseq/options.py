"""The choices of Mega's options and the error raised for a bad one, shared by ops, modules and models."""
from typing import Callable

import torch
import torch.nn.functional as F

ATTENTION_FUNCTIONS = ("softmax", "laplace", "relu2")
ATTENTION_IMPLS = ("auto", "matmul", "sdpa", "triton")
EMA_IMPLS = ("auto", "fft", "triton")
# --block-impl: the gates, activations, gated updates and norms of the Mega block, the cross-attention
# and the feed-forward network as fused Triton kernels (ops/mega_block.py) or as PyTorch operations
BLOCK_IMPLS = ("auto", "torch", "triton")
LAYER_GRAPHS = ("auto", "off")
NORM_TYPES = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm")
POSITION_BIASES = ("simple", "rotary")
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_accurate", "tanh", "linear")


class MegaConfigError(ValueError):
    """An option has a value that cannot work; the message names the option."""


def _gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation function by its fairseq name (--activation-fn)."""
    functions = {
        "silu": F.silu,
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_accurate": _gelu_accurate,
        "tanh": torch.tanh,
        "linear": lambda x: x,
    }
    if name not in functions:
        raise MegaConfigError(f"unknown activation {name!r} (--activation-fn); choose one of {', '.join(ACTIVATIONS)}")
    return functions[name]


def check_choice(value: str, choices, option: str) -> None:
    if value not in choices:
        raise MegaConfigError(f"unknown value {value!r} for {option}; choose one of {', '.join(choices)}")


def check_chunk_size(chunk_size: int, option: str = "--chunk-size") -> None:
    if chunk_size != -1 and chunk_size <= 0:
        raise MegaConfigError(f"{option} must be a positive chunk length or -1 (whole sequence), got {chunk_size}")
