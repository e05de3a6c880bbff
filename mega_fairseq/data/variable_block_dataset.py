"""Token blocks whose lengths are random multiples of the attention chunk (Mega LM training)."""
import numpy as np
from fairseq.data import TokenBlockDataset
from fairseq.data.token_block_utils_fast import _get_block_to_dataset_index_fast


def variable_block_slices(sizes: np.ndarray, break_mode: str, chunk_size: int, multiples, seed: int) -> np.ndarray:
    """(num_blocks, 2) start/end offsets into the token stream of the items of ``sizes``.

    Each block's target length is ``chunk_size * m`` with m drawn uniformly from
    ``multiples = (low, high)``. Mode "none" cuts the stream at exactly that length;
    mode "complete" packs whole items up to it (an item longer than the target
    becomes a block of its own).
    """
    low, high = multiples
    rng = np.random.RandomState(seed)
    total = int(sizes.sum())
    if break_mode == "none":
        count = total // (chunk_size * low) + 1  # enough blocks to cover the stream
        ends = np.minimum(np.cumsum(chunk_size * rng.randint(low, high + 1, size=count)), total)
        ends = ends[: np.searchsorted(ends, total) + 1]
        starts = np.concatenate([[0], ends[:-1]])
        return np.stack([starts, ends], axis=1).astype(np.int64)
    slices = []
    start = 0
    block_end = start
    target = chunk_size * rng.randint(low, high + 1)
    for size in sizes.tolist():
        if block_end > start and block_end - start + size > target:
            slices.append((start, block_end))
            start = block_end
            target = chunk_size * rng.randint(low, high + 1)
        block_end += size
    if block_end > start:
        slices.append((start, block_end))
    return np.array(slices, dtype=np.int64).reshape(-1, 2)


class VariableTokenBlockDataset(TokenBlockDataset):
    """``TokenBlockDataset`` with block lengths drawn from multiples of a chunk size.

    Items are (source, target, past_target) as with ``include_targets=True``; the
    batching groups blocks of equal length, so a batch mostly has one block length.
    """

    def __init__(self, dataset, sizes, chunk_size: int, multiples, pad: int, eos: int, break_mode: str, seed: int):
        if break_mode not in ("none", "complete"):
            raise ValueError(f"--sample-break-mode {break_mode} is not supported with variable block lengths "
                             "(--variant-block-multiple-*); use none or complete")
        self.chunk_size, self.multiples, self.seed = chunk_size, multiples, seed
        super().__init__(dataset, sizes, chunk_size * multiples[1], pad=pad, eos=eos, break_mode=break_mode,
                         include_targets=True)

    def _build_slice_indices(self, sizes, break_mode, document_sep_len, block_size):
        sizes = np.asarray(sizes, dtype=np.int64)
        slice_indices = variable_block_slices(sizes, break_mode, self.chunk_size, self.multiples, self.seed)
        block_to_dataset_index = _get_block_to_dataset_index_fast(sizes, slice_indices)
        return slice_indices[:, 1] - slice_indices[:, 0], block_to_dataset_index, slice_indices
