"""mega_fairseq/prepare/common.py: UTF-8 errors naming file and line, counted replacements, missing and
empty splits, and staged outputs that appear whole or not at all."""
import gzip
import os
from pathlib import Path

import pytest

from mega_fairseq.prepare.common import (DataError, Replacements, check_splits, iter_lines, read_text,
                                         staged_output)


def test_text_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "valid.de.gz"
    with gzip.open(path, "wb") as f:
        f.write("Grüße\n".encode() + b"Herr M\xfcller\n")
    with pytest.raises(DataError, match=rf"{path}: line 2: not UTF-8 text \(byte 0xfc at byte 7 of the line\).*iconv"
                                        r".*--replace-invalid-utf8"):
        list(iter_lines(str(path)))
    with pytest.raises(DataError, match=rf"{path}: line 2:"):
        read_text(str(path))


def test_replacements_are_counted_per_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"ok \xef\xbf\xbd\n\xff\xfe x \xe9\nend")  # a genuine U+FFFD is not counted
    replacements = Replacements()
    assert list(iter_lines(str(path), replacements)) == ["ok \ufffd", "\ufffd\ufffd x \ufffd", "end"]
    assert replacements.report() == [f"{path}: replaced 3 invalid UTF-8 sequence(s) by U+FFFD (the first on line 2)"]


def test_missing_and_empty_splits_are_refused(tmp_path):
    (tmp_path / "train.en").write_text("a b\n")
    (tmp_path / "valid.en").write_text(" \n\n")
    with pytest.raises(DataError, match=r"missing input file\(s\): .*test\.en"):
        check_splits({"train": [str(tmp_path / "train.en")], "test": [str(tmp_path / "test.en")]})
    with pytest.raises(DataError, match=r"empty input file\(s\), no text in: .*valid\.en"):
        check_splits({"train": [str(tmp_path / "train.en")], "valid": [str(tmp_path / "valid.en")]})
    check_splits({"train": [str(tmp_path / "train.en")]})


def test_staged_output_replaces_its_entries_only_when_complete(tmp_path):
    dest = tmp_path / "out"
    with staged_output(str(dest)) as staging:
        assert not dest.exists()
        Path(staging, "dict.txt").write_text("new\n")
    assert (dest / "dict.txt").read_text() == "new\n"
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        with staged_output(str(dest)) as staging:
            Path(staging, "dict.txt").write_text("half")
            raise DataError("bad input")
    assert (dest / "dict.txt").read_text() == "new\n"
    with staged_output(str(dest)) as staging:
        Path(staging, "raw").mkdir()
        Path(staging, "dict.txt").write_text("newer\n")
    assert (dest / "dict.txt").read_text() == "newer\n" and (dest / "notes.txt").read_text() == "mine"
    assert (dest / "raw").is_dir() and os.listdir(tmp_path) == ["out"]
