"""The Mega language model for fairseq (``--arch mega_lm`` and the WikiText-103 / enwik8 architectures)."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.models import FairseqLanguageModel, register_model
from fairseq.modules import AdaptiveInput
from fairseq.utils import eval_str_list, safe_getattr
from omegaconf import II

from ..modules import MegaConfigError
from ..options import check_chunk_size
from .autocast import autocast_forward
from .common import build_embedding, fill_defaults, follows, register_architectures
from .mega import DEFAULT_MAX_POSITIONS, MegaDecoder, MegaDecoderConfig


@dataclass
class MegaLMConfig(MegaDecoderConfig):
    """Options of the Mega language model (decoder options plus adaptive input/softmax); the defaults are
    the original ``mega_lm``'s (D 512, H = FFN = 1664, Z 128, N 16, 6 layers, truncation 2048)."""

    truncation_length: Optional[int] = field(default=2048, metadata={"help": "EMA kernel length cap; 0: none"})
    decoder_input_dim: Optional[int] = follows("decoder_embed_dim", "input embedding width")
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
    """Defaults of ``--arch mega_lm`` (the model name is its own architecture): MegaLMConfig's."""
    fill_defaults(args, MegaLMConfig)


BIG = dict(decoder_layers=16, decoder_embed_dim=1024, decoder_hidden_dim=2048, decoder_ffn_embed_dim=2048,
           decoder_z_dim=256)
# adaptive input and softmax, tied, cutoffs 20000,60000 (the WikiText-103 setup)
ADAPTIVE = dict(dropout=0.3, attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1, adaptive_input=True,
                tie_adaptive_weights=True, tie_adaptive_proj=True, adaptive_input_cutoff="20000,60000",
                adaptive_softmax_cutoff="20000,60000", adaptive_softmax_dropout=0.2)

# Named architectures: what each changes of MegaLMConfig's defaults (the original's, docs/math.md section 6)
ARCHITECTURES = {
    "mega_lm_big": BIG,
    "mega_lm_adaptive_big": dict(BIG, **ADAPTIVE),
    "mega_lm_wiki103": dict(BIG, **ADAPTIVE),  # another name of mega_lm_adaptive_big
    "mega_lm_adaptive_base": dict(ADAPTIVE, decoder_layers=16, decoder_embed_dim=768, decoder_hidden_dim=1536,
                                  decoder_ffn_embed_dim=1536, decoder_z_dim=128),
    "mega_lm_enwik8_base": dict(decoder_layers=12, decoder_embed_dim=512, decoder_hidden_dim=1024,
                                decoder_ffn_embed_dim=1024, decoder_z_dim=128, dropout=0.1),
    "mega_lm_enwik8_large": dict(decoder_layers=24, decoder_embed_dim=1024, decoder_hidden_dim=1536,
                                 decoder_ffn_embed_dim=1536, decoder_z_dim=128, dropout=0.2, attention_dropout=0.1,
                                 hidden_dropout=0.1),
}
register_architectures("mega_lm", ARCHITECTURES, base_lm_architecture)
