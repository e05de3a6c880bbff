"""Token-by-token decoding of a MegaDecoder on step buffers, replayed from CUDA graphs on a GPU.

fairseq's beam search and sampling call ``decoder.forward`` with an incremental state and one new
token per step (``docs/math.md``, section 4.1). A ``StepSession`` (one per generated batch, kept in the
incremental state) runs those steps with ``modules.decoding``: all layer states live in one
``StepBuffers``, so a beam reorder is a handful of ``index_select``s and every step has the same
shapes. Buffers and their captured graphs are cached on the decoder by shape (``StepEntry``) and
reused by later batches of the same shape. Rows that beam search has dropped stay in the buffers
(computed, never read): the graph keeps its shape while the batch shrinks.

Self-attention slots: the chunk size, or for an unchunked decoder a capacity that doubles (moving to
a new entry) when the decoded prefix outgrows it. Encoder positions are padded up to a multiple of
``MEMORY_MULTIPLE`` so that batches of similar source lengths share an entry.
"""
from typing import Optional, Tuple

from torch import Tensor, nn

from ..modules.decoding import StepBuffers, fill_memory
from ..modules.step_graph import GraphedStep, graphs_enabled

MEMORY_MULTIPLE = 8
FIRST_CAPACITY = 32  # self-attention slots of an unchunked decoder before the first doubling
MAX_ENTRIES = 8  # buffer sets (with their graphs) kept per decoder


class StepEntry:
    """Buffers of one shape and the (graphed) step that runs on them."""

    def __init__(self, decoder, buffers: StepBuffers, features_only: bool):
        self.buffers = buffers
        use_graph = graphs_enabled(buffers.tokens.device) and isinstance(decoder.embedder.embed_tokens, nn.Embedding)
        self.step = GraphedStep(lambda: decoder.step_on_buffers(buffers, features_only), use_graph)


class StepSession:
    """The decoding state of one batch: which entry holds it, how many rows are live, the source length."""

    def __init__(self, decoder, rows: int, memory_length: int, features_only: bool):
        self.decoder = decoder
        self.rows = rows
        self.memory_length = memory_length
        self.features_only = features_only
        self.entry: Optional[StepEntry] = None

    def step(self, tokens: Tensor, position: int) -> Tuple[Tensor, Optional[Tensor]]:
        """tokens (rows, 1) at ``position``. Returns the output (rows, 1, V or D) and the cross-attention
        weights (rows, 1, S) or None: views of the entry's outputs, valid until the next step."""
        if self.decoder.chunk_size <= 0 and position >= self.entry.buffers.slots:
            self._move_to(self._entry(2 * self.entry.buffers.slots, tokens))
        buffers = self.entry.buffers
        buffers.tokens[: tokens.size(0)] = tokens
        buffers.position.fill_(position)
        out, attn = self.entry.step()
        out = out[: tokens.size(0)]
        if attn is not None:
            attn = attn[: tokens.size(0), :, : self.memory_length]
        return out, attn

    def start(self, tokens: Tensor, memory: Optional[Tensor], memory_padding: Optional[Tensor]) -> None:
        """First step of a batch: take an entry and write the projected encoder output into it."""
        slots = self.decoder.chunk_size if self.decoder.chunk_size > 0 else FIRST_CAPACITY
        self.entry = self._entry(slots, tokens)
        self.entry.buffers.reset()
        if memory is not None:
            fill_memory(self.decoder.layers, self.entry.buffers, memory, memory_padding)

    def reorder(self, new_order: Tensor) -> None:
        self.entry.buffers.reorder(new_order)

    def _entry(self, slots: int, tokens: Tensor) -> StepEntry:
        decoder = self.decoder
        memory = self.memory_length
        if memory:
            memory = min(-(-memory // MEMORY_MULTIPLE) * MEMORY_MULTIPLE, decoder.cross_positions)
        if decoder.chunk_size <= 0:
            slots = min(slots, decoder.max_target_positions)
        dtype = decoder.layers[0].mega_layer.v_proj.weight.dtype
        key = (self.rows, slots, memory, dtype, tokens.device, self.features_only)
        entries = decoder.step_entries
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
        layer = decoder.layers[0].mega_layer
        buffers = StepBuffers.allocate(self.rows, len(decoder.layers), slots, memory, layer.embed_dim,
                                       layer.move.ndim, layer.z_dim, layer.hidden_dim, dtype, tokens.device)
        entries[key] = StepEntry(decoder, buffers, self.features_only)
        while len(entries) > MAX_ENTRIES:
            entries.popitem(last=False)
        return entries[key]

    def _move_to(self, entry: StepEntry) -> None:
        self.entry.buffers.copy_into(entry.buffers)
        self.entry = entry
