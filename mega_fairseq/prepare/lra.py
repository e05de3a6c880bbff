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

A missing input, an empty split, a malformed line or text that is not UTF-8 stops
with a message naming the file (and line); for IMDB and AAN, ``--replace-invalid-utf8``
replaces such bytes by U+FFFD and reports a count. OUT is written through a staging
folder: a failed run leaves it as it was. Entry point: ``scripts/prepare-lra.py``
(``python -m mega_fairseq.prepare.lra``)::

    prepare-lra.py listops    --input DIR  --out OUT   # basic_{train,val,test}.tsv (lra_release/listops-1000,
                                                        #   or scripts/generate-listops.py)
    prepare-lra.py imdb       --input DIR  --out OUT   # the aclImdb release (train/ and test/, pos/ and neg/)
    prepare-lra.py aan        --input DIR  --out OUT   # lra_release/tsv_data: new_aan_pairs.{train,eval,test}.tsv
    prepare-lra.py cifar10    --input PATH --out OUT   # CIFAR-10 python or binary release (.tar.gz or folder)
    prepare-lra.py pathfinder --input DIR  --out OUT --resolution 32    # lra_release/pathfinder32
    prepare-lra.py pathfinder --input DIR  --out OUT --resolution 128   # Path-X: lra_release/pathfinder128

Pathfinder needs Pillow (pip install 'mega-fairseq[lra]'; tensorboard already depends on it).
"""
import argparse
import glob
import io
import os
import pickle
import sys
import tarfile
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .common import REPLACE_HELP, DataError, Replacements, iter_lines, read_text, staged_output
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
        raise DataError(f"{where}: unknown label {text!r} (expected 0..{classes - 1})")
    return str(int(value))


def byte_tokens(text: str, max_length: int) -> List[str]:
    """The first ``max_length`` UTF-8 bytes of ``text`` as tokens."""
    return [BYTE_VOCABULARY[b] for b in text.encode("utf-8")[:max_length]]


def write_text_task(out_dir: str, examples: Dict[str, Callable[[], Iterator[Tuple]]], sources: Dict[str, str],
                    vocabulary: Sequence[str], classes: int, paired: bool) -> Dict[str, int]:
    """examples[split]() yields (tokens, label) or (tokens, tokens1, label), read from sources[split]
    (named when the split is empty). Returns counts by split."""
    with staged_output(out_dir) as staging:
        inputs = Binarizer(staging, "src-bin", vocabulary)
        second = Binarizer(staging, "src1-bin", vocabulary) if paired else None
        labels = Binarizer(staging, "label-bin", [str(k) for k in range(classes)])
        counts = {}
        for split in SPLITS:
            rows = list(examples[split]())
            if not rows:
                raise DataError(f"no examples in the {split} split: {sources[split]}")
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
            raise DataError(f"{path}: line {number}: unknown token {unknown[0]!r} "
                             f"(ListOps tokens: {' '.join(VOCABULARY)})")
        yield tokens, parse_label(target, 10, f"{path}: line {number}")


def prepare_listops(input_dir: str, out_dir: str) -> Dict[str, int]:
    """LRA's ListOps TSV files (basic_train/val/test.tsv, from lra_release/listops-1000 or
    scripts/generate-listops.py); the tokens are the source without parentheses."""
    paths = {split: os.path.join(input_dir, name) for split, name in LRA_FILE_NAMES.items()}
    examples = {split: (lambda p=path: listops_examples(p)) for split, path in paths.items()}
    return write_text_task(out_dir, examples, paths, VOCABULARY, classes=10, paired=False)


def imdb_examples(input_dir: str, part: str, max_length: int,
                  replacements: Optional[Replacements] = None) -> Iterator[Tuple[List[str], str]]:
    """aclImdb/{part}/neg (label 0) then pos (label 1), files in name order."""
    for label, polarity in enumerate(("neg", "pos")):
        folder = os.path.join(input_dir, part, polarity)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"missing IMDB folder {folder} (expected the aclImdb release: "
                                    f"train/neg, train/pos, test/neg, test/pos)")
        for name in sorted(os.listdir(folder)):
            if name.endswith(".txt"):
                yield byte_tokens(read_text(os.path.join(folder, name), replacements), max_length), str(label)


def prepare_imdb(input_dir: str, out_dir: str, max_length: int = TEXT_MAX_LENGTH,
                 replacements: Optional[Replacements] = None) -> Dict[str, int]:
    """The aclImdb release (the source of LRA's tfds ``imdb_reviews``), byte level, first
    ``max_length`` bytes; the test set is also the validation set, as in LRA."""
    parts = {"train": "train", "valid": "test", "test": "test"}
    examples = {split: (lambda part=part: imdb_examples(input_dir, part, max_length, replacements))
                for split, part in parts.items()}
    sources = {split: os.path.join(input_dir, part, "{neg,pos}") for split, part in parts.items()}
    return write_text_task(out_dir, examples, sources, BYTE_VOCABULARY, classes=2, paired=False)


def aan_examples(path: str, max_length: int,
                 replacements: Optional[Replacements] = None) -> Iterator[Tuple[List[str], List[str], str]]:
    """LRA's AAN pairs: label, id1, id2, text1, text2 separated by tabs, no header."""
    for number, line in enumerate(iter_lines(require_file(path, "AAN file"), replacements), start=1):
        fields = line.split("\t")
        if fields == [""]:
            continue
        if len(fields) != 5:
            raise DataError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected 5 "
                                 f"(label, id1, id2, text1, text2)")
        label = parse_label(fields[0], 2, f"{path}: line {number}")
        yield byte_tokens(fields[3], max_length), byte_tokens(fields[4], max_length), label


def prepare_aan(input_dir: str, out_dir: str, max_length: int = TEXT_MAX_LENGTH,
                replacements: Optional[Replacements] = None) -> Dict[str, int]:
    """LRA's Retrieval task (lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv), byte level."""
    paths = {split: os.path.join(input_dir, name) for split, name in AAN_FILE_NAMES.items()}
    examples = {split: (lambda p=path: aan_examples(p, max_length, replacements)) for split, path in paths.items()}
    return write_text_task(out_dir, examples, paths, BYTE_VOCABULARY, classes=2, paired=True)


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
            raise DataError(f"{name}: {len(data)} bytes is not a whole number of 3073-byte CIFAR-10 records "
                             f"(label + 32x32x3 image): wrong image size or a truncated file")
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
        labels, planes = records[:, 0].astype(np.int64), records[:, 1:]
    else:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        planes, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
        if planes.ndim != 2 or planes.shape[1] != 3072 or planes.dtype != np.uint8:
            raise DataError(f"{name}: images of shape {planes.shape[1:]} ({planes.dtype}), expected 3072 uint8 "
                             f"values (32x32x3): wrong image size")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{name}: image {bad[0]} has unknown label {labels[bad[0]]} (CIFAR-10 labels are 0-9)")
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
    with staged_output(out_dir) as staging:
        for split, (images, labels, rows) in parts.items():
            write_image_split(staging, split, len(rows), 1024, ((images[r], labels[r]) for r in rows))
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
        raise DataError(f"{metadata_dir}: metadata file {odd[0]} is not named by a number (0.npy, 1.npy, ...)")
    samples = []
    for name in sorted(files, key=lambda f: int(f[:-4])):
        path = os.path.join(metadata_dir, name)
        for number, line in enumerate(iter_lines(path), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                raise DataError(f"{path}: line {number} has {len(fields)} fields, expected at least 4 "
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
        raise DataError(f"{path}: cannot read the image ({error})") from None
    if gray.size != (resolution, resolution):
        raise DataError(f"{path}: image of {gray.size[0]}x{gray.size[1]} pixels, expected "
                         f"{resolution}x{resolution} (--resolution): wrong image size")
    return np.asarray(gray, dtype=np.uint8).reshape(-1)


def prepare_pathfinder(root: str, out_dir: str, resolution: int,
                       difficulty: str = "curv_contour_length_14") -> Dict[str, int]:
    """Pathfinder (resolution 32) or Path-X (128) images of one difficulty; train / valid / test =
    80 / 10 / 10 % as the original. Needs Pillow (PNG decoding)."""
    samples = pathfinder_samples(root, difficulty)
    held_out = int(len(samples) * 0.1)
    if held_out == 0:
        raise DataError(f"{os.path.join(root, difficulty, 'metadata')} lists {len(samples)} image(s): too few for "
                        f"non-empty 80 / 10 / 10 % train / valid / test splits (at least 10 needed)")
    splits = random_split_indices(len(samples), (len(samples) - 2 * held_out, held_out, held_out))
    with staged_output(out_dir) as staging:
        for split, rows in zip(SPLITS, splits):
            images = ((read_gray_image(os.path.join(root, samples[r][0]), resolution), samples[r][1]) for r in rows)
            write_image_split(staging, split, len(rows), resolution * resolution, images)
    return {split: len(rows) for split, rows in zip(SPLITS, splits)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prepare-lra.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["listops", "imdb", "aan", "cifar10", "pathfinder"])
    parser.add_argument("--input", required=True, help="the task's raw input (see above)")
    parser.add_argument("--out", required=True, help="data directory to write")
    parser.add_argument("--max-length", type=int, default=TEXT_MAX_LENGTH,
                        help="imdb, aan: keep the first bytes of each text (LRA: 4000)")
    parser.add_argument("--resolution", type=int, choices=[32, 64, 128, 256], default=32,
                        help="pathfinder: image side (32: Pathfinder, 128: Path-X)")
    parser.add_argument("--difficulty", default="curv_contour_length_14",
                        help="pathfinder: subfolder of the release (the original's: curv_contour_length_14)")
    parser.add_argument("--replace-invalid-utf8", action="store_true", help="imdb, aan: " + REPLACE_HELP)
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    replacements = Replacements() if args.replace_invalid_utf8 else None
    start = time.time()
    try:
        if args.task == "listops":
            counts = prepare_listops(args.input, args.out)
        elif args.task == "imdb":
            counts = prepare_imdb(args.input, args.out, args.max_length, replacements)
        elif args.task == "aan":
            counts = prepare_aan(args.input, args.out, args.max_length, replacements)
        elif args.task == "cifar10":
            counts = prepare_cifar10(args.input, args.out)
        else:
            counts = prepare_pathfinder(args.input, args.out, args.resolution, args.difficulty)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    for line in replacements.report() if replacements else []:
        print(f"[prepare-lra] {line}")
    print(f"[prepare-lra] {args.task}: " + ", ".join(f"{split} {n}" for split, n in counts.items())
          + f" examples in {args.out} ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
