"""benchmarks/e2e/repeat_corpus.py on a binarized toy corpus: the training split of N copies item for item, fairseq's
translation task loading it, every other file unchanged, and its errors."""
import filecmp
import os
import random
import subprocess
import sys

import pytest
import torch
from fairseq import options, tasks
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_helpers import REPO
from toy_corpus import binarize

SCRIPT = os.path.join(REPO, "benchmarks", "e2e", "repeat_corpus.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
repeat_corpus = pytest.importorskip("repeat_corpus")


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    sizes = {"train": random.randint(20, 40), "valid": 7, "test": 5}
    return binarize(tmp_path_factory.mktemp("corpus"), sizes, seed=random.randrange(1000)), sizes


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_training_split_is_repeated_item_for_item(data_bin, tmp_path):
    data, sizes = data_bin
    out, times = tmp_path / "repeated", random.randint(2, 4)
    result = run(data, out, "--times", times)
    assert result.returncode == 0, result.stderr
    assert f"'train' repeated {times} times" in result.stdout
    for side in ("en", "de"):
        original = MMapIndexedDataset(str(data / f"train.en-de.{side}"))
        repeated = MMapIndexedDataset(str(out / f"train.en-de.{side}"))
        assert len(original) == sizes["train"] and len(repeated) == times * len(original)
        assert list(repeated.sizes) == list(original.sizes) * times
        for index in range(len(repeated)):
            assert torch.equal(repeated[index], original[index % len(original)])
    kept = [name for name in os.listdir(data) if not name.startswith("train.")]
    assert kept and all(filecmp.cmp(data / name, out / name, shallow=False) for name in kept if (data / name).is_file())
    assert sorted(os.listdir(out)) == sorted(os.listdir(data))


def test_fairseqs_translation_task_loads_the_repeated_split(data_bin, tmp_path):
    data, sizes = data_bin
    out = tmp_path / "repeated"
    repeat_corpus.repeat_corpus(str(data), str(out), 2)
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=[
        str(out), "--task", "translation", "--arch", "transformer", "--source-lang", "en", "--target-lang", "de"])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("train")
    task.load_dataset("valid")
    assert len(task.dataset("train")) == 2 * sizes["train"] and len(task.dataset("valid")) == sizes["valid"]


@pytest.mark.parametrize("case, message", [
    ("zero copies", "--times 0: give a positive number of copies"),
    ("same folder", "OUT_DIR is DATA_BIN"),
    ("folder not empty", "exists and is not empty"),
    ("no such split", "has no binarized 'dev' split (dev.*.idx)"),
    ("not mmap", "is not in fairseq's mmap format"),
])
def test_bad_input_is_named(data_bin, tmp_path, case, message):
    data, _ = data_bin
    out, times, split = tmp_path / "out", 2, "train"
    if case == "zero copies":
        times = 0
    elif case == "same folder":
        out = data
    elif case == "folder not empty":
        out.mkdir()
        (out / "something").write_text("")
    elif case == "no such split":
        split = "dev"
    elif case == "not mmap":
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "train.en-de.en.idx").write_bytes(b"TNTIDX\x00\x00" + bytes(32))
        (foreign / "train.en-de.en.bin").write_bytes(bytes(8))
        data = foreign
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        repeat_corpus.repeat_corpus(str(data), str(out), times, split)
