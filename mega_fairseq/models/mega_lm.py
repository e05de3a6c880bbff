"""The Mega language model for fairseq (``--arch mega_lm`` and the WikiText-103 / enwik8 architectures)."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.models import FairseqLanguageModel, register_model, register_model_architecture
from fairseq.modules import AdaptiveInput
from fairseq.utils import eval_str_list, safe_getattr
from omegaconf import II

from ..modules import MegaConfigError
from ..options import check_chunk_size
from .autocast import autocast_forward
from .mega import DEFAULT_MAX_POSITIONS, MegaDecoder, MegaDecoderConfig, build_embedding


@dataclass
class MegaLMConfig(MegaDecoderConfig):
    """Options of the Mega language model (decoder options plus adaptive input/softmax)."""

    decoder_input_dim: Optional[int] = field(default=None, metadata={"help": "input embedding width (default D)"})
    no_affine_final_norm: bool = field(default=False, metadata={"help": "no affine parameters in the final norm"})
    adaptive_input: bool = field(default=False, metadata={"help": "use adaptive input embeddings"})
    adaptive_input_factor: float = field(default=4, metadata={"help": "adaptive input dimension reduction factor"})
    adaptive_input_cutoff: Optional[str] = field(default=None, metadata={"help": "adaptive input cutoffs, e.g. 20000,60000"})
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None, metadata={"help": "adaptive softmax cutoffs (use --criterion adaptive_loss)"})
    adaptive_softmax_dropout: float = field(default=0.0, metadata={"help": "dropout of the adaptive softmax tails"})
    adaptive_softmax_factor: float = field(default=4, metadata={"help": "adaptive softmax dimension reduction factor"})
    tie_adaptive_weights: bool = field(default=False, metadata={"help": "tie adaptive input and softmax weights"})
    tie_adaptive_proj: bool = field(default=False, metadata={"help": "tie adaptive input and softmax projections"})
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.max_target_positions")


@register_model("mega_lm", dataclass=MegaLMConfig)
class MegaLanguageModel(FairseqLanguageModel):
    """Decoder-only Mega: causal EMA and chunked causal attention."""

    @classmethod
    def build_model(cls, args, task):
        base_lm_architecture(args)
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(args, "tokens_per_sample", DEFAULT_MAX_POSITIONS)
        check_chunk_size(args.decoder_chunk_size, "--decoder-chunk-size")
        dictionary = task.source_dictionary
        if args.adaptive_input:
            embed_tokens = AdaptiveInput(
                len(dictionary), dictionary.pad(), args.decoder_input_dim, args.adaptive_input_factor,
                args.decoder_embed_dim, eval_str_list(args.adaptive_input_cutoff, type=int))
        else:
            embed_tokens = build_embedding(dictionary, args.decoder_input_dim, args.decoder_embed_path)
        if args.tie_adaptive_weights:
            check_tied_adaptive_options(args)
        model = cls(MegaDecoder(args, task.target_dictionary, embed_tokens, no_encoder_attn=True))
        model.bf16_autocast = args.bf16_autocast
        return model

    def forward(self, *args, **kwargs):
        """fairseq's forward, under bf16 autocast with ``--bf16-autocast``."""
        return autocast_forward(self, self.bf16_autocast, super().forward, *args, **kwargs)


def check_tied_adaptive_options(args) -> None:
    """--tie-adaptive-weights needs matching adaptive input and softmax settings."""
    problems = []
    if not args.adaptive_input:
        problems.append("--adaptive-input is not set")
    if args.adaptive_input_factor != args.adaptive_softmax_factor:
        problems.append(f"--adaptive-input-factor {args.adaptive_input_factor} != "
                        f"--adaptive-softmax-factor {args.adaptive_softmax_factor}")
    if args.adaptive_input_cutoff != args.adaptive_softmax_cutoff:
        problems.append(f"--adaptive-input-cutoff {args.adaptive_input_cutoff} != "
                        f"--adaptive-softmax-cutoff {args.adaptive_softmax_cutoff}")
    if args.decoder_input_dim != args.decoder_embed_dim:
        problems.append(f"--decoder-input-dim {args.decoder_input_dim} != --decoder-embed-dim {args.decoder_embed_dim}")
    if problems:
        raise MegaConfigError("--tie-adaptive-weights: " + "; ".join(problems))


def base_lm_architecture(args):
    """Defaults of ``--arch mega_lm`` (the model name is its own architecture)."""
    args.decoder_embed_path = safe_getattr(args, "decoder_embed_path", None)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 512)
    args.decoder_hidden_dim = safe_getattr(args, "decoder_hidden_dim", 1664)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", args.decoder_hidden_dim)
    args.decoder_z_dim = safe_getattr(args, "decoder_z_dim", 128)
    args.decoder_n_dim = safe_getattr(args, "decoder_n_dim", 16)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 6)
    args.decoder_chunk_size = safe_getattr(args, "decoder_chunk_size", -1)
    args.decoder_input_dim = safe_getattr(args, "decoder_input_dim", args.decoder_embed_dim)
    args.adaptive_softmax_cutoff = safe_getattr(args, "adaptive_softmax_cutoff", None)
    args.adaptive_softmax_dropout = safe_getattr(args, "adaptive_softmax_dropout", 0.0)
    args.adaptive_softmax_factor = safe_getattr(args, "adaptive_softmax_factor", 4)
    args.adaptive_input = safe_getattr(args, "adaptive_input", False)
    args.adaptive_input_factor = safe_getattr(args, "adaptive_input_factor", 4)
    args.adaptive_input_cutoff = safe_getattr(args, "adaptive_input_cutoff", None)
    args.tie_adaptive_weights = safe_getattr(args, "tie_adaptive_weights", False)
    args.tie_adaptive_proj = safe_getattr(args, "tie_adaptive_proj", False)
    args.dropout = safe_getattr(args, "dropout", 0.1)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.0)
    args.hidden_dropout = safe_getattr(args, "hidden_dropout", 0.0)
    args.activation_dropout = safe_getattr(args, "activation_dropout", 0.0)
    args.feature_dropout = safe_getattr(args, "feature_dropout", False)
    args.activation_fn = safe_getattr(args, "activation_fn", "silu")
    args.attention_activation_fn = safe_getattr(args, "attention_activation_fn", "softmax")
    args.normalization_type = safe_getattr(args, "normalization_type", "layernorm")
    args.normalize_before = safe_getattr(args, "normalize_before", False)
    args.normalize_embedding = safe_getattr(args, "normalize_embedding", False)
    args.no_scale_embedding = safe_getattr(args, "no_scale_embedding", False)
    args.no_affine_final_norm = safe_getattr(args, "no_affine_final_norm", False)
    args.rel_pos_bias = safe_getattr(args, "rel_pos_bias", "simple")
    args.truncation_length = safe_getattr(args, "truncation_length", 2048)
    args.share_decoder_input_output_embed = safe_getattr(args, "share_decoder_input_output_embed", False)
    args.bf16_autocast = safe_getattr(args, "bf16_autocast", False)


@register_model_architecture("mega_lm", "mega_lm_big")
def mega_lm_big(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 16)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 1024)
    args.decoder_hidden_dim = safe_getattr(args, "decoder_hidden_dim", 2048)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 2048)
    args.decoder_z_dim = safe_getattr(args, "decoder_z_dim", 256)
    base_lm_architecture(args)


def _adaptive_defaults(args):
    """Adaptive input and softmax, tied, cutoffs 20000,60000, dropout 0.3 (the WikiText-103 setup)."""
    args.dropout = safe_getattr(args, "dropout", 0.3)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.1)
    args.hidden_dropout = safe_getattr(args, "hidden_dropout", 0.1)
    args.activation_dropout = safe_getattr(args, "activation_dropout", 0.1)
    args.adaptive_input = safe_getattr(args, "adaptive_input", True)
    args.tie_adaptive_weights = safe_getattr(args, "tie_adaptive_weights", True)
    args.tie_adaptive_proj = safe_getattr(args, "tie_adaptive_proj", True)
    args.adaptive_input_cutoff = safe_getattr(args, "adaptive_input_cutoff", "20000,60000")
    args.adaptive_softmax_cutoff = safe_getattr(args, "adaptive_softmax_cutoff", "20000,60000")
    args.adaptive_softmax_dropout = safe_getattr(args, "adaptive_softmax_dropout", 0.2)


@register_model_architecture("mega_lm", "mega_lm_adaptive_big")
def mega_lm_adaptive_big(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 16)
    _adaptive_defaults(args)
    mega_lm_big(args)


register_model_architecture("mega_lm", "mega_lm_wiki103")(mega_lm_adaptive_big)


@register_model_architecture("mega_lm", "mega_lm_adaptive_base")
def mega_lm_adaptive_base(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 16)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 768)
    args.decoder_hidden_dim = safe_getattr(args, "decoder_hidden_dim", 1536)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 1536)
    args.decoder_z_dim = safe_getattr(args, "decoder_z_dim", 128)
    _adaptive_defaults(args)
    base_lm_architecture(args)


@register_model_architecture("mega_lm", "mega_lm_enwik8_base")
def mega_lm_enwik8_base(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 12)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 512)
    args.decoder_hidden_dim = safe_getattr(args, "decoder_hidden_dim", 1024)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_z_dim = safe_getattr(args, "decoder_z_dim", 128)
    args.dropout = safe_getattr(args, "dropout", 0.1)
    base_lm_architecture(args)


@register_model_architecture("mega_lm", "mega_lm_enwik8_large")
def mega_lm_enwik8_large(args):
    args.decoder_layers = safe_getattr(args, "decoder_layers", 24)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 1024)
    args.decoder_hidden_dim = safe_getattr(args, "decoder_hidden_dim", 1536)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 1536)
    args.decoder_z_dim = safe_getattr(args, "decoder_z_dim", 128)
    args.dropout = safe_getattr(args, "dropout", 0.2)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.1)
    args.hidden_dropout = safe_getattr(args, "hidden_dropout", 0.1)
    base_lm_architecture(args)
