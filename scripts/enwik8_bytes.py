#!/usr/bin/env python3
"""enwik8 as byte tokens, in the text format of the transformer-xl / awd-lstm-lm data.

The raw file is cut into three splits by position: the last ``test_bytes`` bytes
are the test set, the ``test_bytes`` before them the validation set and
everything before that the training set (90M / 5M / 5M bytes for the real
100,000,000-byte enwik8 with the default 5,000,000).

Each split is written as text: every byte becomes its decimal value (``"60"``
for ``<``, ``"195"`` for the first byte of ``é`` in UTF-8, ...), the tokens are
joined by single spaces, and a newline byte is written as a newline character
instead of ``"10"``, so that it ends a line. ``b"a\\nbc"`` becomes
``"97 \\n 98 99"``. fairseq-preprocess then reads one line per newline byte
and ends every line with ``</s>``: in the binarized data ``</s>`` stands for
the newline byte (and, after the last line of a split that does not end with
a newline, for the end of the split). Every other byte is one token, so the
base-2 loss per token that fairseq-eval-lm reports is bits per byte (bpc).

    python scripts/enwik8_bytes.py RAW_FILE OUT_DIR [--test-bytes 5000000]

writes OUT_DIR/train.txt, valid.txt and test.txt.
"""
import argparse
import os
import sys
from typing import BinaryIO, Tuple

import numpy as np

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
        raise ValueError(f"test_bytes must be positive, got {test_bytes}")
    if len(data) <= 2 * test_bytes:
        raise ValueError(f"the input has {len(data):,} bytes: that leaves no training data after "
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


def prepare(raw_path: str, out_dir: str, test_bytes: int = DEFAULT_TEST_BYTES) -> dict:
    """Split raw_path and write out_dir/{train,valid,test}.txt; returns {split: number of bytes}."""
    with open(raw_path, "rb") as f:
        data = f.read()
    splits = dict(zip(("train", "valid", "test"), split_bytes(data, test_bytes)))
    os.makedirs(out_dir, exist_ok=True)
    for name, part in splits.items():
        path = os.path.join(out_dir, name + ".txt")
        with open(path + ".part", "wb") as f:
            write_tokens(part, f)
        os.replace(path + ".part", path)
    return {name: len(part) for name, part in splits.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", help="raw byte file (the unzipped enwik8, or any file)")
    parser.add_argument("out_dir", help="directory for train.txt, valid.txt, test.txt")
    parser.add_argument("--test-bytes", type=int, default=DEFAULT_TEST_BYTES,
                        help=f"bytes of the test set and of the validation set (default {DEFAULT_TEST_BYTES:,})")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.raw):
        print(f"error: no such file: {args.raw}", file=sys.stderr)
        return 1
    try:
        sizes = prepare(args.raw, args.out_dir, args.test_bytes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(sizes.values())
    print(f"{args.raw}: {total:,} bytes" + ("" if total == ENWIK8_SIZE or args.test_bytes != DEFAULT_TEST_BYTES
                                            else f" (the real enwik8 has {ENWIK8_SIZE:,})"))
    for name, size in sizes.items():
        print(f"  {name}: {size:,} bytes -> {os.path.join(args.out_dir, name + '.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
