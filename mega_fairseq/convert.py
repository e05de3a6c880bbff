"""Convert checkpoints of the original Mega code (facebookresearch/mega, built on fairseq 0.9) to this plugin.

An original checkpoint holds ``args`` (the ``argparse.Namespace`` of its training command) and ``model``
(the state dict). The conversion

1. reads it with ``torch.load``'s weights-only loader (plus the fairseq allow-list, so no code runs);
2. ``convert_args``: picks the model family from ``args.arch`` and translates the options into this
   plugin's command-line flags (task, model, criterion), refusing any option the plugin lacks;
3. ``convert_state_dict``: renames every parameter and buffer, and rewrites the EMA parameters
   (see ``convert_ema``);
4. parses the flags with fairseq's own parser, builds the model, checks the converted state dict
   against it (every name and shape, both ways) and loads it strictly;
5. writes a fairseq 0.12 checkpoint (``cfg``, ``model``) that ``fairseq-generate``,
   ``fairseq-eval-lm`` and ``fairseq-validate`` load with ``--user-dir mega_fairseq``.

Parameter names, original -> ours (everything else keeps its name):

    {encoder,decoder}.embed_tokens.*          -> {encoder,decoder}.embedder.embed_tokens.*
    {encoder,decoder}.embed_norm.*            -> {encoder,decoder}.embedder.embed_norm.*
    decoder.project_in_dim.weight             -> decoder.embedder.project_in.weight
    {encoder,decoder}.version                 -> dropped (fairseq 0.9 version buffers)
    encoder.encoder.embed_tokens.embed.weight -> encoder.embed_tokens.weight   (LRA, Speech Commands)
    encoder.encoder.*                         -> encoder.*                     (LRA, Speech Commands)
    *.rel_pos_bias.rel_pos_bias               -> *.rel_pos_bias.weight
    *.rel_pos_bias._float_tensor              -> dropped (rotary bias dtype buffer)
    *.move.{alpha,delta,beta}                 -> same names, (D', N, 1) -> (D', N) (convert_ema)
"""
import argparse
import os
import re
from types import SimpleNamespace
from typing import Dict, List, NamedTuple, Optional

import torch
from fairseq.data import Dictionary
from torch import Tensor

from .checkpoint_safety import allow_fairseq_checkpoints
from .options import ACTIVATIONS, ATTENTION_FUNCTIONS, NORM_TYPES, POSITION_BIASES, MegaConfigError

USER_DIR = os.path.dirname(os.path.abspath(__file__))

# original --arch -> model family (the same names are architectures of this plugin)
FAMILIES = {
    **{arch: "mega" for arch in ("mega", "mega_wmt_en_de", "mega_wmt_en_de_big")},
    **{arch: "mega_lm" for arch in ("mega_lm", "mega_lm_big", "mega_lm_wiki103", "mega_lm_adaptive_big",
                                    "mega_lm_adaptive_base", "mega_lm_enwik8_base", "mega_lm_enwik8_large")},
    **{arch: "lra" for arch in ("lra", "mega_lra_listop", "mega_lra_imdb", "mega_lra_aan", "mega_lra_cifar10",
                                "mega_lra_pf32", "mega_lra_pf128")},
    **{arch: "sc_raw" for arch in ("sc_raw", "mega_sc_raw", "mega_sc_raw_base", "mega_sc_raw_big")},
}

# (pattern, replacement) applied in order to every original name; replacement None drops the entry
_DROPPED = [(r"^(encoder|decoder)\.version$", None), (r"\.rel_pos_bias\._float_tensor$", None)]
_BIAS = [(r"\.rel_pos_bias\.rel_pos_bias$", ".rel_pos_bias.weight")]
RENAMES = {
    "mega": _DROPPED + _BIAS + [
        (r"^(encoder|decoder)\.embed_tokens\.", r"\1.embedder.embed_tokens."),
        (r"^(encoder|decoder)\.embed_norm\.", r"\1.embedder.embed_norm."),
        (r"^decoder\.project_in_dim\.", "decoder.embedder.project_in."),
    ],
    "lra": _DROPPED + _BIAS + [
        (r"^encoder\.encoder\.embed_tokens\.embed\.", "encoder.embed_tokens."),
        (r"^encoder\.encoder\.", "encoder."),
    ],
}
RENAMES["mega_lm"] = RENAMES["mega"]
RENAMES["sc_raw"] = RENAMES["lra"]

# fairseq's deprecated alias of gelu_accurate
ACTIVATION_ALIASES = {"gelu_fast": "gelu_accurate"}


class ConversionError(ValueError):
    """The checkpoint cannot be converted faithfully; the message names the file, option or parameter."""


# ---------------------------------------------------------------------------------------------- reading

def load_original(path: str) -> dict:
    """The original checkpoint as a dict with ``args`` (argparse.Namespace) and ``model`` (state dict).

    Read with torch's weights-only unpickler: tensors, builtins and the fairseq allow-list
    (argparse.Namespace, numpy arrays); anything else is refused, so reading runs no code.
    """
    allow_fairseq_checkpoints()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as exc:  # a corrupt file, not a PyTorch file, or a pickled class outside the allow-list
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        kind = f"a dict with keys {sorted(state)}" if isinstance(state, dict) else type(state).__name__
        raise ConversionError(f"{path} is not a fairseq checkpoint: expected a dict with 'args' and 'model', "
                              f"found {kind}")
    if not isinstance(state.get("args"), argparse.Namespace):
        hint = " (it has 'cfg': a fairseq >= 0.10 checkpoint, which needs no conversion)" if state.get("cfg") else ""
        raise ConversionError(f"{path} has no 'args' namespace, so it is not an original Mega checkpoint{hint}")
    return state


# ---------------------------------------------------------------------------------------------- options

class OurOptions(NamedTuple):
    """The translated options: ``flags`` for fairseq-train's parser, and ``switches``, the boolean
    options, set on the parsed namespace (fairseq turns a flag whose dataclass default is True into
    ``store_false``, so a flag alone cannot set True for every model)."""

    family: str
    flags: List[str]
    switches: Dict[str, bool]

    def __str__(self) -> str:
        return " ".join(self.flags + [f"{name}={value}" for name, value in self.switches.items()])


class _Flags:
    """Reads original options and collects our command-line flags and boolean options."""

    _REQUIRED = object()

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.flags: List[str] = []
        self.switches: Dict[str, bool] = {}

    def get(self, name: str, default=_REQUIRED):
        """The original value of ``name``; a missing or None value is ``default`` (required if none given)."""
        value = getattr(self.args, name, None)
        if value is None:
            if default is self._REQUIRED:
                raise ConversionError(f"the original args have no value for '{name}' (--{name.replace('_', '-')})")
            return default
        return value

    def add(self, option: str, value) -> None:
        self.flags += [option, str(value)]

    def copy(self, name: str, default=_REQUIRED) -> None:
        """--name with the original value."""
        self.add("--" + name.replace("_", "-"), self.get(name, default))

    def switch(self, name: str, default: bool = False) -> None:
        """A boolean option, as the original set it."""
        self.switches[name] = bool(self.get(name, default))

    def choice(self, name: str, choices, default=_REQUIRED, aliases=None) -> None:
        value = self.get(name, default)
        value = (aliases or {}).get(value, value)
        if value not in choices:
            raise ConversionError(f"--{name.replace('_', '-')} {value!r} of the original model is not supported "
                                  f"(mega-fairseq has {', '.join(choices)})")
        self.add("--" + name.replace("_", "-"), value)

    def refuse(self, name: str, unsupported: bool, what: str) -> None:
        if unsupported:
            raise ConversionError(f"--{name.replace('_', '-')} {self.get(name)!r} of the original model is not "
                                  f"supported: {what}")

    def shared_mega_options(self, norm_option: str) -> None:
        """Options every Mega layer reads."""
        self.choice("activation_fn", ACTIVATIONS, aliases=ACTIVATION_ALIASES)
        self.choice("attention_activation_fn", ATTENTION_FUNCTIONS)
        self.choice(norm_option, NORM_TYPES)
        self.choice("rel_pos_bias", POSITION_BIASES, "simple")
        self.add("--truncation-length", self.get("truncation_length", 0))  # None or 0: no truncation
        for name in ("dropout", "attention_dropout"):
            self.copy(name, 0.0)
        self.switch("feature_dropout")


def family_of(args: argparse.Namespace) -> str:
    """The model family of an original checkpoint: mega, mega_lm, lra or sc_raw."""
    arch = getattr(args, "arch", None)
    if arch not in FAMILIES:
        raise ConversionError(f"--arch {arch!r} of the original checkpoint is not a Mega architecture this "
                              f"converter knows ({', '.join(FAMILIES)})")
    family = FAMILIES[arch]
    if family == "lra" and getattr(args, "layer_type", None) != "mega":
        raise ConversionError(f"--layer-type {getattr(args, 'layer_type', None)!r}: only Mega LRA models "
                              f"(--layer-type mega) convert")
    return family


def convert_args(args: argparse.Namespace) -> OurOptions:
    """Original args -> our options: task, architecture, model options and criterion.

    Every option that shapes the model is passed explicitly, so the result does not depend on
    the defaults of either code base. Raises ConversionError for an option the plugin lacks.
    """
    family = family_of(args)
    flags = _Flags(args)
    {"mega": _translation_flags, "mega_lm": _lm_flags, "lra": _lra_flags, "sc_raw": _sc_flags}[family](flags)
    criterion = _criterion(flags, family)
    flags.add("--criterion", criterion)
    if criterion == "label_smoothed_cross_entropy":
        flags.copy("label_smoothing", 0.0)
    if criterion == "adaptive_loss":
        flags.add("--ddp-backend", "legacy_ddp")  # the original's no_c10d; fairseq refuses adaptive_loss otherwise
    return OurOptions(family, ["--arch", args.arch, *flags.flags], flags.switches)


def _criterion(f: _Flags, family: str) -> str:
    """The loss fairseq-validate computes: the original's if the plugin has it, else the one the output needs."""
    if family == "mega_lm":
        return "adaptive_loss" if f.get("adaptive_softmax_cutoff", None) is not None else "cross_entropy"
    if family == "mega":
        original = f.get("criterion", "cross_entropy")
        return original if original in ("label_smoothed_cross_entropy", "cross_entropy") else "cross_entropy"
    return "lra_cross_entropy"


def _translation_flags(f: _Flags) -> None:
    f.add("--task", "translation")
    for option, name in (("-s", "source_lang"), ("-t", "target_lang")):
        if f.get(name, None) is not None:
            f.add(option, f.get(name))
    for role in ("encoder", "decoder"):
        for name in ("embed_dim", "hidden_dim", "ffn_embed_dim", "z_dim", "n_dim", "chunk_size", "layers"):
            f.copy(f"{role}_{name}")
    f.copy("max_source_positions", 1024)  # the original's defaults
    f.copy("max_target_positions", 1024)
    f.shared_mega_options("normalization_type")
    for name in ("hidden_dropout", "activation_dropout"):
        f.copy(name, 0.0)
    for name in ("normalize_before", "normalize_embedding", "no_scale_embedding", "share_all_embeddings",
                 "share_decoder_input_output_embed"):
        f.switch(name)
    f.refuse("adaptive_softmax_cutoff", f.get("adaptive_softmax_cutoff", None) is not None,
             "the encoder-decoder model has no adaptive softmax here")


def _lm_flags(f: _Flags) -> None:
    f.add("--task", "mega_language_modeling")
    f.copy("tokens_per_sample", 1024)
    f.copy("max_target_positions", 1024)  # the original's default
    f.choice("sample_break_mode", ("none", "complete", "complete_doc", "eos"), "none")
    f.switch("add_bos_token")
    f.copy("variant_block_multiple_min", 1)
    f.copy("variant_block_multiple_max", 1)
    f.copy("valid_block", "size:100000000")  # the original's default: one block per split
    f.refuse("output_dictionary_size", f.get("output_dictionary_size", -1) >= 0,
             "a truncated output dictionary")
    for name in ("embed_dim", "hidden_dim", "ffn_embed_dim", "z_dim", "n_dim", "chunk_size", "layers"):
        f.copy(f"decoder_{name}")
    f.copy("decoder_input_dim", f.get("decoder_embed_dim"))
    f.shared_mega_options("normalization_type")
    for name in ("hidden_dropout", "activation_dropout", "adaptive_softmax_dropout"):
        f.copy(name, 0.0)
    for name in ("normalize_before", "normalize_embedding", "no_scale_embedding", "no_affine_final_norm",
                 "share_decoder_input_output_embed", "adaptive_input", "tie_adaptive_weights", "tie_adaptive_proj"):
        f.switch(name)
    for name in ("adaptive_input_cutoff", "adaptive_softmax_cutoff"):
        if f.get(name, None) is not None:
            f.copy(name)
    f.copy("adaptive_input_factor", 4)
    f.copy("adaptive_softmax_factor", 4)


def _classifier_flags(f: _Flags) -> None:
    """Options of the LRA and Speech Commands classifiers (one encoder, mean or first-position summary)."""
    for name in ("encoder_layers", "encoder_embed_dim", "encoder_hidden_dim", "z_dim", "n_dim", "max_positions",
                 "classifier_out_dim", "sentence_class_num"):
        f.copy(name)
    f.copy("encoder_ffn_embed_dim", f.get("encoder_hidden_dim"))
    f.copy("chunk_size", -1)
    f.copy("classifier_layers", 1)
    f.choice("classifier_activation_fn", ACTIVATIONS, "gelu", ACTIVATION_ALIASES)
    f.choice("sen_rep_type", ("mp", "cls"), "mp")
    f.shared_mega_options("norm_type")
    f.copy("act_dropout", 0.0)
    f.switch("encoder_normalize_before")
    f.switch("normalize_embedding")
    f.add("--layer-type", "mega")


def _lra_flags(f: _Flags) -> None:
    task = f.get("task")
    if task not in ("lra-text", "lra-image"):
        raise ConversionError(f"--task {task!r}: an original LRA checkpoint has task lra-text or lra-image")
    f.add("--task", task)
    input_type = f.get("input_type", "text" if task == "lra-text" else "image")
    f.add("--input-type", input_type)
    if task == "lra-text":
        f.add("--shorten-method", "truncate")  # the original always cut inputs to --max-positions
    elif f.get("pixel_normalization", None) is not None:
        mean, std = f.get("pixel_normalization")
        f.flags += ["--pixel-normalization", str(mean), str(std)]
    f.refuse("use_p", f.get("use_p", False), "Luna's projected-sequence summary")
    _classifier_flags(f)
    width, in_dim = f.get("encoder_embed_dim"), f.get("classifier_in_dim", f.get("encoder_embed_dim"))
    if in_dim == 2 * width:
        f.add("--pair-features", "concat")  # document pairs (Retrieval): the original's [v, u]
    elif in_dim != width:
        raise ConversionError(f"--classifier-in-dim {in_dim} is neither --encoder-embed-dim {width} (one input) "
                              f"nor twice it (document pairs)")


def _sc_flags(f: _Flags) -> None:
    f.add("--task", "speech_commands")
    f.switch("sc_all_classes")
    f.refuse("mfcc", f.get("mfcc", False), "MFCC features (the plugin classifies raw waveforms)")
    f.refuse("sc_dropped_rate", f.get("sc_dropped_rate", 0.0) > 0,
             "dropped samples (the original model embeds one channel per time step)")
    _classifier_flags(f)


# ---------------------------------------------------------------------------------------------- parameters

def convert_ema(params: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Original EMA parameters -> ours: the same function and roles (p = sigmoid(delta),
    q = 1 - p * sigmoid(alpha), lag 0 in both directions); alpha, delta and beta lose the
    trailing axis of the original (D', N, 1) layout."""
    shapes = {name: tuple(t.shape) for name, t in params.items()}
    if len(shapes["gamma"]) != 2 or len(shapes["omega"]) != 1:
        raise ConversionError(f"EMA gamma {shapes['gamma']} and omega {shapes['omega']}: expected (D', N) and (D,)")
    kernel_dim, ndim = shapes["gamma"]
    for name in ("alpha", "delta", "beta"):
        if shapes[name] != (kernel_dim, ndim, 1):
            raise ConversionError(f"EMA parameter '{name}' has shape {shapes[name]}, expected {(kernel_dim, ndim, 1)} "
                                  f"(the original layout, like gamma {(kernel_dim, ndim)})")
    embed_dim = shapes["omega"][0]
    if kernel_dim not in (embed_dim, 2 * embed_dim):
        raise ConversionError(f"EMA gamma has {kernel_dim} rows for omega of {embed_dim} channels: expected "
                              f"{embed_dim} (causal) or {2 * embed_dim} (bidirectional)")
    return {name: (t[..., 0] if name in ("alpha", "delta", "beta") else t) for name, t in params.items()}


def rename(name: str, family: str) -> Optional[str]:
    """Our name of an original parameter or buffer, or None for entries that are dropped."""
    for pattern, replacement in RENAMES[family]:
        if re.search(pattern, name):
            if replacement is None:
                return None
            name = re.sub(pattern, replacement, name)
    return name


def convert_state_dict(state: Dict[str, Tensor], family: str) -> Dict[str, Tensor]:
    """Original state dict -> ours (renamed, EMA reshaped). Two entries mapping to one name are an error."""
    converted, sources = {}, {}
    for name, tensor in state.items():
        new_name = rename(name, family)
        if new_name is None:
            continue
        if new_name in converted:
            raise ConversionError(f"original parameters {sources[new_name]} and {name} both map to {new_name}")
        converted[new_name], sources[new_name] = tensor, name
    for prefix in [name[: -len("alpha")] for name in converted if name.endswith(".move.alpha")]:
        names = {part: prefix + part for part in ("alpha", "delta", "beta", "gamma", "omega")}
        absent = [sources.get(n, n) for n in names.values() if n not in converted]
        if absent:
            raise ConversionError(f"incomplete EMA {prefix[:-1]}: the original checkpoint lacks {', '.join(absent)}")
        try:
            new = convert_ema({part: converted[n] for part, n in names.items()})
        except ConversionError as exc:
            raise ConversionError(f"{prefix[:-1]}: {exc}") from None
        converted.update({names[part]: tensor for part, tensor in new.items()})
    return converted


def check_state_dict(converted: Dict[str, Tensor], expected: Dict[str, Tensor], family: str) -> None:
    """Every parameter and buffer of our model present with its shape, and nothing else."""
    problems = []
    missing = [name for name in expected if name not in converted]
    if missing:
        problems.append("missing from the original checkpoint: " + ", ".join(missing))
    unexpected = [name for name in converted if name not in expected]
    if unexpected:
        problems.append("not part of the converted model (unexpected): " + ", ".join(unexpected))
    for name in expected:
        if name in converted and tuple(converted[name].shape) != tuple(expected[name].shape):
            problems.append(f"shape mismatch: {name} is {tuple(converted[name].shape)} in the original checkpoint, "
                            f"the converted model needs {tuple(expected[name].shape)}")
    if problems:
        raise ConversionError(f"the {family} checkpoint does not fit the model its args describe (names are the "
                              f"converted ones; the mapping is in mega_fairseq/convert.py):\n  "
                              + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------- model

def _dictionary(size: int, what: str) -> Dictionary:
    """A dictionary of ``size`` entries (fairseq's 4 specials first), standing in for the data's."""
    dictionary = Dictionary()
    if size < len(dictionary):
        raise ConversionError(f"{what} has {size} rows, fewer than fairseq's {len(dictionary)} special symbols")
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"<converted_{index}>")
    return dictionary


def _rows(state: Dict[str, Tensor], name: str) -> int:
    if name not in state:
        raise ConversionError(f"missing from the original checkpoint: {name} (converted name)")
    return state[name].shape[0]


def stand_in_task(family: str, cfg, state: Dict[str, Tensor]) -> SimpleNamespace:
    """What building the model reads from its task, sized from the converted state dict: the
    original checkpoint has no dictionaries; the data directory used with the converted one has."""
    if family == "mega":
        source = _dictionary(_rows(state, "encoder.embedder.embed_tokens.weight"), "the source embedding")
        target = source if cfg.model.share_all_embeddings else _dictionary(
            _rows(state, "decoder.embedder.embed_tokens.weight"), "the target embedding")
        return SimpleNamespace(source_dictionary=source, target_dictionary=target)
    if family == "mega_lm":
        if cfg.model.adaptive_input:
            band = re.compile(r"decoder\.embedder\.embed_tokens\.embeddings\.\d+\.0\.weight$")
            size = sum(tensor.shape[0] for name, tensor in state.items() if band.match(name))
        else:
            size = _rows(state, "decoder.embedder.embed_tokens.weight")
        dictionary = _dictionary(size, "the token embedding")
        return SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    text = family == "lra" and cfg.model.input_type == "text"
    return SimpleNamespace(
        input_type="text" if text else "image", input_channels=1, paired=cfg.model.pair_features == "concat",
        num_classes=_rows(state, "sentence_projection_layer.weight"),
        source_dictionary=_dictionary(_rows(state, "encoder.embed_tokens.weight"), "the token embedding")
        if text else None)


def parse_options(ours: OurOptions, data: str):
    """Our options -> fairseq config, through fairseq-train's own parser (as a command line would)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    try:
        args = options.parse_args_and_arch(parser, [data, "--user-dir", USER_DIR, *ours.flags])
    except SystemExit:  # argparse has printed why
        raise ConversionError(f"fairseq's parser refused the translated options {ours.flags}") from None
    for name, value in ours.switches.items():
        setattr(args, name, value)
    cfg = convert_namespace_to_omegaconf(args)
    for name, value in ours.switches.items():
        if cfg.model.get(name, cfg.task.get(name)) != value:
            raise ConversionError(f"option {name} = {value} did not reach the model or task config")
    return cfg


def build_converted_model(ours: OurOptions, state: Dict[str, Tensor], data: str):
    """(cfg, our model with the converted state dict loaded strictly)."""
    from fairseq import models

    cfg = parse_options(ours, data)
    try:
        model = models.build_model(cfg.model, stand_in_task(ours.family, cfg, state))
    except MegaConfigError as exc:
        raise ConversionError(f"the translated options do not build a model: {exc}") from None
    check_state_dict(state, model.state_dict(), ours.family)
    model.load_state_dict(state, strict=True, model_cfg=cfg.model)
    return cfg, model


def convert_checkpoint(in_path: str, out_path: str) -> OurOptions:
    """Convert an original checkpoint file; returns the translated options (for the log)."""
    from omegaconf import OmegaConf

    original = load_original(in_path)
    ours = convert_args(original["args"])
    state = convert_state_dict(original["model"], ours.family)
    data = original["args"].data if isinstance(getattr(original["args"], "data", None), str) else "DATA"
    cfg, model = build_converted_model(ours, state, data)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container["common"]["user_dir"] = None  # given on the command line that loads the checkpoint
    checkpoint = {
        "args": None,
        "cfg": container,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "converted", "optimizer_name": "none",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"converted_from": os.path.basename(in_path)},
        "last_optimizer_state": None,
    }
    torch.save(checkpoint, out_path)
    return ours
