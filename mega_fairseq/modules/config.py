"""Options of one Mega layer, checked once when the layer is built."""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ATTENTION_FUNCTIONS = ("softmax", "laplace", "relu2")
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


@dataclass
class MegaLayerConfig:
    """Shapes and options of a Mega layer (names of the spec: D, H, Z, N, C)."""

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

    role: str = "encoder"  # names the command-line options in error messages: --{role}-chunk-size

    def option(self, name: str) -> str:
        """The command-line spelling of a per-stack option, e.g. ``--decoder-z-dim``."""
        return f"--{self.role}-{name}" if self.role else f"--{name}"

    def __post_init__(self):
        for field_name, option in (("embed_dim", "embed-dim"), ("hidden_dim", "hidden-dim"), ("z_dim", "z-dim"),
                                   ("n_dim", "n-dim")):
            if getattr(self, field_name) <= 0:
                raise MegaConfigError(f"{self.option(option)} must be positive, got {getattr(self, field_name)}")
        if self.max_positions <= 0:
            raise MegaConfigError(f"max positions (--max-source/target-positions) must be positive, "
                                  f"got {self.max_positions}")
        if self.ffn_dim < 0:
            raise MegaConfigError(f"{self.option('ffn-embed-dim')} must be >= 0, got {self.ffn_dim}")
        check_chunk_size(self.chunk_size, self.option("chunk-size"))
        check_choice(self.attention_fn, ATTENTION_FUNCTIONS, "--attention-activation-fn")
        check_choice(self.norm_type, NORM_TYPES, "--normalization-type")
        check_choice(self.rel_pos_bias, POSITION_BIASES, "--rel-pos-bias")
        check_choice(self.activation, ACTIVATIONS, "--activation-fn")
        if self.rel_pos_bias == "rotary" and self.z_dim % 2 != 0:
            raise MegaConfigError(f"--rel-pos-bias rotary needs an even z-dim, got {self.option('z-dim')} {self.z_dim}")
        if self.truncation is not None and self.truncation < 0:
            raise MegaConfigError(f"--truncation-length must be >= 0 (0: no truncation), got {self.truncation}")
        for field_name in ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout"):
            value = getattr(self, field_name)
            if not 0.0 <= value < 1.0:
                raise MegaConfigError(f"--{field_name.replace('_', '-')} must be in [0, 1), got {value}")

    @property
    def attention_length(self) -> int:
        """Length the relative position bias must cover: the chunk, or max_positions."""
        return self.chunk_size if self.chunk_size > 0 else self.max_positions
