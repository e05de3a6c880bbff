"""Turn the public Long Range Arena inputs into the data directories of ``lra-text`` and ``lra-image``.

Text tasks (ListOps, IMDB, AAN) are binarized as fairseq-preprocess would, in the
layout of the original implementation (facebookresearch/mega)::

    OUT/src-bin/{train,valid,test}.{bin,idx} + dict.txt    inputs (first documents for AAN)
    OUT/src1-bin/{train,valid,test}.{bin,idx}               second documents (AAN only)
    OUT/label-bin/{train,valid,test}.{bin,idx} + dict.txt   labels, class k is the k-th symbol

with fixed vocabularies (ListOps: its 15 tokens; IMDB and AAN: the 256 byte values,
written as decimal numbers), so that class numbers and token ids do not depend on
frequencies. Image tasks (CIFAR-10, Pathfinder, Path-X) are written as::

    OUT/input/{train,valid,test}.npy     uint8 (images, H*W) grayscale pixels, row-major
    OUT/label/{train,valid,test}.label   one class number per line

Splits follow the original: CIFAR-10's training set split 45,000 / 5,000 and
Pathfinder's images 80 / 10 / 10 % with ``torch.utils.data.random_split`` and seed
42; IMDB's test set doubles as validation set (as in LRA); ListOps and AAN come split.
"""
import glob
import io
import os
import pickle
import tarfile
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from .listops import LRA_FILE_NAMES, VOCABULARY, read_tsv, source_tokens

SPLITS = ("train", "valid", "test")
AAN_FILE_NAMES = {"train": "new_aan_pairs.train.tsv", "valid": "new_aan_pairs.eval.tsv",
                  "test": "new_aan_pairs.test.tsv"}
BYTE_VOCABULARY = tuple(str(b) for b in range(256))
TEXT_MAX_LENGTH = 4000  # LRA's byte-level Text and Retrieval tasks keep the first 4,000 bytes
SPLIT_SEED = 42


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {what}: {path}")
    return path


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------

class Binarizer:
    """Writes one binarized directory (``src-bin``, ``src1-bin`` or ``label-bin``) with a fixed vocabulary."""

    def __init__(self, out_dir: str, name: str, vocabulary: Sequence[str]):
        from fairseq.data import Dictionary

        self.dir = os.path.join(out_dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.dictionary = Dictionary()
        for symbol in vocabulary:
            self.dictionary.add_symbol(symbol, n=0)
        self.ids = {symbol: self.dictionary.index(symbol) for symbol in vocabulary}

    def write(self, split: str, sequences: Iterable[List[str]]) -> int:
        """Binarize token sequences (an end-of-sentence id is appended, as fairseq-preprocess does).
        Counts the training split's tokens into dict.txt. Returns the number of sequences."""
        from fairseq.data import indexed_dataset

        prefix = os.path.join(self.dir, split)
        builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(self.dictionary))
        count = 0
        for sequence in sequences:
            ids = [self.ids[token] for token in sequence]
            if split == "train":
                for index in ids:
                    self.dictionary.count[index] += 1
            builder.add_item(torch.tensor(ids + [self.dictionary.eos()], dtype=torch.int32))
            count += 1
        builder.finalize(prefix + ".idx")
        return count

    def save_dictionary(self) -> None:
        self.dictionary.save(os.path.join(self.dir, "dict.txt"))


def parse_label(text: str, classes: int, where: str) -> str:
    """A class label given as an integer (or an integral float such as ``1.0``) in [0, classes)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value != int(value) or not 0 <= value < classes:
        raise ValueError(f"{where}: unknown label {text!r} (expected 0..{classes - 1})")
    return str(int(value))


def byte_tokens(text: str, max_length: int) -> List[str]:
    """The first ``max_length`` UTF-8 bytes of ``text`` as tokens."""
    return [BYTE_VOCABULARY[b] for b in text.encode("utf-8")[:max_length]]


def write_text_task(out_dir: str, examples: Dict[str, Callable[[], Iterator[Tuple]]], vocabulary: Sequence[str],
                    classes: int, paired: bool) -> Dict[str, int]:
    """examples[split]() yields (tokens, label) or (tokens, tokens1, label). Returns counts by split."""
    inputs = Binarizer(out_dir, "src-bin", vocabulary)
    second = Binarizer(out_dir, "src1-bin", vocabulary) if paired else None
    labels = Binarizer(out_dir, "label-bin", [str(k) for k in range(classes)])
    counts = {}
    for split in SPLITS:
        rows = list(examples[split]())
        counts[split] = inputs.write(split, (row[0] for row in rows))
        if second is not None:
            second.write(split, (row[1] for row in rows))
        labels.write(split, ([row[-1]] for row in rows))
    for binarizer in (inputs, second, labels):
        if binarizer is not None:
            binarizer.save_dictionary()
    return counts


def listops_examples(path: str) -> Iterator[Tuple[List[str], str]]:
    known = set(VOCABULARY)
    for number, source, target in read_tsv(require_file(path, "ListOps file")):
        tokens = source_tokens(source)
        unknown = [t for t in tokens if t not in known]
        if unknown:
            raise ValueError(f"{path}: line {number}: unknown token {unknown[0]!r} "
                             f"(ListOps tokens: {' '.join(VOCABULARY)})")
        yield tokens, parse_label(target, 10, f"{path}: line {number}")


def prepare_listops(input_dir: str, out_dir: str) -> Dict[str, int]:
    """LRA's ListOps TSV files (basic_train/val/test.tsv, from lra_release/listops-1000 or
    scripts/generate_listops.py); the tokens are the source without parentheses."""
    paths = {split: os.path.join(input_dir, name) for split, name in LRA_FILE_NAMES.items()}
    examples = {split: (lambda p=path: listops_examples(p)) for split, path in paths.items()}
    return write_text_task(out_dir, examples, VOCABULARY, classes=10, paired=False)


def imdb_examples(input_dir: str, part: str, max_length: int) -> Iterator[Tuple[List[str], str]]:
    """aclImdb/{part}/neg (label 0) then pos (label 1), files in name order."""
    for label, polarity in enumerate(("neg", "pos")):
        folder = os.path.join(input_dir, part, polarity)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"missing IMDB folder {folder} (expected the aclImdb release: "
                                    f"train/neg, train/pos, test/neg, test/pos)")
        for name in sorted(os.listdir(folder)):
            if name.endswith(".txt"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    yield byte_tokens(f.read(), max_length), str(label)


def prepare_imdb(input_dir: str, out_dir: str, max_length: int = TEXT_MAX_LENGTH) -> Dict[str, int]:
    """The aclImdb release (the source of LRA's tfds ``imdb_reviews``), byte level, first
    ``max_length`` bytes; the test set is also the validation set, as in LRA."""
    examples = {"train": lambda: imdb_examples(input_dir, "train", max_length),
                "valid": lambda: imdb_examples(input_dir, "test", max_length),
                "test": lambda: imdb_examples(input_dir, "test", max_length)}
    return write_text_task(out_dir, examples, BYTE_VOCABULARY, classes=2, paired=False)


def aan_examples(path: str, max_length: int) -> Iterator[Tuple[List[str], List[str], str]]:
    """LRA's AAN pairs: label, id1, id2, text1, text2 separated by tabs, no header."""
    with open(require_file(path, "AAN file"), encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5:
                raise ValueError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected 5 "
                                 f"(label, id1, id2, text1, text2)")
            label = parse_label(fields[0], 2, f"{path}: line {number}")
            yield byte_tokens(fields[3], max_length), byte_tokens(fields[4], max_length), label


def prepare_aan(input_dir: str, out_dir: str, max_length: int = TEXT_MAX_LENGTH) -> Dict[str, int]:
    """LRA's Retrieval task (lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv), byte level."""
    examples = {split: (lambda p=os.path.join(input_dir, name): aan_examples(p, max_length))
                for split, name in AAN_FILE_NAMES.items()}
    return write_text_task(out_dir, examples, BYTE_VOCABULARY, classes=2, paired=True)


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------

def random_split_indices(count: int, lengths: Sequence[int], seed: int = SPLIT_SEED) -> List[np.ndarray]:
    """The index lists ``torch.utils.data.random_split`` gives for these lengths and seed."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy()
    bounds = np.cumsum([0, *lengths])
    return [order[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def write_image_split(out_dir: str, split: str, count: int, pixels: int,
                      images: Iterator[Tuple[np.ndarray, int]]) -> None:
    """Write ``count`` (uint8 image (pixels,), label) pairs to input/{split}.npy and label/{split}.label."""
    os.makedirs(os.path.join(out_dir, "input"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "label"), exist_ok=True)
    array = np.lib.format.open_memmap(os.path.join(out_dir, "input", f"{split}.npy"), mode="w+",
                                      dtype=np.uint8, shape=(count, pixels))
    with open(os.path.join(out_dir, "label", f"{split}.label"), "w", encoding="utf-8") as labels:
        for row, (image, label) in enumerate(images):
            array[row] = image
            labels.write(f"{label}\n")
    array.flush()
    del array


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint8 (...): ITU-R 601-2 luma in Pillow's integer arithmetic (what
    torchvision's Grayscale, used by the original, computes through ``Image.convert('L')``)."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches (dicts of numpy arrays) and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: array bytes, protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def cifar_batch(name: str, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch (binary ``*.bin`` or python pickle) -> images (N, 32, 32, 3) uint8, labels (N,)."""
    if name.endswith(".bin"):
        if len(data) % 3073:
            raise ValueError(f"{name}: {len(data)} bytes is not a whole number of 3073-byte CIFAR-10 records "
                             f"(label + 32x32x3 image): wrong image size or a truncated file")
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
        labels, planes = records[:, 0].astype(np.int64), records[:, 1:]
    else:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        planes, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
        if planes.ndim != 2 or planes.shape[1] != 3072 or planes.dtype != np.uint8:
            raise ValueError(f"{name}: images of shape {planes.shape[1:]} ({planes.dtype}), expected 3072 uint8 "
                             f"values (32x32x3): wrong image size")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise ValueError(f"{name}: image {bad[0]} has unknown label {labels[bad[0]]} (CIFAR-10 labels are 0-9)")
    return planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The CIFAR-10 python or binary release: its .tar.gz, or the extracted folder
    (cifar-10-batches-py / cifar-10-batches-bin, or its parent). Returns {"train", "test"}: (images, labels)."""
    names = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
    found: Dict[str, bytes] = {}
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and base.replace(".bin", "") in names["train"] + names["test"]:
                    found[base] = archive.extractfile(member).read()
    elif os.path.isdir(path):
        for folder in (path, *sorted(glob.glob(os.path.join(path, "cifar-10-batches-*")))):
            for name in names["train"] + names["test"]:
                for candidate in (name, name + ".bin"):
                    if os.path.isfile(os.path.join(folder, candidate)) and candidate not in found:
                        with open(os.path.join(folder, candidate), "rb") as f:
                            found[candidate] = f.read()
    else:
        raise FileNotFoundError(f"CIFAR-10 input {path} is neither a folder nor a tar archive")
    result = {}
    for part, batch_names in names.items():
        batches = []
        for name in batch_names:
            key = name if name in found else name + ".bin"
            if key not in found:
                raise FileNotFoundError(f"CIFAR-10 batch {name} (or {name}.bin) not found in {path}")
            batches.append(cifar_batch(os.path.join(path, key), found[key]))
        result[part] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return result


def prepare_cifar10(path: str, out_dir: str) -> Dict[str, int]:
    """CIFAR-10 as grayscale sequences of 1024 pixels; train / valid = 45,000 / 5,000 of the training set."""
    data = read_cifar10(path)
    train_images, train_labels = data["train"]
    gray = {"train": rgb_to_gray(train_images).reshape(len(train_images), -1),
            "test": rgb_to_gray(data["test"][0]).reshape(len(data["test"][0]), -1)}
    train_size = int(len(train_images) * 0.9)
    train_rows, valid_rows = random_split_indices(len(train_images), (train_size, len(train_images) - train_size))
    parts = {"train": (gray["train"], train_labels, train_rows),
             "valid": (gray["train"], train_labels, valid_rows),
             "test": (gray["test"], data["test"][1], np.arange(len(gray["test"])))}
    for split, (images, labels, rows) in parts.items():
        write_image_split(out_dir, split, len(rows), 1024, ((images[r], labels[r]) for r in rows))
    return {split: len(rows) for split, (_, _, rows) in parts.items()}


PATHFINDER_BLACKLIST = {"pathfinder32/curv_baseline/imgs/0/sample_172.png"}  # an empty file of the release


def pathfinder_samples(root: str, difficulty: str) -> List[Tuple[str, int]]:
    """(image path, label) from the metadata files of ``root/difficulty`` (lines ``folder file _ label ...``)."""
    metadata_dir = os.path.join(root, difficulty, "metadata")
    if not os.path.isdir(metadata_dir):
        raise FileNotFoundError(f"missing Pathfinder metadata folder {metadata_dir}")
    files = [f for f in os.listdir(metadata_dir) if f.endswith(".npy")]
    if not files:
        raise FileNotFoundError(f"no metadata files (*.npy) in {metadata_dir}")
    odd = [f for f in files if not f[:-4].isdigit()]
    if odd:
        raise ValueError(f"{metadata_dir}: metadata file {odd[0]} is not named by a number (0.npy, 1.npy, ...)")
    samples = []
    for name in sorted(files, key=lambda f: int(f[:-4])):
        path = os.path.join(metadata_dir, name)
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 4:
                    raise ValueError(f"{path}: line {number} has {len(fields)} fields, expected at least 4 "
                                     f"(folder, file, _, label)")
                image = os.path.join(difficulty, fields[0], fields[1])
                if os.path.join(os.path.basename(os.path.normpath(root)), image) in PATHFINDER_BLACKLIST:
                    continue
                samples.append((image, int(parse_label(fields[3], 2, f"{path}: line {number}"))))
    return samples


def read_gray_image(path: str, resolution: int) -> np.ndarray:
    """A Pathfinder PNG as uint8 (resolution * resolution,), grayscale (Pillow's ``convert('L')``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from None
    if gray.size != (resolution, resolution):
        raise ValueError(f"{path}: image of {gray.size[0]}x{gray.size[1]} pixels, expected "
                         f"{resolution}x{resolution} (--resolution): wrong image size")
    return np.asarray(gray, dtype=np.uint8).reshape(-1)


def prepare_pathfinder(root: str, out_dir: str, resolution: int,
                       difficulty: str = "curv_contour_length_14") -> Dict[str, int]:
    """Pathfinder (resolution 32) or Path-X (128) images of one difficulty; train / valid / test =
    80 / 10 / 10 % as the original. Needs Pillow (PNG decoding)."""
    samples = pathfinder_samples(root, difficulty)
    held_out = int(len(samples) * 0.1)
    splits = random_split_indices(len(samples), (len(samples) - 2 * held_out, held_out, held_out))
    for split, rows in zip(SPLITS, splits):
        images = ((read_gray_image(os.path.join(root, samples[r][0]), resolution), samples[r][1]) for r in rows)
        write_image_split(out_dir, split, len(rows), resolution * resolution, images)
    return {split: len(rows) for split, rows in zip(SPLITS, splits)}
