"""The Mega encoder-decoder model for fairseq (``--arch mega_wmt_en_de`` and friends)."""
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
)
from fairseq.modules import AdaptiveSoftmax
from fairseq.utils import eval_str_list, safe_getattr
from torch import Tensor, nn

from .autocast import BF16_AUTOCAST_HELP, autocast_forward
from .common import (ACTIVATION_CHOICES, ATTENTION_CHOICES, ATTENTION_IMPL_CHOICES, ATTENTION_IMPL_HELP,
                     BLOCK_IMPL_CHOICES, BLOCK_IMPL_HELP, EMA_IMPL_CHOICES, EMA_IMPL_HELP, LAYER_GRAPHS_CHOICES,
                     NORM_CHOICES, POSITION_BIAS_CHOICES, STACK_ARGUMENTS, build_embedding, fill_defaults, follows,
                     from_task, layer_config, register_architectures, zero_pads)
from .compile import (COMPILE_LAYERS_HELP, LAYER_GRAPHS_HELP, compiled_stack, decoder_stack, encoder_stack,
                      graphs_apply, prepare_stack)
from .stepping import StepSession
from ..modules import MegaConfigError, MegaDecoderLayer, MegaEncoderLayer, SequenceNorm
from ..modules.decoding import StepBuffers, decoder_layers_step, supports_steps
from ..options import check_chunk_size

DEFAULT_MAX_POSITIONS = 1024
UNBOUNDED_POSITIONS = 1_000_000_000  # chunked attention: any length


@dataclass
class MegaCommonConfig(FairseqDataclass):
    """Options shared by every Mega model, spelled as in the original recipes."""

    activation_fn: ACTIVATION_CHOICES = field(default="silu", metadata={"help": "activation function"})
    attention_activation_fn: ATTENTION_CHOICES = field(default="softmax", metadata={"help": "attention function"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout probability of attention weights"})
    hidden_dropout: float = field(default=0.0, metadata={"help": "dropout probability of Mega's hidden vectors"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout probability after the FFN activation"})
    feature_dropout: bool = field(default=False, metadata={"help": "drop whole feature channels"})
    normalization_type: NORM_CHOICES = field(default="layernorm", metadata={"help": "normalization layer"})
    normalize_before: bool = field(default=False, metadata={"help": "normalize before each sub-layer (prenorm)"})
    normalize_embedding: bool = field(default=False, metadata={"help": "normalize the scaled embeddings"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(D)"})
    rel_pos_bias: POSITION_BIAS_CHOICES = field(default="simple", metadata={"help": "relative position bias"})
    truncation_length: Optional[int] = field(default=None, metadata={"help": "EMA kernel length cap; 0: none"})
    bf16_autocast: bool = field(default=False, metadata={"help": BF16_AUTOCAST_HELP})
    ema_impl: EMA_IMPL_CHOICES = field(default="auto", metadata={"help": EMA_IMPL_HELP})
    attention_impl: ATTENTION_IMPL_CHOICES = field(default="auto", metadata={"help": ATTENTION_IMPL_HELP})
    block_impl: BLOCK_IMPL_CHOICES = field(default="auto", metadata={"help": BLOCK_IMPL_HELP})
    compile_layers: bool = field(default=False, metadata={"help": COMPILE_LAYERS_HELP})
    layer_graphs: LAYER_GRAPHS_CHOICES = field(default="auto", metadata={"help": LAYER_GRAPHS_HELP})


@dataclass
class MegaDecoderConfig(MegaCommonConfig):
    """Options of a Mega decoder stack; the defaults are the language model's (``--arch mega_lm``), the
    encoder-decoder's decoder follows its encoder instead (MegaConfig)."""

    decoder_embed_path: Optional[str] = field(default=None, metadata={"help": "pre-trained decoder embedding"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension (D)"})
    decoder_hidden_dim: int = field(default=1664, metadata={"help": "decoder value width of the Mega block (H)"})
    decoder_ffn_embed_dim: Optional[int] = follows("decoder_hidden_dim", "decoder feed-forward width; 0: no FFN")
    decoder_z_dim: int = field(default=128, metadata={"help": "decoder query/key width (Z)"})
    decoder_n_dim: int = field(default=16, metadata={"help": "decoder EMA order (N)"})
    decoder_chunk_size: int = field(default=-1, metadata={"help": "decoder attention chunk; -1: whole sequence"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "tie decoder input and output"})
    max_target_positions: Optional[int] = from_task("longest target")


@dataclass
class MegaConfig(MegaDecoderConfig):
    """Options of the Mega encoder-decoder."""

    encoder_embed_path: Optional[str] = field(default=None, metadata={"help": "pre-trained encoder embedding"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension (D)"})
    encoder_hidden_dim: int = field(default=1024, metadata={"help": "encoder value width of the Mega block (H)"})
    encoder_ffn_embed_dim: Optional[int] = follows("encoder_hidden_dim", "encoder feed-forward width; 0: no FFN")
    encoder_z_dim: int = field(default=128, metadata={"help": "encoder query/key width (Z)"})
    encoder_n_dim: int = field(default=16, metadata={"help": "encoder EMA order (N)"})
    encoder_chunk_size: int = field(default=-1, metadata={"help": "encoder attention chunk; -1: whole sequence"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    share_all_embeddings: bool = field(
        default=False, metadata={"help": "share encoder, decoder and output embeddings (joined dictionary)"})
    max_source_positions: Optional[int] = from_task("longest source")
    # the decoder's dimensions follow the encoder's
    decoder_embed_dim: Optional[int] = follows("encoder_embed_dim", "decoder embedding dimension (D)")
    decoder_hidden_dim: Optional[int] = follows("encoder_hidden_dim", "decoder value width of the Mega block (H)")
    decoder_ffn_embed_dim: Optional[int] = follows("encoder_ffn_embed_dim", "decoder feed-forward width; 0: no FFN")
    decoder_z_dim: Optional[int] = follows("encoder_z_dim", "decoder query/key width (Z)")
    decoder_n_dim: Optional[int] = follows("encoder_n_dim", "decoder EMA order (N)")
    decoder_chunk_size: Optional[int] = follows("encoder_chunk_size", "decoder attention chunk; -1: whole sequence")


class TokenEmbedder(nn.Module):
    """Tokens (B, L) -> scaled, optionally projected and normalized, dropped-out embeddings
    (L, B, D), zero at pads. Embeddings are scaled by sqrt(D) of the model width."""

    def __init__(self, args, embed_tokens: nn.Module, model_dim: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.padding_idx = embed_tokens.padding_idx
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(model_dim)
        self.project_in = (nn.Linear(embed_tokens.embedding_dim, model_dim, bias=False)
                           if embed_tokens.embedding_dim != model_dim else None)
        if args.normalize_embedding and args.normalize_before:
            raise MegaConfigError("--normalize-embedding and --normalize-before cannot be combined")
        self.embed_norm = SequenceNorm(str(args.normalization_type), model_dim) if args.normalize_embedding else None
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, tokens: Tensor, padded: Optional[bool] = None) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """Returns x (L, B, D), the padding mask (B, L) or None without pads, and the scaled embedding (B, L, D).
        ``padded``: whether ``tokens`` hold padding, if known (None: checked here, a host sync).
        The lookup runs outside autocast: fairseq's AdaptiveInput writes its rows into a float32 buffer."""
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            embedded = self.embed_scale * self.embed_tokens(tokens)
        if self.project_in is not None:
            embedded = self.project_in(embedded)
        padding_mask = tokens.eq(self.padding_idx)
        if not (padding_mask.any() if padded is None else padded):
            padding_mask = None
        x = embedded.transpose(0, 1)
        if self.embed_norm is not None:
            x = self.embed_norm(x, padding_mask)
        x = self.dropout(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        return x, padding_mask, embedded

    def embed_step(self, tokens: Tensor) -> Tuple[Tensor, Tensor]:
        """tokens (B, 1) -> x (1, B, D) and the padding mask (B, 1), without host synchronization."""
        padding = tokens.eq(self.padding_idx)
        embedded = self.embed_scale * self.embed_tokens(tokens)
        if self.project_in is not None:
            embedded = self.project_in(embedded)
        x = embedded.transpose(0, 1)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x).masked_fill(padding.t().unsqueeze(-1), 0.0), padding


def rotate_rows(t: Tensor, shifts: Tensor) -> Tensor:
    """Rotate each row of t (B, L, ...) left by shifts (B,) positions along L."""
    length = t.size(1)
    index = (torch.arange(length, device=t.device).unsqueeze(0) + shifts.unsqueeze(1)) % length
    index = index.view(*index.shape, *([1] * (t.dim() - 2))).expand_as(t)
    return t.gather(1, index)


class MegaEncoder(FairseqEncoder):
    """Stack of Mega encoder layers (bidirectional EMA). Output in fairseq's dict format."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.max_source_positions = args.max_source_positions
        self.embedder = TokenEmbedder(args, embed_tokens, args.encoder_embed_dim)
        self.chunk_size = args.encoder_chunk_size
        cfg = layer_config(args, STACK_ARGUMENTS, "max_source_positions", role="encoder")
        self.layers = nn.ModuleList(MegaEncoderLayer(cfg) for _ in range(args.encoder_layers))
        self.layer_graphs = prepare_stack(self.layers, bool(safe_getattr(args, "compile_layers", False)),
                                          str(safe_getattr(args, "layer_graphs", "auto")))
        self.final_norm = SequenceNorm(cfg.norm_type, cfg.embed_dim) if args.normalize_before else None

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False,
                padded: Optional[bool] = None):
        """src_tokens: (B, S). Returns encoder_out (S, B, D) and encoder_padding_mask (B, S) in lists.
        ``padded``: whether src_tokens hold padding, if known (None: checked, a host sync).

        With chunked attention, left-padded rows are rotated to right padding first, so that
        chunk borders count from the first real token whatever the padding.
        """
        leading_pads = None
        if self.chunk_size > 0 and padded is not False:
            leading_pads = src_tokens.ne(self.embedder.padding_idx).int().argmax(dim=1)
            if leading_pads.any():
                src_tokens = rotate_rows(src_tokens, leading_pads)
            else:
                leading_pads = None
        x, padding_mask, embedded = self.embedder(src_tokens, padded)
        states = []
        if not return_all_hiddens and graphs_apply(self.layer_graphs, self.training, x):
            x = compiled_stack(encoder_stack)(self.layers, x.contiguous(), padding_mask)
        else:
            for layer in self.layers:
                x = layer(x, padding_mask)
                if return_all_hiddens:
                    states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        x = zero_pads(x, padding_mask)
        if leading_pads is not None:
            x = rotate_rows(x.transpose(0, 1), -leading_pads).transpose(0, 1)
            embedded = rotate_rows(embedded, -leading_pads)
            padding_mask = rotate_rows(padding_mask, -leading_pads)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [] if padding_mask is None else [padding_mask],
            "encoder_embedding": [embedded],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [] if src_lengths is None else [src_lengths],
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Select batch entries (beam search): time-major tensors on dim 1, the others on dim 0."""
        time_major = ("encoder_out", "encoder_states")
        return {
            key: [t.index_select(1 if key in time_major else 0, new_order) for t in tensors]
            for key, tensors in encoder_out.items()
        }

    def max_positions(self):
        return self.max_source_positions


class MegaDecoder(FairseqIncrementalDecoder):
    """Stack of Mega decoder layers (causal EMA and attention, gated cross-attention
    unless ``no_encoder_attn``), with a shared, separate or adaptive-softmax output layer.

    Incremental state: token-by-token inference (beam search, sampling) keeps every layer's state
    in step buffers (``models.stepping``; replayed from CUDA graphs on a GPU); blocks of several
    tokens (``extract_block_features``, streamed evaluation) and steps with gradients keep per
    layer the causal block's EMA hidden state and the keys/values of its unfinished chunk, and the
    cross-attention's projected encoder keys/values. ``reorder_incremental_state`` selects beams.
    """

    def __init__(self, args, dictionary, embed_tokens: nn.Module, no_encoder_attn: bool = False):
        super().__init__(dictionary)
        self.max_target_positions = args.max_target_positions
        self.chunk_size = args.decoder_chunk_size
        self.embedder = TokenEmbedder(args, embed_tokens, args.decoder_embed_dim)
        cfg = layer_config(args, STACK_ARGUMENTS, "max_target_positions", role="decoder")
        cross_positions = None if no_encoder_attn else max(args.max_source_positions, args.max_target_positions)
        self.cross_positions = cross_positions or 0
        self.layers = nn.ModuleList(MegaDecoderLayer(cfg, cross_positions) for _ in range(args.decoder_layers))
        self.steps_supported = supports_steps(self.layers) and (
            self.embedder.embed_norm is None or not self.embedder.embed_norm.is_batch_norm)
        self.step_entries = OrderedDict()  # StepEntry by buffer shape (models/stepping.py)
        self.layer_graphs = prepare_stack(self.layers, bool(safe_getattr(args, "compile_layers", False)),
                                          str(safe_getattr(args, "layer_graphs", "auto")))
        final_norm_affine = not safe_getattr(args, "no_affine_final_norm", False)
        self.final_norm = (SequenceNorm(cfg.norm_type, cfg.embed_dim, affine=final_norm_affine)
                           if args.normalize_before else None)
        self.adaptive_softmax = None
        self.output_projection = None
        if safe_getattr(args, "adaptive_softmax_cutoff", None) is not None:
            self.adaptive_softmax = AdaptiveSoftmax(
                len(dictionary), cfg.embed_dim, eval_str_list(args.adaptive_softmax_cutoff, type=int),
                dropout=args.adaptive_softmax_dropout, factor=args.adaptive_softmax_factor,
                adaptive_inputs=embed_tokens if args.tie_adaptive_weights else None, tie_proj=args.tie_adaptive_proj)
        elif args.share_decoder_input_output_embed:
            self.output_projection = nn.Linear(cfg.embed_dim, len(dictionary), bias=False)
            self.output_projection.weight = embed_tokens.weight
        else:
            self.output_projection = nn.Linear(cfg.embed_dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=cfg.embed_dim ** -0.5)

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
        padded: Optional[bool] = None,
    ):
        """prev_output_tokens: (B, T). Returns logits (B, T, V) (features with adaptive softmax
        or ``features_only``) and extras. ``padded``: whether prev_output_tokens hold padding, if known
        (None: checked, a host sync)."""
        if incremental_state is not None and self._steps_apply(incremental_state):
            return self.decode_step(prev_output_tokens, encoder_out, incremental_state, features_only)
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state, padded=padded)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        padded: Optional[bool] = None,
        **unused,
    ):
        """fairseq's convention: with ``incremental_state`` the whole prefix is passed and
        only its last token is new."""
        position_offset = 0
        if incremental_state is not None:
            position_offset = prev_output_tokens.size(1) - 1
            prev_output_tokens = prev_output_tokens[:, -1:]
            padded = None
        return self.extract_block_features(prev_output_tokens, encoder_out, incremental_state, position_offset,
                                           padded)

    def extract_block_features(
        self,
        tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        position_offset: int = 0,
        padded: Optional[bool] = None,
    ):
        """Features (B, T, D) of ``tokens`` (B, T), the T tokens that follow what
        ``incremental_state`` has seen (position_offset of them, used by cross-attention),
        and {"attn": [cross-attention weights of the last layer (B, T, S)], "inner_states"}.
        ``padded``: whether ``tokens`` hold padding, if known (None: checked, a host sync)."""
        x, padding_mask, _ = self.embedder(tokens, padded)
        memory, memory_padding_mask = None, None
        if encoder_out is not None:
            memory = encoder_out["encoder_out"][0]
            if len(encoder_out["encoder_padding_mask"]) > 0:
                memory_padding_mask = encoder_out["encoder_padding_mask"][0]

        if incremental_state is None and graphs_apply(self.layer_graphs, self.training, x):
            x, attn, inner_states = compiled_stack(decoder_stack)(
                self.layers, x.contiguous(), None if memory is None else memory.contiguous(), memory_padding_mask,
                padding_mask)
            return self._finish_features(x, padding_mask, attn, inner_states)
        attn = None
        inner_states: List[Optional[Tensor]] = [x]
        for index, layer in enumerate(self.layers):
            self_state, cross_state = self._layer_states(incremental_state, index)
            # incremental steps call forward, which bypasses a compiled layer's __call__ (--compile-layers)
            run = layer if incremental_state is None else layer.forward
            x, attn = run(x, memory, memory_padding_mask, padding_mask, self_state, cross_state, position_offset)
            inner_states.append(x)
        return self._finish_features(x, padding_mask, attn, inner_states)

    def _finish_features(self, x: Tensor, padding_mask: Optional[Tensor], attn: Optional[Tensor], inner_states):
        """The last layer's output (T, B, D) -> final norm, zeroed pads, (B, T, D), and the extras."""
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        x = zero_pads(x, padding_mask)
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def _steps_apply(self, incremental_state) -> bool:
        """Token-by-token inference on step buffers: eval mode, no gradients, supported norms, and no
        block state already started for this batch."""
        if self.training or torch.is_grad_enabled() or not self.steps_supported:
            return False
        return self._layer_states(incremental_state, 0, create=False)[0] is None

    def decode_step(self, prev_output_tokens: Tensor, encoder_out, incremental_state, features_only: bool):
        """One token per row: the last of ``prev_output_tokens`` (B, T), at position T - 1."""
        rows, length = prev_output_tokens.shape
        position = length - 1
        memory, memory_padding = None, None
        if encoder_out is not None and len(self.layers) and self.layers[0].cross_attn is not None:
            memory = encoder_out["encoder_out"][0]
            if len(encoder_out["encoder_padding_mask"]) > 0:
                memory_padding = encoder_out["encoder_padding_mask"][0]
        self._check_step_positions(position, memory)
        session = self.get_incremental_state(incremental_state, "steps")
        if session is None:
            session = StepSession(self, rows, 0 if memory is None else memory.size(0), features_only)
            session.start(prev_output_tokens[:, -1:], memory, memory_padding)
            self.set_incremental_state(incremental_state, "steps", session)
        out, attn = session.step(prev_output_tokens[:, -1:], position)
        return out, {"attn": [attn], "inner_states": None}

    def _check_step_positions(self, position: int, memory: Optional[Tensor]) -> None:
        """The errors the position biases give on the block path, raised before the step runs."""
        limits = []
        if self.chunk_size <= 0:
            limits.append((position + 1, self.max_target_positions, "--max-target-positions"))
        if memory is not None:
            limits.append((max(position + 1, memory.size(0)), self.cross_positions,
                           "--max-source-positions/--max-target-positions"))
        for longest, limit, option in limits:
            if longest > limit:
                raise ValueError(f"sequence of {longest} positions is longer than the {limit} positions the relative "
                                 f"position bias covers (raise {option}, or use a chunk size)")

    def step_on_buffers(self, buffers: StepBuffers, features_only: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """The whole decoder at ``buffers.position`` for every buffer row: output (B, 1, V), or features
        (B, 1, D) with ``features_only``, and the last cross-attention's weights (B, 1, S) or None."""
        x, padding = self.embedder.embed_step(buffers.tokens)
        x, attn = decoder_layers_step(self.layers, x, padding, buffers, self.chunk_size)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.masked_fill(padding.t().unsqueeze(-1), 0.0).transpose(0, 1)
        return (x if features_only else self.output_layer(x)), attn

    def output_layer(self, features: Tensor) -> Tensor:
        """Logits (B, T, V); with an adaptive softmax the features pass through (see get_normalized_probs)."""
        return features if self.adaptive_softmax is not None else self.output_projection(features)

    def _layer_states(self, incremental_state, index: int, create: bool = True):
        """The (self-attention, cross-attention) state dicts of one layer, created on first use (or
        None when absent and not ``create``)."""
        if incremental_state is None:
            return None, None
        states = []
        for part in ("self", "cross"):
            key = f"layer{index}.{part}"
            state = self.get_incremental_state(incremental_state, key)
            if state is None and create:
                state = {}
                self.set_incremental_state(incremental_state, key, state)
            states.append(state)
        return states[0], states[1]

    def reorder_incremental_state(self, incremental_state: Dict[str, Dict[str, Optional[Tensor]]], new_order: Tensor):
        """Select beams: every state tensor is batch-first."""
        session = self.get_incremental_state(incremental_state, "steps")
        if session is not None:
            session.reorder(new_order)
            return
        for index in range(len(self.layers)):
            for state in self._layer_states(incremental_state, index):
                for name, value in list(state.items()):
                    if value is not None:
                        state[name] = value.index_select(0, new_order)

    def max_positions(self):
        """Position biases limit unchunked self-attention and cross-attention; a chunked
        decoder without cross-attention takes any length."""
        if self.chunk_size > 0 and self.layers[0].cross_attn is None:
            return UNBOUNDED_POSITIONS
        return self.max_target_positions


@register_model("mega", dataclass=MegaConfig)
class MegaModel(FairseqEncoderDecoderModel):
    """Mega encoder-decoder (Ma et al., 2023) for translation."""

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        for name in ("max_source_positions", "max_target_positions"):  # default: the task's
            if safe_getattr(args, name) is None:
                setattr(args, name, safe_getattr(getattr(task, "cfg", None), name) or DEFAULT_MAX_POSITIONS)
        check_chunk_size(args.encoder_chunk_size, "--encoder-chunk-size")
        check_chunk_size(args.decoder_chunk_size, "--decoder-chunk-size")
        if args.encoder_embed_dim != args.decoder_embed_dim:
            raise MegaConfigError(f"--encoder-embed-dim ({args.encoder_embed_dim}) and --decoder-embed-dim "
                                  f"({args.decoder_embed_dim}) must be equal: the decoder's cross-attention "
                                  f"reads the encoder output")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise MegaConfigError("--share-all-embeddings requires a joined dictionary "
                                      "(fairseq-preprocess --joined-dictionary)")
            if args.decoder_embed_path and args.decoder_embed_path != args.encoder_embed_path:
                raise MegaConfigError("--share-all-embeddings is not compatible with --decoder-embed-path")
            encoder_embed = build_embedding(src_dict, args.encoder_embed_dim, args.encoder_embed_path)
            decoder_embed = encoder_embed
            args.share_decoder_input_output_embed = True
        else:
            encoder_embed = build_embedding(src_dict, args.encoder_embed_dim, args.encoder_embed_path)
            decoder_embed = build_embedding(tgt_dict, args.decoder_embed_dim, args.decoder_embed_path)
        encoder = MegaEncoder(args, src_dict, encoder_embed)
        decoder = MegaDecoder(args, tgt_dict, decoder_embed)
        model = cls(encoder, decoder)
        model.bf16_autocast = safe_getattr(args, "bf16_autocast", False)
        return model

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor, **kwargs):
        """fairseq's encoder-decoder forward (under bf16 autocast with ``--bf16-autocast``), with whether the
        source and the target hold padding read in one host sync before the encoder runs: the decoder's own
        check would wait for the encoder's GPU work, with nothing queued behind it."""
        source_padded, target_padded = torch.stack([
            src_tokens.eq(self.encoder.embedder.padding_idx).any(),
            prev_output_tokens.eq(self.decoder.embedder.padding_idx).any()]).tolist()

        def encode_decode():
            encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, padded=source_padded, **kwargs)
            return self.decoder(prev_output_tokens, encoder_out=encoder_out, padded=target_padded, **kwargs)
        return autocast_forward(self, self.bf16_autocast, encode_decode)


def base_architecture(args):
    """Defaults of ``--arch mega`` (the model name is its own architecture): MegaConfig's."""
    fill_defaults(args, MegaConfig)


# Named architectures: what each changes of MegaConfig's defaults (the original's, docs/math.md section 6)
ARCHITECTURES = {
    "mega_wmt_en_de": dict(dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1),
    "mega_wmt_en_de_big": dict(encoder_embed_dim=1024, encoder_hidden_dim=2048, encoder_z_dim=256, dropout=0.3,
                               attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1),
}
register_architectures("mega", ARCHITECTURES, base_architecture)
