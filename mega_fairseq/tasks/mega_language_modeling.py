"""``--task mega_language_modeling``: fairseq's language_modeling plus the Mega LM recipe's block options.

* ``--variant-block-multiple-min/max M1 M2``: training blocks are m x ``--decoder-chunk-size``
  tokens with m drawn uniformly from [M1, M2] per block (blocks of one length are batched
  together). With both at 1 (the default) training blocks are ``--tokens-per-sample`` long.
* ``--valid-block size:N | splits:N``: validation/test blocks of N tokens, or the split cut
  into N blocks, each scored in one pass. Default: ``--tokens-per-sample``.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.data import MonolingualDataset, TokenBlockDataset, data_utils
from fairseq.data.shorten_dataset import maybe_shorten_dataset
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from fairseq.utils import safe_getattr

from ..data.variable_block_dataset import VariableTokenBlockDataset


def parse_valid_block(spec: str, total_tokens: int) -> int:
    """'size:N' -> N; 'splits:N' -> ceil(total_tokens / N)."""
    kind, _, value = spec.partition(":")
    if kind not in ("size", "splits") or not value.isdigit() or int(value) <= 0:
        raise ValueError(f"--valid-block must be size:N or splits:N with N > 0, got {spec!r}")
    return int(value) if kind == "size" else math.ceil(total_tokens / int(value))


@dataclass
class MegaLanguageModelingConfig(LanguageModelingConfig):
    variant_block_multiple_min: int = field(
        default=1, metadata={"help": "training blocks are at least this many decoder chunks"})
    variant_block_multiple_max: int = field(
        default=1, metadata={"help": "training blocks are at most this many decoder chunks"})
    valid_block: Optional[str] = field(
        default=None, metadata={"help": "validation/test blocks: size:N tokens each, or splits:N blocks per split "
                                        "(default: --tokens-per-sample)"})


@register_task("mega_language_modeling", dataclass=MegaLanguageModelingConfig)
class MegaLanguageModelingTask(LanguageModelingTask):
    """Language modeling with Mega's variable-length training blocks and long validation blocks."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        self.decoder_chunk_size = -1
        low, high = args.variant_block_multiple_min, args.variant_block_multiple_max
        if not 1 <= low <= high:
            raise ValueError(f"need 1 <= --variant-block-multiple-min ({low}) <= --variant-block-multiple-max ({high})")

    @property
    def variable_blocks(self) -> bool:
        return (self.args.variant_block_multiple_min, self.args.variant_block_multiple_max) != (1, 1)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.decoder_chunk_size = safe_getattr(cfg, "decoder_chunk_size", -1)
        if self.variable_blocks and self.decoder_chunk_size <= 0:
            raise ValueError("--variant-block-multiple-min/max make blocks of whole decoder chunks: "
                             f"they need a positive --decoder-chunk-size (got {self.decoder_chunk_size})")
        return model

    def block_dataset(self, split: str, dataset):
        """Cut the split's token stream into blocks (source, target, past_target)."""
        pad, eos, mode = self.dictionary.pad(), self.dictionary.eos(), self.args.sample_break_mode
        if split == "train" and self.variable_blocks:
            multiples = (self.args.variant_block_multiple_min, self.args.variant_block_multiple_max)
            return VariableTokenBlockDataset(dataset, dataset.sizes, self.decoder_chunk_size, multiples, pad, eos,
                                             str(mode), self.args.seed)
        block_size = self.args.tokens_per_sample
        if split != "train" and self.args.valid_block:
            block_size = parse_valid_block(self.args.valid_block, int(dataset.sizes.sum()))
        return TokenBlockDataset(dataset, dataset.sizes, block_size, pad=pad, eos=eos, break_mode=mode,
                                 include_targets=True)

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.args.data)
        split_path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        dataset = data_utils.load_indexed_dataset(split_path, self.dictionary, self.args.dataset_impl, combine=combine)
        if dataset is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        dataset = maybe_shorten_dataset(dataset, split, self.args.shorten_data_split_list, self.args.shorten_method,
                                        self.args.tokens_per_sample, self.args.seed)
        blocks = self.block_dataset(split, dataset)
        self.datasets[split] = MonolingualDataset(
            dataset=blocks, sizes=blocks.sizes, src_vocab=self.dictionary, tgt_vocab=self.output_dictionary,
            add_eos_for_other_targets=self.args.sample_break_mode not in (None, "none"), shuffle=True,
            targets=self.targets, add_bos_token=self.args.add_bos_token)

    def get_batch_iterator(self, dataset, max_tokens=None, *args, **kwargs):
        """fairseq's iterator, with a clear error when one block cannot fit in a batch."""
        longest = int(dataset.sizes.max()) if len(dataset.sizes) else 0
        if max_tokens is not None and longest > max_tokens:
            raise ValueError(f"a block of {longest} tokens does not fit in --max-tokens {max_tokens} "
                             "(validation and test use --max-tokens-valid): raise it, or use smaller "
                             "blocks (--valid-block, --tokens-per-sample, --variant-block-multiple-max)")
        return super().get_batch_iterator(dataset, max_tokens, *args, **kwargs)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None, **kwargs):
        """fairseq-eval-lm's batches; refuses blocks longer than the model takes, which fairseq
        would skip (scoring only part of the split)."""
        limit = max_positions[0] if isinstance(max_positions, tuple) else max_positions
        sizes = dataset.sizes
        if limit is not None and len(sizes) and int(sizes.max()) > limit:
            too_long = sizes > limit
            option = "--valid-block" if self.args.valid_block else "--tokens-per-sample"
            raise ValueError(
                f"{int(too_long.sum())} of {len(sizes)} blocks ({int(sizes[too_long].sum())} of {int(sizes.sum())} "
                f"tokens) are longer than the model's {limit} positions (its --max-target-positions), and "
                f"fairseq-eval-lm would leave them out: use blocks of at most {limit} tokens ({option}, e.g. "
                f"--valid-block size:{limit}), or score the whole split with python -m mega_fairseq.stream_eval")
        return super().eval_lm_dataloader(dataset, max_tokens, batch_size, max_positions, **kwargs)
