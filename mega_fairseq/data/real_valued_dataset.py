"""Fixed-length real-valued sequences (image pixels, audio samples) with class labels, for fairseq."""
import os
from typing import Callable, List, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset


def read_labels(path: str) -> np.ndarray:
    """Class numbers, one per line (a ``.label`` file) -> int64 array (N,). A line that is not a
    non-negative integer is an error naming the file and line."""
    labels = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text.isdigit():
                raise ValueError(f"{path}: line {number}: label {text!r} is not a class number (0, 1, 2, ...)")
            labels.append(int(text))
    return np.asarray(labels, dtype=np.int64)


def read_pixel_text(path: str) -> np.ndarray:
    """The original release's ``.src`` format (one image per line, pixel values 0-255 separated by
    spaces) -> uint8 array (N, H*W); every line must hold the same number of values."""
    rows: List[np.ndarray] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                values = np.asarray([int(word) for word in line.split()], dtype=np.int64)
            except ValueError:
                raise ValueError(f"{path}: line {number} holds something other than integer pixel values") from None
            if values.size == 0 or values.min() < 0 or values.max() > 255:
                raise ValueError(f"{path}: line {number}: pixel values must be 0-255 (and at least one)")
            if rows and values.size != rows[0].size:
                raise ValueError(f"{path}: line {number} has {values.size} pixels, line 1 has {rows[0].size}: "
                                 f"all images of a split must have the same size")
            rows.append(values.astype(np.uint8))
    if not rows:
        raise ValueError(f"{path} is empty")
    return np.stack(rows)


def load_pixels(input_dir: str, split: str) -> Tuple[np.ndarray, str]:
    """Images of a split and their file: ``input/{split}.npy`` (uint8 (N, H*W), written by
    scripts/prepare-lra.py, memory-mapped) or the original release's ``input/{split}.src`` text file."""
    npy, text = os.path.join(input_dir, f"{split}.npy"), os.path.join(input_dir, f"{split}.src")
    if os.path.exists(npy):
        pixels = np.load(npy, mmap_mode="r")
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"{npy}: expected a uint8 array (images, pixels), got {pixels.dtype} {pixels.shape}")
        return pixels, npy
    if os.path.exists(text):
        return read_pixel_text(text), text
    raise FileNotFoundError(f"no images for split '{split}': neither {npy} nor {text} exists "
                            f"(scripts/prepare-lra.py writes them)")


class RealValuedSequenceDataset(FairseqDataset):
    """Examples ``signals[i]`` (fixed length L0), turned into float tensors by ``transform``.

    Args:
        signals: (N, L0) array (uint8 pixels, int16 samples, ...), may be memory-mapped.
        labels: (N,) class numbers.
        transform: (index, row (L0,)) -> float tensor (L,) or (L, C), the same L for every row.
        length: L, the length after ``transform``.
        shuffle: group examples into batches in a random (seeded) order rather than in file order.
    Batches: ``net_input.src_tokens`` (B, L) or (B, L, C), ``net_input.src_lengths`` (B,) = L,
    ``target`` (B,), ``id``, ``nsentences``, ``ntokens``.
    """

    def __init__(self, signals: np.ndarray, labels: np.ndarray, transform: Callable[[int, np.ndarray], torch.Tensor],
                 length: int, shuffle: bool = True, seed: int = 1):
        super().__init__()
        if len(signals) != len(labels):
            raise ValueError(f"{len(signals)} examples but {len(labels)} labels")
        self.signals, self.labels, self.transform = signals, labels, transform
        self.length = length
        self.sizes = np.full(len(signals), length, dtype=np.int64)
        self.shuffle, self.seed = shuffle, seed

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, index: int):
        return {"id": index, "source": self.transform(index, np.asarray(self.signals[index])),
                "target": int(self.labels[index])}

    def num_tokens(self, index: int) -> int:
        return self.length

    def size(self, index: int) -> int:
        return self.length

    def ordered_indices(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self))
        return np.random.RandomState(self.seed).permutation(len(self))

    def collater(self, samples) -> dict:
        if not samples:
            return {}
        source = torch.stack([s["source"] for s in samples])
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": len(samples) * self.length,
            "net_input": {"src_tokens": source,
                          "src_lengths": torch.full((len(samples),), self.length, dtype=torch.long)},
            "target": torch.tensor([s["target"] for s in samples]),
        }


class PixelTransform:
    """uint8 pixels (L,) -> float tensor ``(p / 255 - mean) / std`` (the original's --pixel-normalization)."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, index: int, row: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(row.astype(np.float32)).div_(255.0).sub_(self.mean).div_(self.std)


def check_length(length: int, max_positions: int, what: str) -> None:
    """Fixed-length inputs must fit in --max-positions."""
    if length > max_positions:
        raise ValueError(f"{what} has {length} positions, more than --max-positions {max_positions}")
