"""What the fairseq models share: option choices, architecture defaults, the Mega layer options.

Defaults have one source, the model's dataclass. A field whose default follows another option
says so in its metadata (``follows("encoder_hidden_dim", ...)``); a named architecture is one row
of a table, the options it changes (``register_architectures``). ``fill_defaults`` applies them the
same way on every path a model is built by: fairseq-train's config, a legacy argparse Namespace
(``task.build_model(args)``), a checkpoint's options.
"""
from dataclasses import MISSING, field, fields
from enum import Enum
from typing import Callable, Mapping, Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model_architecture
from fairseq.utils import safe_getattr
from torch import Tensor, nn

from ..modules import MegaLayerConfig
from ..options import (ACTIVATIONS, ATTENTION_FUNCTIONS, ATTENTION_IMPLS, BLOCK_IMPLS, EMA_IMPLS, LAYER_GRAPHS,
                       NORM_TYPES, POSITION_BIASES)

ACTIVATION_CHOICES = ChoiceEnum(list(ACTIVATIONS))
ATTENTION_CHOICES = ChoiceEnum(list(ATTENTION_FUNCTIONS))
NORM_CHOICES = ChoiceEnum(list(NORM_TYPES))
POSITION_BIAS_CHOICES = ChoiceEnum(list(POSITION_BIASES))
EMA_IMPL_CHOICES = ChoiceEnum(list(EMA_IMPLS))
ATTENTION_IMPL_CHOICES = ChoiceEnum(list(ATTENTION_IMPLS))
BLOCK_IMPL_CHOICES = ChoiceEnum(list(BLOCK_IMPLS))
LAYER_GRAPHS_CHOICES = ChoiceEnum(list(LAYER_GRAPHS))
EMA_IMPL_HELP = "EMA computation: auto (fused Triton scan on a GPU, FFT otherwise), fft (reference), triton"
ATTENTION_IMPL_HELP = ("attention computation: auto (on a GPU: PyTorch's fused attention for softmax when Z and H "
                       "are <= 128, else the fused Triton kernel; matmul on a CPU), matmul (reference), sdpa, triton")
BLOCK_IMPL_HELP = ("gates, activations, gated updates, dropout and post-norms of the Mega block, cross-attention "
                   "and FFN: auto (fused Triton kernels on a GPU, PyTorch otherwise), torch (reference), triton")

# MegaLayerConfig field -> model argument of a translation or LM stack ("{role}": encoder or decoder), where the
# names differ; the other fields (dropout, rel_pos_bias, ema_impl, ...) share their argument's name
STACK_ARGUMENTS = {
    "embed_dim": "{role}_embed_dim", "hidden_dim": "{role}_hidden_dim", "ffn_dim": "{role}_ffn_embed_dim",
    "z_dim": "{role}_z_dim", "n_dim": "{role}_n_dim", "chunk_size": "{role}_chunk_size",
    "truncation": "truncation_length", "attention_fn": "attention_activation_fn", "activation": "activation_fn",
    "norm_type": "normalization_type", "prenorm": "normalize_before",
}
NOT_ARGUMENTS = ("role", "option_names")


def follows(option: str, help: str):
    """A dataclass field whose default (None) is the value of ``option``."""
    return field(default=None, metadata={"help": f"{help} (default: --{option.replace('_', '-')})",
                                         "default_from": option})


def from_task(help: str):
    """A dataclass field whose default (None) is the task's option of the same name, filled when the
    model is built (fairseq's arguments share one namespace with the task's: it must stay unset)."""
    return field(default=None, metadata={"help": f"{help} (default: the task's)", "default_from_task": True})


def _default(f):
    """A dataclass field's default value (MISSING for none)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _is_interpolation(value) -> bool:
    """A default taken from another config group (``II("task.tokens_per_sample")``)."""
    return isinstance(value, str) and value.startswith("${")


def fill_defaults(args, config_class) -> None:
    """Set every option of ``config_class`` that ``args`` lacks or leaves None to its default: the
    field's own, or the value of the option it follows (filled first); the task's options and
    interpolations (``II("task...")``) are left to the task."""
    sources = {}
    for f in fields(config_class):
        if f.name.startswith("_") or f.metadata.get("default_from_task"):
            continue
        if "default_from" in f.metadata:
            sources[f.name] = f.metadata["default_from"]
        elif safe_getattr(args, f.name) is None and not _is_interpolation(_default(f)) and _default(f) is not MISSING:
            setattr(args, f.name, _default(f))

    def resolve(name: str):
        if safe_getattr(args, name) is None and name in sources:
            setattr(args, name, resolve(sources[name]))
        return safe_getattr(args, name)

    for name in sources:
        resolve(name)


def set_defaults(args, defaults: Mapping[str, object]) -> None:
    """An architecture's defaults: set the options the command line left unset (absent or None)."""
    for name, value in defaults.items():
        if safe_getattr(args, name) is None:
            setattr(args, name, value)


def register_architectures(model_name: str, table: Mapping[str, Mapping[str, object]],
                           fill: Callable[[object], None]) -> None:
    """One fairseq architecture per row of ``table`` (name -> the defaults it changes): it sets those
    options the command line left unset, then ``fill`` fills the rest from the model's dataclass."""
    for name, defaults in table.items():
        def architecture(args, defaults=defaults):
            set_defaults(args, defaults)
            fill(args)

        architecture.__name__ = name
        architecture.__doc__ = f"--arch {name}: " + (", ".join(f"{k}={v}" for k, v in defaults.items())
                                                     or f"the defaults of --arch {model_name}")
        register_model_architecture(model_name, name)(architecture)


def layer_config(args, arguments: Mapping[str, str], max_positions_argument: str, role: str = "") -> MegaLayerConfig:
    """The options of one stack's Mega layers from the model arguments.

    ``arguments`` maps MegaLayerConfig fields to the arguments holding them where the names differ
    ("{role}" is replaced by ``role``); errors name an option by the command-line spelling of its
    argument. Fields without an argument keep MegaLayerConfig's default."""
    values, option_names = {}, {}
    for f in fields(MegaLayerConfig):
        if f.name in NOT_ARGUMENTS:
            continue
        name = max_positions_argument if f.name == "max_positions" else arguments.get(f.name, f.name)
        name = name.format(role=role)
        value = safe_getattr(args, name)
        if value is None:
            continue
        values[f.name] = str(value) if isinstance(value, Enum) else value
        option_names[f.name] = "--" + name.replace("_", "-")
    if not values.get("truncation"):
        values["truncation"] = None  # 0: no truncation
    return MegaLayerConfig(**values, role=role, option_names=option_names)


def build_embedding(dictionary, embed_dim: int, path: Optional[str] = None) -> nn.Embedding:
    """Token embedding with N(0, D^-1/2) weights and a zero padding row."""
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim ** -0.5)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    if path:
        from fairseq import utils
        utils.load_embedding(utils.parse_embedding(path), dictionary, embedding)
    return embedding


def zero_pads(x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """x (L, B, D) with the padding positions of padding_mask (B, L) set to 0."""
    return x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
