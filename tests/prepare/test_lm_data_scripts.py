"""Tests of the language-model data scripts on small synthetic inputs.

scripts/prepare-wikitext-103.sh and scripts/prepare-enwik8.sh in --local-raw mode
(binarized splits, token counts, the enwik8 split and its byte-token round trip),
their error paths (no network, missing, empty or non-UTF-8 input, nothing half-made) and the
byte tokens of mega_fairseq/prepare/language_model.py.
"""
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fairseq")
from fairseq.data import Dictionary, data_utils  # noqa: E402

from mega_fairseq.prepare import language_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WIKITEXT = REPO / "scripts" / "prepare-wikitext-103.sh"
ENWIK8 = REPO / "scripts" / "prepare-enwik8.sh"
SPLITS = ("train", "valid", "test")
TEST_BYTES = 5000


def run_script(script, *args, env_extra=None, timeout=120):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHON"] = sys.executable
    env.update(env_extra or {})
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def load_split(data_bin, split):
    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data_bin / split), dictionary)
    assert dataset is not None, f"no binarized {split} in {data_bin}"
    return dictionary, dataset


def assert_data_bin(data_bin):
    assert (data_bin / "dict.txt").is_file()
    for split in SPLITS:
        for ext in ("bin", "idx"):
            assert (data_bin / f"{split}.{ext}").is_file(), f"{split}.{ext} missing"


# ---------------------------------------------------------------------------
# WikiText-103
# ---------------------------------------------------------------------------
WORDS = ["the", "of", "and", "in", "was", "<unk>", "game", "river", "@-@", "@,@", "1", "000", "Valkyria",
         "Chronicles", "café", "Zürich", "season", "\"", "(", ")", ",", ".", "album", "song", "Ω"]


def wiki_lines(rng, paragraphs):
    """Lines in the layout of the WikiText files: headings, blank lines, paragraphs with a leading space."""
    lines = []
    for p in range(paragraphs):
        if p % 4 == 0:
            lines += [" = " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) + " = ", " "]
        lines += [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + " ", " "]
        if rng.random() < 0.1:
            lines.append("")  # a truly empty line
    return lines


@pytest.fixture(scope="module")
def wikitext(tmp_path_factory):
    root = tmp_path_factory.mktemp("wikitext")
    raw = root / "raw"
    raw.mkdir()
    rng = random.Random(3)
    for split, paragraphs in zip(SPLITS, (150, 30, 30)):
        (raw / f"wiki.{split}.tokens").write_text("\n".join(wiki_lines(rng, paragraphs)) + "\n", encoding="utf-8")
    out = root / "data-bin"
    result = run_script(WIKITEXT, "--local-raw", raw, "--output", out, "--workers", "2",
                        "--download-dir", root / "dl")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return raw, out


def test_wikitext_binarized_splits(wikitext):
    assert_data_bin(wikitext[1])


def test_wikitext_token_counts_are_words_plus_one_eos_per_line(wikitext):
    raw, out = wikitext
    for split in SPLITS:
        lines = (raw / f"wiki.{split}.tokens").read_text(encoding="utf-8").split("\n")[:-1]
        dictionary, dataset = load_split(out, split)
        assert len(dataset) == len(lines)
        assert [int(n) for n in dataset.sizes] == [len(line.split()) + 1 for line in lines]
        assert int(dataset.sizes.sum()) == sum(len(line.split()) for line in lines) + len(lines)
        # and the tokens are the words
        for index in (0, 2, len(lines) - 2):
            assert dictionary.string(dataset[index][:-1]) == " ".join(lines[index].split())
            assert int(dataset[index][-1]) == dictionary.eos()


# ---------------------------------------------------------------------------
# enwik8
# ---------------------------------------------------------------------------
def synthetic_bytes(size=30000, seed=7):
    """Text-like bytes with newlines (also blank lines), UTF-8 letters, \\r, NUL and every byte value in
    the training part (so valid/test have no <unk>); the validation part ends with a newline, the test
    part does not."""
    rng = random.Random(seed)
    pieces = []
    every_byte = list(range(256))
    rng.shuffle(every_byte)
    pieces.append(bytes(every_byte))
    words = [b"<page>", b"the", b"Wiki", "café".encode(), "中文".encode(), b"[[link]]", b"\r\n", b"\x00", b"\xff\xfe"]
    while sum(map(len, pieces)) < size:
        pieces.append(rng.choice(words))
        pieces.append(rng.choice([b" ", b" ", b" ", b"\n", b"\n\n"]))
    data = bytearray(b"".join(pieces)[:size])
    data[-TEST_BYTES - 1] = ord("\n")
    data[-1] = ord("x")
    return bytes(data)


def awd_lstm_format(part: bytes) -> bytes:
    """The text of the transformer-xl / awd-lstm-lm split files, one byte at a time."""
    tokens = []
    for value in part:
        tokens.append("\n" if value == 10 else str(value))
    return " ".join(tokens).encode("ascii")


@pytest.fixture(scope="module")
def enwik8(tmp_path_factory):
    root = tmp_path_factory.mktemp("enwik8")
    raw = root / "enwik8"
    data = synthetic_bytes()
    raw.write_bytes(data)
    out = root / "data-bin"
    result = run_script(ENWIK8, "--local-raw", raw, "--output", out, "--workers", "1",
                        "--download-dir", root / "dl", "--test-bytes", TEST_BYTES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return data, root / "dl" / "tokens", out


def test_enwik8_binarized_splits(enwik8):
    assert_data_bin(enwik8[2])


def test_enwik8_split_sizes_and_text_format(enwik8):
    data, work, _ = enwik8
    parts = {"train": data[: -2 * TEST_BYTES], "valid": data[-2 * TEST_BYTES: -TEST_BYTES],
             "test": data[-TEST_BYTES:]}
    assert [len(parts[s]) for s in SPLITS] == [len(data) - 2 * TEST_BYTES, TEST_BYTES, TEST_BYTES]
    for split in SPLITS:
        assert (work / f"{split}.txt").read_bytes() == awd_lstm_format(parts[split])


def test_enwik8_byte_token_round_trip(enwik8):
    data, _, out = enwik8
    slices = {"train": data[: -2 * TEST_BYTES], "valid": data[-2 * TEST_BYTES: -TEST_BYTES],
              "test": data[-TEST_BYTES:]}
    for split in SPLITS:
        dictionary, dataset = load_split(out, split)
        decoded = bytearray()
        for index in range(len(dataset)):
            for token in dataset[index].tolist():
                assert token != dictionary.unk(), f"<unk> in {split}"
                # </s> ends every line: it is the newline byte
                decoded += b"\n" if token == dictionary.eos() else bytes([int(dictionary[token])])
        original = slices[split]
        # the last line of a split ends with </s> too: a newline only if the split ends with one
        if not original.endswith(b"\n"):
            assert decoded.endswith(b"\n")
            decoded = decoded[:-1]
        assert bytes(decoded) == original, split
        # one token per byte, plus the closing </s> of a split that does not end with a newline
        assert int(dataset.sizes.sum()) == len(original) + (not original.endswith(b"\n"))
    assert slices["valid"].endswith(b"\n") and not slices["test"].endswith(b"\n")
    dictionary = Dictionary.load(str(out / "dict.txt"))
    symbols = [dictionary[i] for i in range(dictionary.nspecial, len(dictionary))]
    # the byte values seen in train (fairseq pads the dictionary to a multiple of 8 with madeupwordNNNN)
    assert sorted(int(s) for s in symbols if not s.startswith("madeupword")) == sorted(set(slices["train"]) - {10})


@pytest.mark.parametrize("data", [b"", b"\n", b"a", b"a\nbc", b"\n\nx\n", bytes(range(256)) * 2],
                         ids=["empty", "newline", "one", "two-lines", "blank-lines", "all-bytes"])
def test_enwik8_byte_tokens(data, tmp_path):
    assert language_model.bytes_to_tokens(data) == awd_lstm_format(data)
    assert language_model.tokens_to_bytes(language_model.bytes_to_tokens(data)) == data
    with open(tmp_path / "x.txt", "wb") as f:  # streamed in chunks of 7 bytes
        language_model.write_tokens(data, f, chunk_bytes=7)
    assert (tmp_path / "x.txt").read_bytes() == awd_lstm_format(data)


def test_enwik8_split_needs_training_bytes():
    assert [len(p) for p in language_model.split_bytes(bytes(25), 10)] == [5, 10, 10]
    with pytest.raises(ValueError, match="no training data"):
        language_model.split_bytes(bytes(20), 10)


# ---------------------------------------------------------------------------
# errors and help
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script, env_var, zip_name", [(WIKITEXT, "WIKITEXT103_URL", "wikitext-103-v1.zip"),
                                                       (ENWIK8, "ENWIK8_URL", "enwik8.zip")],
                         ids=["wikitext-103", "enwik8"])
def test_download_without_network_fails_fast(script, env_var, zip_name, tmp_path):
    url = "http://127.0.0.1:9/x.zip"
    start = time.monotonic()
    result = run_script(script, "--download-dir", tmp_path / "dl", "--output", tmp_path / "out",
                        env_extra={env_var: url}, timeout=60)
    assert time.monotonic() - start < 20
    assert result.returncode != 0
    assert "cannot download" in result.stderr and url in result.stderr
    assert zip_name in result.stderr and str(tmp_path / "dl") in result.stderr and "--local-raw" in result.stderr
    assert not (tmp_path / "out").exists()


def test_wikitext_missing_local_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "test"):
        (raw / f"wiki.{split}.tokens").write_text(" a b \n")
    result = run_script(WIKITEXT, "--local-raw", raw, "--output", tmp_path / "out")
    assert result.returncode != 0
    assert str(raw / "wiki.valid.tokens") in result.stderr


def write_wikitext(raw, valid=b" a b \n c \n"):
    raw.mkdir()
    for split in SPLITS:
        (raw / f"wiki.{split}.tokens").write_bytes(valid if split == "valid" else " a b \n = c = \n".encode())


def test_wikitext_text_that_is_not_utf8_stops_with_file_and_line(tmp_path, capsys):
    write_wikitext(tmp_path / "raw", valid=b" a b \n caf\xe9 \n")
    assert language_model.main(["wikitext-103", str(tmp_path / "raw"), str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'raw' / 'wiki.valid.tokens'}: line 2: not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["raw"]


def test_wikitext_replace_invalid_utf8_reports_the_count(tmp_path, capsys):
    write_wikitext(tmp_path / "raw", valid=b" a b \n caf\xe9 \xff \n")
    command = ["wikitext-103", str(tmp_path / "raw"), str(tmp_path / "out"), "--replace-invalid-utf8"]
    assert language_model.main(command) == 0
    assert "wiki.valid.tokens: replaced 2 invalid UTF-8 sequence(s) by U+FFFD (the first on line 2)" in \
        capsys.readouterr().out
    dictionary, dataset = load_split(tmp_path / "out", "valid")
    assert dictionary.string(dataset[1]) == "<unk> <unk>"  # caf\ufffd and \ufffd are not in train
    assert sorted(os.listdir(tmp_path)) == ["out", "raw"]


def test_wikitext_empty_split_is_refused(tmp_path, capsys):
    write_wikitext(tmp_path / "raw")
    (tmp_path / "raw" / "wiki.train.tokens").write_text("")
    assert language_model.main(["wikitext-103", str(tmp_path / "raw"), str(tmp_path / "out")]) == 1
    assert f"no text in: {tmp_path / 'raw' / 'wiki.train.tokens'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_enwik8_missing_local_file(tmp_path):
    result = run_script(ENWIK8, "--local-raw", tmp_path / "nothing" / "enwik8", "--output", tmp_path / "out")
    assert result.returncode != 0
    assert str(tmp_path / "nothing" / "enwik8") in result.stderr


def test_enwik8_too_small_for_test_bytes(tmp_path, capsys):
    (tmp_path / "small").write_bytes(b"abc\n" * 100)
    command = ["enwik8", str(tmp_path / "small"), str(tmp_path / "tokens"), str(tmp_path / "out"), "--test-bytes", "200"]
    assert language_model.main(command) == 1
    assert "no training data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help():
    wikitext = run_script(WIKITEXT, "--help")
    assert wikitext.returncode == 0 and "--local-raw DIR" in wikitext.stdout and "WIKITEXT103_URL" in wikitext.stdout
    enwik8 = run_script(ENWIK8, "--help")
    assert enwik8.returncode == 0 and "--test-bytes N" in enwik8.stdout and "ENWIK8_URL" in enwik8.stdout
    assert "bits per byte" in enwik8.stdout
