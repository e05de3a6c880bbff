"""The language-model corpora: WikiText-103 (word level) and enwik8 (bytes), binarized for fairseq.

Used by ``scripts/prepare-wikitext-103.sh`` and ``scripts/prepare-enwik8.sh`` (which
download the data); on local files::

    python -m mega_fairseq.prepare.language_model wikitext-103 RAW_DIR OUTPUT [--workers N] [--replace-invalid-utf8]
    python -m mega_fairseq.prepare.language_model enwik8 RAW_FILE WORK_DIR OUTPUT [--test-bytes 5000000] [--workers N]

WikiText-103 as in the original Mega recipe: ``wiki.{train,valid,test}.tokens``
(already tokenized, ``<unk>`` for rare words), checked (present, not empty, UTF-8)
and binarized with ``fairseq-preprocess --only-source``.

enwik8 as transformer-xl / awd-lstm-lm prepare it: the raw file is cut into three
splits by position: the last ``test_bytes`` bytes are the test set, the
``test_bytes`` before them the validation set and everything before that the
training set (90M / 5M / 5M bytes for the real 100,000,000-byte enwik8 with the
default 5,000,000). Each split is written as text (``WORK_DIR/{train,valid,test}.txt``):
every byte becomes its decimal value (``"60"`` for ``<``, ``"195"`` for the first
byte of ``é`` in UTF-8, ...), the tokens are joined by single spaces, and a
newline byte is written as a newline character instead of ``"10"``, so that it
ends a line. ``b"a\\nbc"`` becomes ``"97 \\n 98 99"``. fairseq-preprocess then
reads one line per newline byte and ends every line with ``</s>``: in the
binarized data ``</s>`` stands for the newline byte (and, after the last line of a
split that does not end with a newline, for the end of the split). Every other
byte is one token, so the base-2 loss per token that fairseq-eval-lm reports is
bits per byte (bpc).

OUTPUT is written through a staging folder: a failed run leaves it as it was.
"""
import argparse
import os
import sys
import tempfile
from typing import BinaryIO, Dict, Tuple

import numpy as np

from .common import (REPLACE_HELP, DataError, Replacements, binarize, check_splits, check_utf8, iter_lines,
                     staged_output)

SPLITS = ("train", "valid", "test")
NEWLINE = 10
DEFAULT_TEST_BYTES = 5_000_000
ENWIK8_SIZE = 100_000_000
# bytes converted per numpy step: bounds the memory use (about 10 bytes per input byte)
CHUNK_BYTES = 1 << 22


def _token_table() -> Tuple[np.ndarray, np.ndarray]:
    """(256, 4) uint8: the text of each byte's token followed by a space; (256,) its length."""
    table = np.zeros((256, 4), dtype=np.uint8)
    lengths = np.zeros(256, dtype=np.int64)
    for value in range(256):
        token = b"\n" if value == NEWLINE else str(value).encode("ascii")
        entry = token + b" "
        table[value, : len(entry)] = np.frombuffer(entry, dtype=np.uint8)
        lengths[value] = len(entry)
    return table, lengths


_TABLE, _LENGTHS = _token_table()
_COLUMNS = np.arange(4)


def split_bytes(data: bytes, test_bytes: int = DEFAULT_TEST_BYTES) -> Tuple[bytes, bytes, bytes]:
    """(train, valid, test): the last test_bytes bytes, the test_bytes before them, the rest."""
    if test_bytes <= 0:
        raise DataError(f"--test-bytes must be positive, got {test_bytes}")
    if len(data) <= 2 * test_bytes:
        raise DataError(f"the input has {len(data):,} bytes: that leaves no training data after "
                         f"{test_bytes:,} test and {test_bytes:,} validation bytes (lower --test-bytes)")
    return data[: -2 * test_bytes], data[-2 * test_bytes: -test_bytes], data[-test_bytes:]


def _encode_chunk(chunk: np.ndarray) -> bytes:
    """Tokens of chunk, each followed by one space."""
    rows = _TABLE[chunk]                                      # (n, 4)
    keep = _COLUMNS < _LENGTHS[chunk][:, None]                # (n, 4)
    return rows[keep].tobytes()


def write_tokens(data: bytes, out: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Write the token text of data to the binary file out; returns the number of characters written."""
    array = np.frombuffer(data, dtype=np.uint8)
    written = 0
    for start in range(0, array.size, chunk_bytes):
        text = _encode_chunk(array[start: start + chunk_bytes])
        if start + chunk_bytes >= array.size:
            text = text[:-1]                                  # no space after the last token
        out.write(text)
        written += len(text)
    return written


def bytes_to_tokens(data: bytes) -> bytes:
    """The token text of data (small inputs; write_tokens streams large ones)."""
    array = np.frombuffer(data, dtype=np.uint8)
    return _encode_chunk(array)[:-1] if array.size else b""


def tokens_to_bytes(text: bytes) -> bytes:
    """Inverse of bytes_to_tokens."""
    lines = text.split(b"\n")
    return b"\n".join(bytes(int(token) for token in line.split()) for line in lines)


def write_splits(raw_path: str, out_dir: str, test_bytes: int = DEFAULT_TEST_BYTES) -> Dict[str, int]:
    """Split raw_path and write out_dir/{train,valid,test}.txt; returns {split: number of bytes}."""
    if not os.path.isfile(raw_path):
        raise DataError(f"missing input file: {raw_path}")
    with open(raw_path, "rb") as f:
        data = f.read()
    splits = dict(zip(SPLITS, split_bytes(data, test_bytes)))
    os.makedirs(out_dir, exist_ok=True)
    for name, part in splits.items():
        path = os.path.join(out_dir, name + ".txt")
        with open(path + ".part", "wb") as f:
            write_tokens(part, f)
        os.replace(path + ".part", path)
    return {name: len(part) for name, part in splits.items()}


def binarize_splits(prefix: str, output: str, workers: int) -> None:
    """fairseq-preprocess --only-source of PREFIX{train,valid,test}... into OUTPUT (staged)."""
    with staged_output(output) as staging:
        binarize(["--only-source", "--trainpref", prefix.format("train"), "--validpref", prefix.format("valid"),
                  "--testpref", prefix.format("test"), "--destdir", staging, "--workers", str(workers)])


def prepare_enwik8(raw_path: str, work_dir: str, output: str, test_bytes: int = DEFAULT_TEST_BYTES,
                   workers: int = 1) -> Dict[str, int]:
    """enwik8 (or any byte file) split, written as byte tokens into work_dir and binarized into output."""
    sizes = write_splits(raw_path, work_dir, test_bytes)
    total = sum(sizes.values())
    print(f"{raw_path}: {total:,} bytes" + ("" if total == ENWIK8_SIZE or test_bytes != DEFAULT_TEST_BYTES
                                            else f" (the real enwik8 has {ENWIK8_SIZE:,})"))
    for name, size in sizes.items():
        print(f"  {name}: {size:,} bytes -> {os.path.join(work_dir, name + '.txt')}")
    binarize_splits(os.path.join(work_dir, "{}.txt"), output, workers)
    return sizes


def write_utf8_copies(paths: Dict[str, str], out_dir: str) -> None:
    """Copies of the text files in out_dir (same names), invalid UTF-8 replaced and reported with counts."""
    replacements = Replacements()
    for path in paths.values():
        with open(os.path.join(out_dir, os.path.basename(path)), "w", encoding="utf-8", newline="\n") as f:
            for line in iter_lines(path, replacements):
                f.write(line + "\n")
    for line in replacements.report():
        print(line)


def prepare_wikitext103(raw_dir: str, output: str, workers: int = 1, replace_invalid_utf8: bool = False) -> int:
    """Check and binarize RAW_DIR/wiki.{train,valid,test}.tokens into output; returns the number of types."""
    paths = {split: os.path.join(raw_dir, f"wiki.{split}.tokens") for split in SPLITS}
    check_splits({split: [path] for split, path in paths.items()})
    if replace_invalid_utf8:
        with tempfile.TemporaryDirectory(prefix=".wikitext-103.", dir=os.path.dirname(os.path.abspath(output))) as tmp:
            write_utf8_copies(paths, tmp)
            binarize_splits(os.path.join(tmp, "wiki.{}.tokens"), output, workers)
    else:
        for path in paths.values():
            check_utf8(path)
        binarize_splits(os.path.join(raw_dir, "wiki.{}.tokens"), output, workers)
    with open(os.path.join(output, "dict.txt"), encoding="utf-8") as f:
        return sum(1 for _ in f) + 4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpora = parser.add_subparsers(dest="corpus", required=True)
    wikitext = corpora.add_parser("wikitext-103", help="binarize wiki.{train,valid,test}.tokens")
    wikitext.add_argument("raw_dir", help="folder of wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens")
    wikitext.add_argument("output", help="fairseq data-bin folder to write")
    wikitext.add_argument("--replace-invalid-utf8", action="store_true", help=REPLACE_HELP)
    enwik8 = corpora.add_parser("enwik8", help="split a byte file into byte tokens and binarize it")
    enwik8.add_argument("raw", help="raw byte file (the unzipped enwik8, or any file)")
    enwik8.add_argument("work_dir", help="folder for train.txt, valid.txt, test.txt (byte tokens)")
    enwik8.add_argument("output", help="fairseq data-bin folder to write")
    enwik8.add_argument("--test-bytes", type=int, default=DEFAULT_TEST_BYTES,
                        help=f"bytes of the test set and of the validation set (default {DEFAULT_TEST_BYTES:,})")
    for sub in (wikitext, enwik8):
        sub.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.corpus == "wikitext-103":
            types = prepare_wikitext103(args.raw_dir, args.output, args.workers, args.replace_invalid_utf8)
            print(f"done: {args.output} ({types} types with the 4 special symbols)")
        else:
            prepare_enwik8(args.raw, args.work_dir, args.output, args.test_bytes, args.workers)
            print(f"done: {args.output} (fairseq-eval-lm's \"Loss (base 2)\" on this data is bits per byte)")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
