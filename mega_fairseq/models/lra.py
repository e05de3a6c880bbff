"""Sequence classifiers for Long Range Arena and raw Speech Commands.

One model with two kinds of encoder layers: Mega (``mega_lra_*``, ``mega_sc_raw*``)
or the Transformer baseline (``transformer_lra_*``), a stack of fairseq's own
``TransformerEncoderLayerBase``; Mega and the Transformer are one ``--arch`` (or
``--layer-type``) apart on the same data. As the original LRAModel / SCRawModel:

    tokens -> embedding, or real values (pixels, samples) -> RealNumberEmbedding (x * w + b)
    -> encoder layers -> mean over non-pad positions (--sen-rep-type mp) or first (<CLS>) position (cls)
    -> classifier layers (Linear, dropout, activation) -> class logits (sentence_projection_layer)

Document pairs (Retrieval) share the encoder; the classifier sees ``[u, v, u * v, u - v]``
(``--pair-features full``, LRA's combination) or ``[v, u]`` (``concat``, the original Mega code's).
Mega layers use a bidirectional EMA; the model adds no position embedding (the
attention's relative position bias), the Transformer adds sinusoidal (or learned)
ones to embeddings scaled by sqrt(D), like the original.

Parameter names follow the original where natural (``encoder.layers.N.mega_layer``,
``encoder.final_norm``, ``classifier.0.0``, ``sentence_projection_layer``); the
original nests one more ``encoder.`` and wraps the token embedding (``embed_tokens.embed``).
"""
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from torch import Tensor, nn

from .autocast import BF16_AUTOCAST_HELP, autocast_forward
from .common import (ACTIVATION_CHOICES, ATTENTION_CHOICES, ATTENTION_IMPL_CHOICES, ATTENTION_IMPL_HELP,
                     BLOCK_IMPL_CHOICES, BLOCK_IMPL_HELP, EMA_IMPL_CHOICES, EMA_IMPL_HELP, NORM_CHOICES, POSITION_BIAS_CHOICES, build_embedding,
                     fill_defaults, follows, layer_config, register_architectures, zero_pads)
from .compile import COMPILE_LAYERS_HELP, compile_layers
from ..modules import MegaConfigError, MegaEncoderLayer, SequenceNorm, get_activation

LAYER_TYPE_CHOICES = ChoiceEnum(["mega", "transformer"])
INPUT_TYPE_CHOICES = ChoiceEnum(["text", "image"])
SEN_REP_CHOICES = ChoiceEnum(["mp", "cls"])
PAIR_FEATURE_CHOICES = ChoiceEnum(["full", "concat"])


@dataclass
class LRAConfig(FairseqDataclass):
    """Options of the classifier, spelled as the original's; defaults are the original ``lra`` base
    architecture's (the named architectures set their own)."""

    layer_type: LAYER_TYPE_CHOICES = field(default="transformer", metadata={"help": "encoder layers"})
    bf16_autocast: bool = field(default=False, metadata={"help": BF16_AUTOCAST_HELP})
    ema_impl: EMA_IMPL_CHOICES = field(default="auto", metadata={"help": "Mega: " + EMA_IMPL_HELP})
    attention_impl: ATTENTION_IMPL_CHOICES = field(default="auto", metadata={"help": "Mega: " + ATTENTION_IMPL_HELP})
    block_impl: BLOCK_IMPL_CHOICES = field(default="auto", metadata={"help": "Mega: " + BLOCK_IMPL_HELP})
    compile_layers: bool = field(default=False, metadata={"help": "Mega: " + COMPILE_LAYERS_HELP})
    input_type: Optional[INPUT_TYPE_CHOICES] = field(default=None, metadata={
        "help": "text (token embedding) or image (real values: pixels, audio samples); default: the task's"})
    max_positions: int = field(default=4002, metadata={
        "help": "longest input in positions (with end-of-sentence and <CLS> tokens for text)"})
    sen_rep_type: SEN_REP_CHOICES = field(default="mp", metadata={
        "help": "sequence summary: mp (mean over positions) or cls (first position; lra-text prepends <CLS>)"})
    pair_features: PAIR_FEATURE_CHOICES = field(default="full", metadata={
        "help": "document pairs: full = [u, v, u*v, u-v] (LRA), concat = [v, u] (the original Mega code)"})
    sentence_class_num: Optional[int] = field(default=None, metadata={
        "help": "number of classes (default: the task's)"})

    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout probability of attention weights"})
    act_dropout: float = field(default=0.0, metadata={
        "help": "dropout after the feed-forward activation (Mega: also on the attention values)"})
    feature_dropout: bool = field(default=False, metadata={"help": "Mega: drop whole feature channels"})

    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "model width (D)"})
    encoder_hidden_dim: int = field(default=2048, metadata={"help": "Mega: value width (H)"})
    encoder_ffn_embed_dim: Optional[int] = follows("encoder_hidden_dim", "feed-forward width (Mega: 0 drops it)")
    z_dim: int = field(default=128, metadata={"help": "Mega: query/key width (Z)"})
    n_dim: int = field(default=2, metadata={"help": "Mega: EMA order (N)"})
    chunk_size: int = field(default=-1, metadata={"help": "Mega: attention chunk; -1: whole sequence"})
    truncation_length: Optional[int] = field(default=None, metadata={"help": "Mega: EMA kernel length cap; 0: none"})
    rel_pos_bias: POSITION_BIAS_CHOICES = field(default="simple", metadata={"help": "Mega: relative position bias"})
    activation_fn: ACTIVATION_CHOICES = field(default="gelu", metadata={"help": "activation function"})
    attention_activation_fn: ATTENTION_CHOICES = field(default="relu2", metadata={"help": "Mega: attention function"})
    norm_type: NORM_CHOICES = field(default="layernorm", metadata={"help": "Mega: normalization"})
    encoder_normalize_before: bool = field(default=False, metadata={
        "help": "Mega: prenorm layers and a final norm; Transformer: layer norm of the embeddings (the original's)"})
    normalize_embedding: bool = field(default=False, metadata={"help": "Mega: normalize the embeddings"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "Transformer: attention heads"})
    encoder_learned_pos: bool = field(default=False, metadata={
        "help": "Transformer: learned position embeddings (default sinusoidal, with embeddings scaled by sqrt(D))"})
    tie_layer_weights: bool = field(default=False, metadata={"help": "Transformer: one layer applied N times"})
    apply_bert_init: bool = field(default=False, metadata={"help": "BERT initialization (N(0, 0.02)) of the model"})

    classifier_layers: int = field(default=1, metadata={"help": "hidden layers of the classifier"})
    classifier_out_dim: Optional[int] = field(default=2048, metadata={
        "help": "width of the classifier's hidden layers (default: 2 x --encoder-embed-dim)"})
    classifier_activation_fn: ACTIVATION_CHOICES = field(default="gelu", metadata={
        "help": "activation of the classifier layers"})


@dataclass
class SCRawConfig(LRAConfig):
    """The original ``sc_raw`` base architecture's defaults (raw Speech Commands, Mega)."""

    layer_type: LAYER_TYPE_CHOICES = field(default="mega", metadata={"help": "encoder layers"})
    max_positions: int = field(default=16000, metadata={"help": "longest input in positions"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout probability of attention weights"})
    encoder_embed_dim: int = field(default=60, metadata={"help": "model width (D)"})
    encoder_hidden_dim: int = field(default=120, metadata={"help": "Mega: value width (H)"})
    z_dim: int = field(default=30, metadata={"help": "Mega: query/key width (Z)"})
    n_dim: int = field(default=16, metadata={"help": "Mega: EMA order (N)"})
    chunk_size: int = field(default=1000, metadata={"help": "Mega: attention chunk; -1: whole sequence"})
    truncation_length: Optional[int] = field(default=1000, metadata={"help": "Mega: EMA kernel length cap; 0: none"})
    activation_fn: ACTIVATION_CHOICES = field(default="silu", metadata={"help": "activation function"})
    attention_activation_fn: ATTENTION_CHOICES = field(default="laplace", metadata={
        "help": "Mega: attention function"})
    norm_type: NORM_CHOICES = field(default="batchnorm", metadata={"help": "Mega: normalization"})
    encoder_normalize_before: bool = field(default=False, metadata={"help": "Mega: prenorm layers and a final norm (the SC recipe sets it)"})
    classifier_out_dim: Optional[int] = field(default=None, metadata={
        "help": "width of the classifier's hidden layers (default: 2 x --encoder-embed-dim)"})


def fill_classifier_defaults(args, config_class) -> None:
    """Set every option still unset to its default in ``config_class``; the classifier width
    defaults to 2 x --encoder-embed-dim."""
    fill_defaults(args, config_class)
    if args.classifier_out_dim is None:
        args.classifier_out_dim = 2 * args.encoder_embed_dim


# MegaLayerConfig field -> classifier argument, where the names differ
LRA_ARGUMENTS = {"embed_dim": "encoder_embed_dim", "hidden_dim": "encoder_hidden_dim",
                 "ffn_dim": "encoder_ffn_embed_dim", "truncation": "truncation_length",
                 "attention_fn": "attention_activation_fn", "activation": "activation_fn",
                 "prenorm": "encoder_normalize_before", "hidden_dropout": "act_dropout",
                 "activation_dropout": "act_dropout"}


def check_options(args, task) -> None:
    """Refuse option values that cannot work, naming the option. The Mega layer options are
    checked by MegaLayerConfig (named after LRA_ARGUMENTS); these are the classifier's own."""
    mega = args.layer_type == "mega"
    positive = [("encoder_layers", "--encoder-layers"), ("encoder_embed_dim", "--encoder-embed-dim"),
                ("max_positions", "--max-positions"), ("classifier_out_dim", "--classifier-out-dim")]
    if not mega:
        positive += [("encoder_ffn_embed_dim", "--encoder-ffn-embed-dim"),
                     ("encoder_attention_heads", "--encoder-attention-heads")]
    for name, option in positive:
        if getattr(args, name) <= 0:
            raise MegaConfigError(f"{option} must be positive, got {getattr(args, name)}")
    if args.classifier_layers < 0:
        raise MegaConfigError(f"--classifier-layers must be >= 0, got {args.classifier_layers}")
    if mega and args.normalize_embedding and args.encoder_normalize_before:
        raise MegaConfigError("--normalize-embedding and --encoder-normalize-before cannot be combined")
    if not mega and args.encoder_embed_dim % args.encoder_attention_heads:
        raise MegaConfigError(f"--encoder-embed-dim {args.encoder_embed_dim} must be divisible by "
                              f"--encoder-attention-heads {args.encoder_attention_heads}")
    if args.input_type != task.input_type:
        raise MegaConfigError(f"--input-type {args.input_type} does not fit the task, whose inputs are "
                              f"{task.input_type} ({'tokens' if task.input_type == 'text' else 'real values'})")
    if args.sen_rep_type == "cls" and task.input_type != "text":
        raise MegaConfigError("--sen-rep-type cls needs text input (the <CLS> token); use mp for images and audio")
    if args.sentence_class_num is not None and args.sentence_class_num < task.num_classes:
        raise MegaConfigError(f"--sentence-class-num {args.sentence_class_num} is smaller than the "
                              f"{task.num_classes} classes of the data")


def xavier_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """Linear layer with Xavier-uniform weights and zero bias (the original classifier's)."""
    layer = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RealNumberEmbedding(nn.Module):
    """Real values (B, L) -> (B, L, D) as ``x * weight + bias`` (weight N(0, 1), bias N(0, 0.1)); with
    C > 1 input channels, (B, L, C) -> ``x @ weight + bias``, weight (C, D)."""

    def __init__(self, embedding_dim: int, input_channels: int = 1):
        super().__init__()
        shape = (embedding_dim,) if input_channels == 1 else (input_channels, embedding_dim)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.bias, mean=0.0, std=0.1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.weight.dtype)
        if self.weight.dim() == 1:
            return x.unsqueeze(-1) * self.weight + self.bias
        return x @ self.weight + self.bias


def build_input_embedding(args, task) -> Tuple[nn.Module, Optional[int]]:
    """Token embedding (N(0, D^-1/2)) for text, RealNumberEmbedding otherwise; and the padding index."""
    if task.input_type != "text":
        return RealNumberEmbedding(args.encoder_embed_dim, task.input_channels), None
    return build_embedding(task.source_dictionary, args.encoder_embed_dim), task.source_dictionary.pad()


class MegaSentenceEncoder(nn.Module):
    """Embedding, Mega encoder layers (bidirectional EMA), final norm with prenorm layers."""

    def __init__(self, args, embed_tokens: nn.Module, padding_idx: Optional[int]):
        super().__init__()
        cfg = layer_config(args, LRA_ARGUMENTS, "max_positions")
        self.padding_idx = padding_idx
        self.embed_tokens = embed_tokens
        self.embed_norm = SequenceNorm(cfg.norm_type, cfg.embed_dim) if args.normalize_embedding else None
        self.embedding_dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(MegaEncoderLayer(cfg) for _ in range(args.encoder_layers))
        if getattr(args, "compile_layers", False):
            compile_layers(self.layers)
        self.final_norm = SequenceNorm(cfg.norm_type, cfg.embed_dim) if args.encoder_normalize_before else None

    def forward(self, src_tokens: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """src_tokens: (B, L) ids, or (B, L) / (B, L, C) real values. Returns x (L, B, D), zero at pads,
        and the padding mask (B, L) (None without pads)."""
        padding_mask = None
        if self.padding_idx is not None:
            padding_mask = src_tokens.eq(self.padding_idx)
            if not padding_mask.any():
                padding_mask = None
        x = self.embed_tokens(src_tokens).transpose(0, 1)
        if self.embed_norm is not None:
            x = self.embed_norm(x, padding_mask)
        x = zero_pads(self.embedding_dropout(x), padding_mask)
        for layer in self.layers:
            x = layer(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        return zero_pads(x, padding_mask), padding_mask


class TransformerSentenceEncoder(nn.Module):
    """The original TransformerLRAEncoder with fairseq's TransformerEncoderLayerBase (post-norm): embeddings
    scaled by sqrt(D) plus sinusoidal positions (or learned ones, unscaled), an embedding layer norm with
    --encoder-normalize-before, dropout, N layers (one shared layer with --tie-layer-weights)."""

    def __init__(self, args, embed_tokens: nn.Module, padding_idx: Optional[int]):
        super().__init__()
        dim = args.encoder_embed_dim
        self.padding_idx = padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.encoder_learned_pos else math.sqrt(dim)
        # real-valued inputs have no pads: their positions come from a row of ones with padding index 0
        self.position_padding_idx = 0 if padding_idx is None else padding_idx
        self.embed_positions = PositionalEmbedding(args.max_positions, dim, self.position_padding_idx,
                                                   learned=args.encoder_learned_pos)
        self.emb_layer_norm = LayerNorm(dim) if args.encoder_normalize_before else None
        self.dropout = nn.Dropout(args.dropout)
        self.num_layers = args.encoder_layers
        self.layers = nn.ModuleList(self.build_layer(args) for _ in range(1 if args.tie_layer_weights
                                                                         else args.encoder_layers))

    @staticmethod
    def build_layer(args) -> TransformerEncoderLayerBase:
        cfg = TransformerConfig()
        cfg.encoder.embed_dim = args.encoder_embed_dim
        cfg.encoder.ffn_embed_dim = args.encoder_ffn_embed_dim
        cfg.encoder.attention_heads = args.encoder_attention_heads
        cfg.encoder.normalize_before = False
        cfg.dropout, cfg.attention_dropout, cfg.activation_dropout = args.dropout, args.attention_dropout, args.act_dropout
        layer = TransformerEncoderLayerBase(cfg)
        layer.activation_fn = get_activation(str(args.activation_fn))  # fairseq's own list lacks silu
        return layer

    def forward(self, src_tokens: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """As MegaSentenceEncoder.forward."""
        padding_mask = None
        if self.padding_idx is not None:
            position_source = src_tokens
            padding_mask = src_tokens.eq(self.padding_idx)
            if not padding_mask.any():
                padding_mask = None
        else:
            position_source = torch.ones(src_tokens.shape[:2], dtype=torch.long, device=src_tokens.device)
        x = self.embed_tokens(src_tokens) * self.embed_scale + self.embed_positions(position_source)
        if self.emb_layer_norm is not None:
            x = self.emb_layer_norm(x)
        x = zero_pads(self.dropout(x).transpose(0, 1), padding_mask)
        for index in range(self.num_layers):
            x = self.layers[0 if len(self.layers) == 1 else index](x, encoder_padding_mask=padding_mask)
        return zero_pads(x, padding_mask), padding_mask


@register_model("lra", dataclass=LRAConfig)
class LRAModel(BaseFairseqModel):
    """Classifier of token or real-valued sequences (or of document pairs) into ``num_classes``."""

    config_class = LRAConfig

    def __init__(self, args, encoder: nn.Module, num_classes: int, paired: bool):
        super().__init__()
        self.args = args
        self.encoder = encoder
        self.sen_rep_type = str(args.sen_rep_type)
        self.paired = paired
        self.pair_features = str(args.pair_features)
        width = args.encoder_embed_dim
        if paired:
            width *= 4 if self.pair_features == "full" else 2
        self.classifier = nn.ModuleList()
        for _ in range(args.classifier_layers):
            self.classifier.append(nn.Sequential(xavier_linear(width, args.classifier_out_dim),
                                                 nn.Dropout(args.dropout)))
            width = args.classifier_out_dim
        self.classifier_activation = get_activation(str(args.classifier_activation_fn))
        self.sentence_projection_layer = xavier_linear(width, num_classes, bias=False)
        if args.apply_bert_init:
            self.apply(init_bert_params)

    @classmethod
    def build_model(cls, args, task):
        fill_classifier_defaults(args, cls.config_class)
        if args.input_type is None:
            args.input_type = task.input_type
        check_options(args, task)
        embed_tokens, padding_idx = build_input_embedding(args, task)
        encoder_class = MegaSentenceEncoder if args.layer_type == "mega" else TransformerSentenceEncoder
        encoder = encoder_class(args, embed_tokens, padding_idx)
        return cls(args, encoder, args.sentence_class_num or task.num_classes, task.paired)

    def sentence_representation(self, src_tokens: Tensor) -> Tensor:
        """(B, L[, C]) inputs -> (B, D): mean over the non-pad positions, or the first position."""
        x, padding_mask = self.encoder(src_tokens)
        if self.sen_rep_type == "cls":
            return x[0]
        if padding_mask is None:
            return x.mean(dim=0)
        return x.sum(dim=0) / (~padding_mask).sum(dim=1, keepdim=True).to(x.dtype)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                src1_tokens: Optional[Tensor] = None, src1_lengths: Optional[Tensor] = None) -> Tensor:
        """src_tokens: (B, L) ids or (B, L[, C]) real values; src1_tokens: the second documents of pairs.
        Returns logits (B, classes)."""
        if (src1_tokens is not None) != self.paired:
            raise ValueError(f"this model classifies {'document pairs' if self.paired else 'single inputs'}; "
                             f"the batch {'lacks' if self.paired else 'has'} second documents (src1_tokens)")
        return autocast_forward(self, self.args.bf16_autocast, self.classify, src_tokens, src1_tokens)

    def classify(self, src_tokens: Tensor, src1_tokens: Optional[Tensor]) -> Tensor:
        """Logits (B, classes) of single inputs, or of pairs when src1_tokens is given."""
        features = self.sentence_representation(src_tokens)
        if self.paired:
            u, v = features, self.sentence_representation(src1_tokens)
            features = torch.cat([u, v, u * v, u - v] if self.pair_features == "full" else [v, u], dim=-1)
        for layer in self.classifier:
            features = self.classifier_activation(layer(features))
        return self.sentence_projection_layer(features)

    def max_positions(self):
        return self.args.max_positions


@register_model("sc_raw", dataclass=SCRawConfig)
class SCRawModel(LRAModel):
    """The classifier for raw Speech Commands (the original's ``sc_raw``; its own base defaults)."""

    config_class = SCRawConfig


def lra_base(args):
    """Defaults of ``--arch lra`` (the model name is its own architecture): LRAConfig's."""
    fill_classifier_defaults(args, LRAConfig)


def sc_raw_base(args):
    """Defaults of ``--arch sc_raw``: SCRawConfig's."""
    fill_classifier_defaults(args, SCRawConfig)


MEGA = dict(layer_type="mega", activation_fn="silu", n_dim=16, sen_rep_type="mp", apply_bert_init=False)

# Architectures and their defaults, those of the original (facebookresearch/mega, fairseq/models/lra/model.py
# and speech_commands/model.py), except where noted. The class count comes from the data (the original's
# sentence_class_num defaults were 10 for ListOps and CIFAR-10, 2 otherwise, and 10 for Speech Commands).
LRA_ARCHITECTURES = {
    "mega_lra_listop": dict(MEGA, encoder_hidden_dim=160, z_dim=64, encoder_layers=6, encoder_embed_dim=80,
                            classifier_out_dim=160, chunk_size=-1, truncation_length=1024, max_positions=2002,
                            norm_type="scalenorm"),
    "mega_lra_imdb": dict(MEGA, encoder_hidden_dim=256, z_dim=64, encoder_layers=4, encoder_embed_dim=128,
                          classifier_out_dim=256, chunk_size=-1, truncation_length=1024, max_positions=4002,
                          norm_type="scalenorm"),
    # the original sets no --norm-type here (its recipe passes scalenorm): scalenorm is ours
    "mega_lra_aan": dict(MEGA, encoder_hidden_dim=256, z_dim=64, encoder_layers=6, encoder_embed_dim=128,
                         classifier_out_dim=256, chunk_size=-1, truncation_length=1024, max_positions=4002,
                         norm_type="scalenorm"),
    "mega_lra_cifar10": dict(MEGA, encoder_hidden_dim=320, z_dim=96, encoder_layers=8, encoder_embed_dim=160,
                             norm_type="batchnorm", classifier_out_dim=320, chunk_size=1024, truncation_length=1024,
                             max_positions=1024),
    "mega_lra_pf32": dict(MEGA, encoder_hidden_dim=256, z_dim=64, encoder_layers=6, encoder_embed_dim=128,
                          norm_type="batchnorm", classifier_out_dim=256, chunk_size=1024, truncation_length=1024,
                          max_positions=1024),
    "mega_lra_pf128": dict(MEGA, encoder_hidden_dim=128, z_dim=32, encoder_layers=4, encoder_embed_dim=64,
                           norm_type="batchnorm", classifier_out_dim=128, chunk_size=128 * 128,
                           truncation_length=4096, max_positions=128 * 128),
    # Transformer baselines: text ones pool a prepended <CLS> (the original pooled the first token without
    # adding one), image ones the mean, as the original requires.
    "transformer_lra_listop": dict(layer_type="transformer", sen_rep_type="cls", max_positions=2002,
                                   encoder_normalize_before=True, tie_layer_weights=True, apply_bert_init=True),
    "transformer_lra_imdb": dict(layer_type="transformer", sen_rep_type="cls", max_positions=4002,
                                 encoder_normalize_before=True, encoder_ffn_embed_dim=1024, encoder_layers=4,
                                 encoder_embed_dim=256, encoder_attention_heads=4, classifier_out_dim=1024,
                                 apply_bert_init=True),
    "transformer_lra_aan": dict(layer_type="transformer", sen_rep_type="cls", max_positions=4002,
                                encoder_normalize_before=True, encoder_ffn_embed_dim=512, encoder_layers=4,
                                encoder_embed_dim=128, encoder_attention_heads=4, classifier_out_dim=512,
                                apply_bert_init=False),
    "transformer_lra_cifar10": dict(layer_type="transformer", sen_rep_type="mp", encoder_ffn_embed_dim=128,
                                    encoder_layers=1, encoder_embed_dim=64, encoder_attention_heads=8,
                                    classifier_out_dim=128, max_positions=1024, encoder_normalize_before=True,
                                    apply_bert_init=False),
    "transformer_lra_pf32": dict(layer_type="transformer", sen_rep_type="mp", encoder_ffn_embed_dim=128,
                                 encoder_layers=1, encoder_embed_dim=128, encoder_attention_heads=4,
                                 classifier_out_dim=256, max_positions=1026, encoder_normalize_before=True,
                                 apply_bert_init=False),
    # not in the original (its Path-X baselines were other models): transformer_lra_pf32 at 128 x 128
    "transformer_lra_pf128": dict(layer_type="transformer", sen_rep_type="mp", encoder_ffn_embed_dim=128,
                                  encoder_layers=1, encoder_embed_dim=128, encoder_attention_heads=4,
                                  classifier_out_dim=256, max_positions=128 * 128, encoder_normalize_before=True,
                                  apply_bert_init=False),
}
SC_ARCHITECTURES = {
    "mega_sc_raw": {},
    "mega_sc_raw_base": {},
    "mega_sc_raw_big": dict(encoder_embed_dim=72, encoder_hidden_dim=144, z_dim=36),
}


register_architectures("lra", LRA_ARCHITECTURES, lra_base)
register_architectures("sc_raw", SC_ARCHITECTURES, sc_raw_base)
