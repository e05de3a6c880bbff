"""Convert checkpoints of the original Mega code (facebookresearch/mega, built on fairseq 0.9) to this plugin.

An original checkpoint holds ``args`` (the ``argparse.Namespace`` of its training command) and ``model``
(the state dict). The conversion

1. reads it with ``torch.load``'s weights-only loader (plus the fairseq allow-list, so no code runs);
2. ``convert_args``: picks the model family from ``args.arch`` (this plugin's architectures, read
   from fairseq's registry) and translates the options into this plugin's command-line flags
   (task, model, criterion), refusing any option the plugin lacks;
3. ``detect_ema_revision``: decides which revision of the original ``MultiHeadEMA`` made the
   checkpoint (``main`` or ``flash``, see below), unless the caller names it;
4. ``convert_state_dict``: renames every parameter and buffer, and rewrites the EMA parameters
   for that revision (see ``convert_ema``);
5. parses the flags with fairseq's own parser, builds the model, checks the converted state dict
   against it (every name and shape, both ways) and loads it strictly;
6. writes a fairseq 0.12 checkpoint (``cfg``, ``model``) that ``fairseq-generate``,
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
    *.move.{alpha,delta,beta}                 -> (D', N, 1) -> (D', N), rewritten for flash (convert_ema)

The two EMA revisions of the original code (docs/conversion.md has the derivation):

    main  (every commit of branch main): p = sigmoid(delta), q = 1 - p * sigmoid(alpha); both
          directions of a bidirectional kernel start at lag 0; truncation K caps the kernel at K lags
          (K < 1 leaves it empty or fails). Parameters declared delta, alpha, beta, gamma, omega.
          Ours is the same function.
    flash (branch flash, commits 06f2d0e and 7d00ee4): p = sigmoid(alpha), q = 1 - p * sigmoid(delta);
          the backward kernel starts at lag 1; truncation < 1 means none. Parameters declared alpha,
          delta, beta, gamma, omega.
"""
import argparse
import math
import os
import re
import warnings
from collections import Counter
from types import SimpleNamespace
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_NAME_REGISTRY
from torch import Tensor

from .checkpoint_safety import allow_fairseq_checkpoints
from .options import ACTIVATIONS, ATTENTION_FUNCTIONS, NORM_TYPES, POSITION_BIASES, MegaConfigError

USER_DIR = os.path.dirname(os.path.abspath(__file__))

EMA_REVISIONS = ("main", "flash")
# the order in which each revision's MultiHeadEMA declares its parameters (its state dicts keep it)
EMA_PARAMETER_ORDER = {"main": ("delta", "alpha", "beta", "gamma", "omega"),
                       "flash": ("alpha", "delta", "beta", "gamma", "omega")}
# a flash backward lag-0 weight above this moves into omega with a float32 cancellation worth a warning
LAG_ZERO_WARNING = 1e3

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


class ConversionWarning(UserWarning):
    """The converted model equals the original only under a condition, which the message states."""


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
        truncation = self.get("truncation_length", 0)
        self.add("--truncation-length", truncation if truncation >= 1 else 0)  # ours: 0 is none (flash: < 1)
        for name in ("dropout", "attention_dropout"):
            self.copy(name, 0.0)
        self.switch("feature_dropout")


def architectures() -> Dict[str, str]:
    """This plugin's architectures -> model family (mega, mega_lm, lra or sc_raw), from fairseq's
    registry. The original code uses the same names for the same models."""
    return {arch: model for arch, model in ARCH_MODEL_NAME_REGISTRY.items() if model in FAMILY_FLAGS}


def family_of(args: argparse.Namespace) -> str:
    """The model family of an original checkpoint: mega, mega_lm, lra or sc_raw."""
    arch = getattr(args, "arch", None)
    known = architectures()
    if arch not in known:
        raise ConversionError(f"--arch {arch!r} of the original checkpoint is not a Mega architecture this "
                              f"converter knows ({', '.join(sorted(known))})")
    family = known[arch]
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
    FAMILY_FLAGS[family](flags)
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


# model family -> the function that translates its options
FAMILY_FLAGS = {"mega": _translation_flags, "mega_lm": _lm_flags, "lra": _lra_flags, "sc_raw": _sc_flags}


# ---------------------------------------------------------------------------------------------- parameters

class EmaRevision(NamedTuple):
    """The revision of the original EMA a checkpoint is converted as ('main' or 'flash'), and why."""

    name: str
    reason: str


_EMA_PARAMETER = re.compile(r"^(.*\.move\.)(alpha|delta|beta|gamma|omega)$")


def ema_modules(state: Dict[str, Tensor]) -> Dict[str, List[str]]:
    """The EMA modules of an original state dict: name prefix (ending in ``move.``) -> the names
    of its parameters in the order the state dict stores them."""
    modules: Dict[str, List[str]] = {}
    for name in state:
        match = _EMA_PARAMETER.match(name)
        if match:
            modules.setdefault(match.group(1), []).append(match.group(2))
    return modules


def _has_bidirectional_ema(state: Dict[str, Tensor]) -> bool:
    """Whether an EMA has twice as many kernels (gamma rows) as channels (omega)."""
    return any(prefix + "gamma" in state and prefix + "omega" in state
               and state[prefix + "gamma"].shape[0] == 2 * state[prefix + "omega"].shape[0]
               for prefix in ema_modules(state))


def _revision_of_order(parts: List[str]) -> Optional[str]:
    """The revision that declares an EMA's parameters in this order, or None."""
    return next((revision for revision, order in EMA_PARAMETER_ORDER.items() if tuple(parts) == order), None)


def _order_evidence(state: Dict[str, Tensor]) -> Tuple[Optional[str], str]:
    """The revision in whose declaration order every EMA module stores its parameters (or None), and why."""
    orders = Counter(_revision_of_order(parts) for parts in ema_modules(state).values())
    if len(orders) == 1 and None not in orders:
        revision, count = next(iter(orders.items()))
        return revision, (f"its {count} EMA modules store their parameters in {revision}'s declaration order "
                          f"({', '.join(EMA_PARAMETER_ORDER[revision])})")
    found = ", ".join(f"{count} in {revision or 'neither'}'s order" for revision, count in orders.items()) or "none"
    return None, (f"the order of its EMA parameters matches no revision (EMA modules: {found}; main declares "
                  f"{', '.join(EMA_PARAMETER_ORDER['main'])}, flash {', '.join(EMA_PARAMETER_ORDER['flash'])})")


def _args_evidence(args: argparse.Namespace, bidirectional: bool) -> Tuple[Optional[str], str]:
    """'flash' where the args only run as trained on flash (truncation_length < 1), else None; and why."""
    truncation = getattr(args, "truncation_length", None)
    if truncation is None or truncation >= 1:
        return None, f"truncation_length {truncation} runs on both revisions"
    kind = "bidirectional" if bidirectional else "causal"
    return "flash", (f"truncation_length {truncation} means no truncation on flash, while main cannot run it "
                     f"(the {kind} EMA kernel of {truncation} lags is empty or fails to build)")


def detect_ema_revision(args: argparse.Namespace, state: Dict[str, Tensor],
                        requested: Optional[str] = None) -> EmaRevision:
    """The revision of the original EMA that made a checkpoint (original args and state dict).

    Evidence: the order in which the state dict stores each EMA's parameters (the revisions declare
    alpha and delta in opposite order) and truncation_length < 1 (only flash runs it). ``requested``
    ('main' or 'flash') overrides the evidence. Raises ConversionError where the evidence is missing
    or contradicts itself, or where the requested revision cannot be reproduced.
    """
    by_order, order_reason = _order_evidence(state)
    by_args, args_reason = _args_evidence(args, _has_bidirectional_ema(state))
    evidence = [(revision, reason) for revision, reason in ((by_order, order_reason), (by_args, args_reason))
                if revision is not None]
    if requested is not None:
        if requested not in EMA_REVISIONS:
            raise ConversionError(f"--ema-revision {requested!r}: expected one of {', '.join(EMA_REVISIONS)}")
        if requested == "main" and by_args == "flash":
            raise ConversionError(f"--ema-revision main cannot be reproduced: {args_reason}")
        contrary = [reason for revision, reason in evidence if revision != requested]
        note = f", although {'; '.join(contrary)}" if contrary else ""
        return EmaRevision(requested, f"--ema-revision {requested} was given{note}")
    ask = "pass --ema-revision main or --ema-revision flash (docs/conversion.md tells them apart)"
    if not evidence:
        raise ConversionError(f"cannot tell which revision of the original EMA made this checkpoint: "
                              f"{order_reason}, and {args_reason}; {ask}")
    if len({revision for revision, _ in evidence}) > 1:
        raise ConversionError(f"the checkpoint contradicts itself about the revision of the original EMA: "
                              f"{order_reason}, but {args_reason}; {ask}")
    return EmaRevision(evidence[0][0], "; ".join(reason for _, reason in evidence))


def warn_truncated_flash(args: argparse.Namespace, state: Dict[str, Tensor]) -> None:
    """A truncated bidirectional flash EMA converts exactly only for inputs up to the truncation length."""
    truncation = getattr(args, "truncation_length", None)
    if truncation is not None and truncation >= 1 and _has_bidirectional_ema(state):
        warnings.warn(ConversionWarning(
            f"truncation_length {truncation} with flash's bidirectional EMA: the converted model gives the "
            f"original's outputs for inputs of at most {truncation} tokens (pads not counted); on longer ones "
            f"flash's backward kernel also weighs lag {truncation}, which ours (lags 0 to {truncation - 1}) "
            f"cannot"))


def convert_ema(params: Dict[str, Tensor], revision: str, name: str = "EMA") -> Dict[str, Tensor]:
    """Original EMA parameters (alpha, delta, beta (D', N, 1), gamma (D', N), omega (D,)) -> ours
    (alpha, delta, beta, gamma (D', N), omega (D,)), for the EMA revision that made them.

    main: the same function and roles as ours; alpha, delta and beta lose their trailing axis.
    flash: alpha and delta trade names (flash's p = sigmoid(alpha) is our sigmoid(delta); p and q
    are unchanged). A bidirectional flash EMA's backward kernel starts at lag 1: ours, from lag 0,
    gets beta / q in the backward rows, and omega gives back the lag-0 weight this adds
    (docs/conversion.md). ``name`` names the module in a warning.
    """
    if revision not in EMA_REVISIONS:
        raise ConversionError(f"EMA revision {revision!r}: expected one of {', '.join(EMA_REVISIONS)}")
    shapes = {part: tuple(t.shape) for part, t in params.items()}
    if len(shapes["gamma"]) != 2 or len(shapes["omega"]) != 1:
        raise ConversionError(f"EMA gamma {shapes['gamma']} and omega {shapes['omega']}: expected (D', N) and (D,)")
    kernel_dim, ndim = shapes["gamma"]
    for part in ("alpha", "delta", "beta"):
        if shapes[part] != (kernel_dim, ndim, 1):
            raise ConversionError(f"EMA parameter '{part}' has shape {shapes[part]}, expected {(kernel_dim, ndim, 1)} "
                                  f"(the original layout, like gamma {(kernel_dim, ndim)})")
    embed_dim = shapes["omega"][0]
    if kernel_dim not in (embed_dim, 2 * embed_dim):
        raise ConversionError(f"EMA gamma has {kernel_dim} rows for omega of {embed_dim} channels: expected "
                              f"{embed_dim} (causal) or {2 * embed_dim} (bidirectional)")
    ours = {part: (t[..., 0] if part in ("alpha", "delta", "beta") else t) for part, t in params.items()}
    if revision == "main":
        return ours
    ours["alpha"], ours["delta"] = ours["delta"], ours["alpha"]
    if kernel_dim == embed_dim:
        return ours
    return {**ours, **_backward_from_lag_zero(ours, name)}


def _backward_from_lag_zero(ema: Dict[str, Tensor], name: str) -> Dict[str, Tensor]:
    """beta and omega (our roles, float64 arithmetic) for which our backward kernel from lag 0 plus
    omega equal flash's backward kernel from lag 1 plus its omega.

    Flash weighs x[t + m], m >= 1, by c q^(m-1) (c = scale gamma p beta, summed over N); ours by
    c' q^m from m = 0. c' = c / q matches every m >= 1 and adds sum(c / q) at m = 0, removed from omega.
    """
    dim = ema["omega"].shape[0]
    dtype = torch.promote_types(ema["beta"].dtype, torch.float32)
    alpha, delta, beta, gamma = (ema[part][dim:].double() for part in ("alpha", "delta", "beta", "gamma"))
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    if not bool((q > 0).all()):
        raise ConversionError("an EMA decay q = 1 - sigmoid(alpha) sigmoid(delta) is 0 in float64 (the "
                              "original's kernel is NaN there)")
    backward_beta = beta / q
    lag_zero = (gamma * p * backward_beta).sum(-1) / math.sqrt(gamma.shape[1])  # (D,)
    largest = lag_zero.abs().max().item()
    if largest > LAG_ZERO_WARNING:
        warnings.warn(ConversionWarning(
            f"{name}: flash's backward kernel moves a lag-0 weight of up to {largest:.3g} into omega (decay q "
            f"down to {q.min().item():.3g}); the two cancel, but in float32 the converted EMA may differ from "
            f"the original by about {largest * torch.finfo(torch.float32).eps:.1g} times the input"))
    return {"beta": torch.cat([ema["beta"][:dim].to(dtype), backward_beta.to(dtype)]),
            "omega": (ema["omega"].double() - lag_zero).to(dtype)}


def rename(name: str, family: str) -> Optional[str]:
    """Our name of an original parameter or buffer, or None for entries that are dropped."""
    for pattern, replacement in RENAMES[family]:
        if re.search(pattern, name):
            if replacement is None:
                return None
            name = re.sub(pattern, replacement, name)
    return name


def convert_state_dict(state: Dict[str, Tensor], family: str, ema_revision: str) -> Dict[str, Tensor]:
    """Original state dict -> ours (renamed, EMA rewritten for ``ema_revision``, 'main' or 'flash').
    Two entries mapping to one name are an error."""
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
            new = convert_ema({part: converted[n] for part, n in names.items()}, ema_revision, prefix[:-1])
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


class Conversion(NamedTuple):
    """What convert_checkpoint did: the translated options and the EMA revision it assumed."""

    options: OurOptions
    ema_revision: EmaRevision


def convert_checkpoint(in_path: str, out_path: str, ema_revision: Optional[str] = None) -> Conversion:
    """Convert an original checkpoint file. ``ema_revision`` ('main' or 'flash') names the revision
    of the original EMA that trained it; None detects it (detect_ema_revision). Conditions under
    which the result is not exact are issued as ConversionWarning."""
    from omegaconf import OmegaConf

    original = load_original(in_path)
    ours = convert_args(original["args"])
    revision = detect_ema_revision(original["args"], original["model"], ema_revision)
    if revision.name == "flash":
        warn_truncated_flash(original["args"], original["model"])
    state = convert_state_dict(original["model"], ours.family, revision.name)
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
        "extra_state": {"converted_from": os.path.basename(in_path), "ema_revision": revision.name},
        "last_optimizer_state": None,
    }
    torch.save(checkpoint, out_path)
    return Conversion(ours, revision)
