"""Options of one Mega layer, checked once when the layer is built."""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from ..ops.mega_block import fused_block_unavailable
from ..ops.triton import triton_available
from ..options import (ACTIVATIONS, ATTENTION_FUNCTIONS, ATTENTION_IMPLS, BLOCK_IMPLS, EMA_IMPLS, NORM_TYPES,
                       POSITION_BIASES, MegaConfigError, check_choice, check_chunk_size, get_activation)

__all__ = ["MegaLayerConfig", "MegaConfigError", "get_activation", "check_choice", "check_chunk_size",
           "use_fused_block"]

PER_STACK_FLAGS = {"embed_dim": "embed-dim", "hidden_dim": "hidden-dim", "ffn_dim": "ffn-embed-dim",
                   "z_dim": "z-dim", "n_dim": "n-dim", "chunk_size": "chunk-size"}
GLOBAL_FLAGS = {"max_positions": "--max-source/target-positions", "truncation": "--truncation-length",
                "attention_fn": "--attention-activation-fn", "activation": "--activation-fn",
                "norm_type": "--normalization-type", "rel_pos_bias": "--rel-pos-bias", "dropout": "--dropout",
                "attention_dropout": "--attention-dropout", "hidden_dropout": "--hidden-dropout",
                "activation_dropout": "--activation-dropout", "attention_impl": "--attention-impl",
                "ema_impl": "--ema-impl", "block_impl": "--block-impl"}


@dataclass
class MegaLayerConfig:
    """Shapes and options of a Mega layer (the names of docs/math.md: D, H, Z, N, C)."""

    embed_dim: int = 512  # D
    hidden_dim: int = 1024  # H, width of the values
    ffn_dim: int = 1024  # hidden width of the feed-forward network; 0 drops it
    z_dim: int = 128  # Z, width of queries and keys
    n_dim: int = 16  # N, EMA order
    chunk_size: int = -1  # C; -1 attends over the whole sequence
    truncation: Optional[int] = None  # EMA kernel length cap
    max_positions: int = 1024  # longest sequence the position bias covers when unchunked
    attention_fn: str = "softmax"
    activation: str = "silu"
    norm_type: str = "layernorm"
    prenorm: bool = True
    norm_affine: bool = True
    rel_pos_bias: str = "simple"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    activation_dropout: float = 0.0
    feature_dropout: bool = False
    attention_impl: str = "auto"
    ema_impl: str = "auto"
    block_impl: str = "auto"

    role: str = "encoder"  # per-stack options are spelled --{role}-chunk-size etc. in error messages
    option_names: Optional[Dict[str, str]] = None  # field -> command-line flag, overriding the defaults

    def option(self, field_name: str) -> str:
        """The command-line spelling of a field, for error messages (e.g. ``--decoder-z-dim``)."""
        if self.option_names and field_name in self.option_names:
            return self.option_names[field_name]
        if field_name in PER_STACK_FLAGS:
            flag = PER_STACK_FLAGS[field_name]
            return f"--{self.role}-{flag}" if self.role else f"--{flag}"
        return GLOBAL_FLAGS[field_name]

    def __post_init__(self):
        for field_name in ("embed_dim", "hidden_dim", "z_dim", "n_dim", "max_positions"):
            if getattr(self, field_name) <= 0:
                raise MegaConfigError(f"{self.option(field_name)} must be positive, got {getattr(self, field_name)}")
        if self.ffn_dim < 0:
            raise MegaConfigError(f"{self.option('ffn_dim')} must be >= 0, got {self.ffn_dim}")
        check_chunk_size(self.chunk_size, self.option("chunk_size"))
        for field_name, choices in (("attention_fn", ATTENTION_FUNCTIONS), ("norm_type", NORM_TYPES),
                                    ("rel_pos_bias", POSITION_BIASES), ("activation", ACTIVATIONS),
                                    ("attention_impl", ATTENTION_IMPLS), ("ema_impl", EMA_IMPLS),
                                    ("block_impl", BLOCK_IMPLS)):
            check_choice(getattr(self, field_name), choices, self.option(field_name))
        if self.block_impl == "triton" and not triton_available():
            raise MegaConfigError(f"{self.option('block_impl')} triton needs triton, which is not installed; "
                                  f"use {self.option('block_impl')} torch or auto")
        if self.rel_pos_bias == "rotary" and self.z_dim % 2 != 0:
            raise MegaConfigError(f"--rel-pos-bias rotary needs an even z-dim, got {self.option('z_dim')} {self.z_dim}")
        if self.truncation is not None and self.truncation < 0:
            raise MegaConfigError(f"{self.option('truncation')} must be >= 0 (0: no truncation), got {self.truncation}")
        for field_name in ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout"):
            value = getattr(self, field_name)
            if not 0.0 <= value < 1.0:
                raise MegaConfigError(f"{self.option(field_name)} must be in [0, 1), got {value}")

    @property
    def attention_length(self) -> int:
        """Length the relative position bias must cover: the chunk, or max_positions."""
        return self.chunk_size if self.chunk_size > 0 else self.max_positions


def use_fused_block(impl: str, x: Tensor, option: str = "--block-impl") -> bool:
    """Whether a sub-layer runs its fused kernels on x for ``impl`` (auto | torch | triton); a forced
    "triton" that cannot run raises a MegaConfigError naming ``option`` and the reason."""
    if impl == "torch":
        return False
    reason = fused_block_unavailable(x)
    if reason is not None and impl == "triton":
        raise MegaConfigError(f"{option} triton cannot run: {reason}; use {option} torch or auto")
    return reason is None


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives x's projections (None when autocast is off on x's device)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)
