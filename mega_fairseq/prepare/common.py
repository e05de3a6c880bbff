"""Shared by the data-preparation modules.

* Text is read as UTF-8, strictly: a byte sequence that is not UTF-8 stops the preparation
  with the file and line at fault, unless ``--replace-invalid-utf8`` is given, which replaces
  it by U+FFFD and reports how many were replaced in each file.
* ``check_splits``: every split's input must exist and hold some text.
* ``staged_output``: outputs are written into a staging folder beside the target, which
  takes their place only when everything is written, so a failed run leaves nothing half-made.
* ``binarize``: fairseq-preprocess.
"""
import contextlib
import gzip
import os
import shutil
import uuid
from typing import Dict, Iterable, Iterator, List, Optional

REPLACE_HELP = ("replace byte sequences that are not UTF-8 by U+FFFD (the replacements are counted and "
                "reported) instead of stopping at the first one")
_REPLACEMENT = "\ufffd"


class DataError(ValueError):
    """An input that cannot be prepared; the message names the file (and line)."""


class Replacements:
    """Counts the invalid UTF-8 sequences replaced, per file (``--replace-invalid-utf8``)."""

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.first_lines: Dict[str, int] = {}

    def add(self, path: str, line: int, count: int) -> None:
        self.counts[path] = self.counts.get(path, 0) + count
        self.first_lines.setdefault(path, line)

    def report(self) -> List[str]:
        """One line per file with replacements."""
        return [f"{path}: replaced {count} invalid UTF-8 sequence(s) by U+FFFD (the first on line "
                f"{self.first_lines[path]})" for path, count in self.counts.items()]


def decode(data: bytes, path: str, first_line: int = 1, replacements: Optional[Replacements] = None) -> str:
    """``data`` (the text of ``path`` from line ``first_line`` on) decoded as UTF-8; invalid bytes
    raise a DataError naming the file and line, or are replaced and counted into ``replacements``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        if replacements is None:
            column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
            raise DataError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at byte {column} "
                            f"of the line): convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or use "
                            f"--replace-invalid-utf8") from None
        text = data.decode("utf-8", errors="replace")
        replacements.add(path, line, text.count(_REPLACEMENT) - data.count(_REPLACEMENT.encode()))
        return text


def open_bytes(path: str):
    """A plain or gzip-compressed (.gz) file, opened for reading bytes."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_lines(path: str, replacements: Optional[Replacements] = None) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or .gz) without their newline. Only '\\n' ends a line
    (text mode would also split on a stray '\\r' or U+2028 and change the line count)."""
    with open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            yield decode(raw.rstrip(b"\n"), path, number, replacements)


def check_utf8(path: str) -> None:
    """Stop at the first line of the file that is not UTF-8 (a DataError naming file and line)."""
    for _ in iter_lines(path):
        pass


def read_text(path: str, replacements: Optional[Replacements] = None) -> str:
    """The whole of a UTF-8 text file."""
    with open_bytes(path) as f:
        return decode(f.read(), path, 1, replacements)


def has_text(path: str, block: int = 1 << 16) -> bool:
    """Whether the file holds anything but whitespace (reads only up to the first such byte)."""
    with open_bytes(path) as f:
        while True:
            data = f.read(block)
            if not data:
                return False
            if data.strip():
                return True


def check_splits(files: Dict[str, Iterable[str]]) -> None:
    """files: {split: its input files}. Stops, naming them all, when a file is missing or holds no text."""
    paths = [path for split_files in files.values() for path in split_files]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError("missing input file(s): " + ", ".join(missing))
    empty = [path for path in paths if not has_text(path)]
    if empty:
        raise DataError("empty input file(s), no text in: " + ", ".join(empty))


def publish(staging: str, dest: str) -> None:
    """Move the entries of the staging folder into ``dest`` (created if missing), each replacing the
    entry of the same name; other entries of ``dest`` stay."""
    if not os.path.exists(dest):
        os.replace(staging, dest)
        return
    for name in sorted(os.listdir(staging)):
        target, aside = os.path.join(dest, name), os.path.join(staging, f".replaced.{name}")
        if os.path.lexists(target):
            os.replace(target, aside)
        os.replace(os.path.join(staging, name), target)


@contextlib.contextmanager
def staged_output(dest: str) -> Iterator[str]:
    """A new folder beside ``dest`` to write the outputs into. If the block succeeds, its entries are
    published into ``dest``; in any case the staging folder is then removed, so a failure leaves
    ``dest`` as it was."""
    dest = os.path.abspath(dest)
    parent, name = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.partial")
    os.makedirs(staging)
    try:
        yield staging
        publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def binarize(args: List[str]) -> None:
    """fairseq-preprocess with these command-line arguments (in this process: fairseq is imported already)."""
    from fairseq import options
    from fairseq_cli import preprocess

    preprocess.main(options.get_preprocessing_parser().parse_args(args))
