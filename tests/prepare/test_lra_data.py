"""scripts/prepare-lra.py (mega_fairseq/data/lra.py) on small local inputs: binarized text read back,
images against Pillow and torch's random_split as references, and the errors for malformed inputs."""
import io
import os
import pickle
import runpy
import sys
import tarfile

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, data_utils
from PIL import Image

from fairseq_helpers import REPO
from mega_fairseq.prepare import listops, lra
from mega_fairseq.prepare.common import Replacements

SCRIPT = os.path.join(REPO, "scripts", "prepare-lra.py")


def read_binarized(directory, split, dictionary=None):
    """Token strings of every sequence of a binarized split (without the end-of-sentence token)."""
    dictionary = dictionary or Dictionary.load(os.path.join(directory, "dict.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(directory, split), dictionary)
    rows = []
    for i in range(len(dataset)):
        ids = dataset[i].tolist()
        assert ids[-1] == dictionary.eos()
        rows.append([dictionary[t] for t in ids[:-1]])
    return rows


def prepare_main(argv):
    """Run the script's main() in this process (the package is already imported)."""
    return runpy.run_path(SCRIPT, run_name="prepare_lra")["main"](argv)


# ---------------------------------------------------------------------------------------------- text

def test_listops_round_trip(tmp_path):
    raw = tmp_path / "raw"
    listops.write_splits(str(raw), {"train": 20, "valid": 5, "test": 5}, seed=2, max_depth=4, max_args=4,
                         min_length=6, max_length=40)
    prepare_main(["listops", "--input", str(raw), "--out", str(tmp_path / "out")])
    labels = Dictionary.load(str(tmp_path / "out" / "label-bin" / "dict.txt"))
    assert [labels[labels.nspecial + k] for k in range(10)] == [str(k) for k in range(10)]  # class k = label k
    for split, name in listops.LRA_FILE_NAMES.items():
        rows = listops.read_tsv(str(raw / name))
        assert read_binarized(tmp_path / "out" / "src-bin", split) == [listops.source_tokens(s) for _, s, _ in rows]
        assert read_binarized(tmp_path / "out" / "label-bin", split) == [[t] for _, _, t in rows]


@pytest.mark.parametrize("line, message", [
    ("( ( [MAX 3 ) 4 ) ] )\t11", r"line 4: unknown label '11' \(expected 0..9\)"),
    ("( ( [MAX 3 ) x ) ] )\t4", r"line 4: unknown token 'x'"),
    ("( ( [MAX 3 ) 4 ) ] )", r"line 4 has 1 tab-separated fields"),
])
def test_listops_bad_lines_name_file_and_line(tmp_path, line, message):
    raw = tmp_path / "raw"
    listops.write_splits(str(raw), {"train": 2, "valid": 2, "test": 2}, seed=2, max_depth=4, max_args=4,
                         min_length=6, max_length=40)
    with open(raw / "basic_val.tsv", "a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=r"basic_val\.tsv: " + message):
        lra.prepare_listops(str(raw), str(tmp_path / "out"))


def test_script_reports_missing_input(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prepare-lra.py", "listops", "--input", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith("prepare-lra.py: error: missing ListOps file: ") and "basic_train.tsv" in message


def test_imdb_bytes_truncation_and_labels(tmp_path):
    texts = {("train", "neg"): ["bad film", "awful"], ("train", "pos"): ["great fun é", "x" * 50],
             ("test", "neg"): ["meh"], ("test", "pos"): ["superb"]}
    for (part, polarity), reviews in texts.items():
        (tmp_path / "aclImdb" / part / polarity).mkdir(parents=True)
        for i, review in enumerate(reviews):
            (tmp_path / "aclImdb" / part / polarity / f"{i}_7.txt").write_text(review, encoding="utf-8")
    (tmp_path / "aclImdb" / "train" / "unsup").mkdir()  # ignored
    counts = lra.prepare_imdb(str(tmp_path / "aclImdb"), str(tmp_path / "out"), max_length=20)
    assert counts == {"train": 4, "valid": 2, "test": 2}
    train = read_binarized(tmp_path / "out" / "src-bin", "train")
    assert bytes(int(t) for t in train[2]).decode() == "great fun é"  # byte level: é is two bytes
    assert len(train[2]) == len("great fun é".encode())
    assert len(train[3]) == 20  # truncated
    assert read_binarized(tmp_path / "out" / "label-bin", "train") == [["0"], ["0"], ["1"], ["1"]]
    assert read_binarized(tmp_path / "out" / "src-bin", "valid") == read_binarized(tmp_path / "out" / "src-bin", "test")
    os.rename(tmp_path / "aclImdb" / "test" / "pos", tmp_path / "aclImdb" / "test" / "positive")
    with pytest.raises(FileNotFoundError, match=r"missing IMDB folder .*test.pos"):
        lra.prepare_imdb(str(tmp_path / "aclImdb"), str(tmp_path / "out2"))


def write_aan(folder, rows_by_split):
    folder.mkdir(exist_ok=True)
    for split, name in lra.AAN_FILE_NAMES.items():
        (folder / name).write_text("".join("\t".join(row) + "\n" for row in rows_by_split[split]), encoding="utf-8")


def test_aan_pairs_and_errors(tmp_path):
    rows = [("1.0", "a", "b", "first doc", "second doc"), ("0", "c", "d", "x", "y")]
    write_aan(tmp_path / "raw", {"train": rows, "valid": rows[:1], "test": rows[1:]})
    lra.prepare_aan(str(tmp_path / "raw"), str(tmp_path / "out"))
    first = read_binarized(tmp_path / "out" / "src-bin", "train")
    second = read_binarized(tmp_path / "out" / "src1-bin", "train", Dictionary.load(
        str(tmp_path / "out" / "src-bin" / "dict.txt")))
    assert [bytes(int(t) for t in r).decode() for r in first] == ["first doc", "x"]
    assert [bytes(int(t) for t in r).decode() for r in second] == ["second doc", "y"]
    assert read_binarized(tmp_path / "out" / "label-bin", "train") == [["1"], ["0"]]
    write_aan(tmp_path / "raw", {"train": rows, "valid": [("2", "a", "b", "c", "d")], "test": rows})
    with pytest.raises(ValueError, match=r"new_aan_pairs\.eval\.tsv: line 1: unknown label '2'"):
        lra.prepare_aan(str(tmp_path / "raw"), str(tmp_path / "out"))
    write_aan(tmp_path / "raw", {"train": rows, "valid": rows, "test": [("1", "a", "b", "c")]})
    with pytest.raises(ValueError, match=r"new_aan_pairs\.test\.tsv: line 1 has 4 tab-separated fields"):
        lra.prepare_aan(str(tmp_path / "raw"), str(tmp_path / "out"))



def test_imdb_text_that_is_not_utf8_is_named_or_replaced_and_counted(tmp_path):
    for part in ("train", "test"):
        for polarity in ("neg", "pos"):
            (tmp_path / "aclImdb" / part / polarity).mkdir(parents=True)
            (tmp_path / "aclImdb" / part / polarity / "0_1.txt").write_text("fine\nfilm", encoding="utf-8")
    (tmp_path / "aclImdb" / "train" / "pos" / "1_9.txt").write_bytes(b"Herr\nM\xfcller \xe9")
    with pytest.raises(ValueError, match=r"pos.1_9\.txt: line 2: not UTF-8 text \(byte 0xfc at byte 2 of the line\)"
                                         r".*--replace-invalid-utf8"):
        lra.prepare_imdb(str(tmp_path / "aclImdb"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    replacements = Replacements()
    counts = lra.prepare_imdb(str(tmp_path / "aclImdb"), str(tmp_path / "out"), replacements=replacements)
    assert counts == {"train": 3, "valid": 2, "test": 2}
    assert replacements.report() == [f"{tmp_path / 'aclImdb' / 'train' / 'pos' / '1_9.txt'}: replaced 2 invalid "
                                     f"UTF-8 sequence(s) by U+FFFD (the first on line 2)"]
    train = read_binarized(tmp_path / "out" / "src-bin", "train")
    assert bytes(int(t) for t in train[2]).decode() == "Herr\nM\ufffdller \ufffd"


def test_aan_line_that_is_not_utf8_is_named(tmp_path):
    rows = [("1", "a", "b", "first doc", "second doc")]
    write_aan(tmp_path / "raw", {"train": rows, "valid": rows, "test": rows})
    with open(tmp_path / "raw" / "new_aan_pairs.train.tsv", "ab") as f:
        f.write(b"0\tc\td\tna\xefve\ty\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs\.train\.tsv: line 2: not UTF-8 text"):
        lra.prepare_aan(str(tmp_path / "raw"), str(tmp_path / "out"))


def test_empty_split_is_refused_and_the_output_left_as_it_was(tmp_path):
    raw = tmp_path / "raw"
    listops.write_splits(str(raw), {"train": 4, "valid": 2, "test": 2}, seed=2, max_depth=4, max_args=4,
                         min_length=6, max_length=40)
    out = tmp_path / "out"
    lra.prepare_listops(str(raw), str(out))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    (raw / "basic_val.tsv").write_text("Source\tTarget\n")
    with pytest.raises(ValueError, match=r"no examples in the valid split: .*basic_val\.tsv"):
        lra.prepare_listops(str(raw), str(out))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["out", "raw"]  # no staging folder left

# ---------------------------------------------------------------------------------------------- images

def cifar_images(count, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count)


def write_cifar(folder, kind, batches):
    """CIFAR-10's binary (label byte + R, G, B planes) or python (pickled dict) batch files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        if kind == "binary":
            records = np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
        else:
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": planes, b"labels": [int(x) for x in labels]}, f, protocol=2)


def cifar_batches():
    return {**{f"data_batch_{k}": cifar_images(6, k) for k in range(1, 6)}, "test_batch": cifar_images(4, 9)}


@pytest.mark.parametrize("kind, packed", [("binary", False), ("python", True)])
def test_cifar10_grayscale_and_split(tmp_path, kind, packed):
    batches = cifar_batches()
    folder = tmp_path / f"cifar-10-batches-{'bin' if kind == 'binary' else 'py'}"
    write_cifar(folder, kind, batches)
    source = tmp_path
    if packed:
        source = tmp_path / "cifar.tar.gz"
        with tarfile.open(source, "w:gz") as archive:
            archive.add(folder, arcname=folder.name)
    counts = lra.prepare_cifar10(str(source), str(tmp_path / "out"))
    assert counts == {"train": 27, "valid": 3, "test": 4}
    train_images = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    train_labels = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    # references: Pillow's grayscale conversion (torchvision's Grayscale) and torch's random_split
    gray = np.stack([np.asarray(Image.fromarray(image, "RGB").convert("L")).reshape(-1) for image in train_images])
    train_subset, valid_subset = torch.utils.data.random_split(range(30), (27, 3),
                                                               generator=torch.Generator().manual_seed(42))
    for split, rows in (("train", list(train_subset)), ("valid", list(valid_subset))):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "input" / f"{split}.npy"), gray[rows])
        labels = (tmp_path / "out" / "label" / f"{split}.label").read_text().split()
        assert labels == [str(train_labels[r]) for r in rows]
    test_gray = [np.asarray(Image.fromarray(i, "RGB").convert("L")).reshape(-1) for i in batches["test_batch"][0]]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "input" / "test.npy"), np.stack(test_gray))


def test_cifar10_wrong_image_size_and_label(tmp_path):
    batches = cifar_batches()
    write_cifar(tmp_path / "bin", "binary", batches)
    with open(tmp_path / "bin" / "data_batch_3.bin", "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(ValueError, match=r"data_batch_3\.bin: .* not a whole number of 3073-byte .*wrong image size"):
        lra.prepare_cifar10(str(tmp_path / "bin"), str(tmp_path / "out"))
    images, labels = batches["test_batch"]
    batches["test_batch"] = (images, np.array([1, 2, 12, 3]))
    write_cifar(tmp_path / "bin2", "binary", batches)
    with pytest.raises(ValueError, match=r"test_batch\.bin: image 2 has unknown label 12"):
        lra.prepare_cifar10(str(tmp_path / "bin2"), str(tmp_path / "out"))
    write_cifar(tmp_path / "py", "python", cifar_batches())
    with open(tmp_path / "py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((6, 1024), np.uint8), b"labels": [0] * 6}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2: images of shape \(1024,\).*wrong image size"):
        lra.prepare_cifar10(str(tmp_path / "py"), str(tmp_path / "out"))
    with open(tmp_path / "py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": io.BytesIO(b"x"), b"labels": []}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        lra.prepare_cifar10(str(tmp_path / "py"), str(tmp_path / "out"))


def write_pathfinder(root, count, resolution, difficulty="curv_contour_length_14", bad_size_index=None):
    """A Pathfinder-like release: metadata/<n>.npy lines 'imgs/<n> sample_<i>.png 0 <label> ...' and PNGs."""
    rng = np.random.default_rng(3)
    images, labels = [], []
    (root / difficulty / "metadata").mkdir(parents=True)
    for block in range(2):
        (root / difficulty / "imgs" / str(block)).mkdir(parents=True)
        lines = []
        for i in range(count // 2):
            side = resolution + 1 if bad_size_index == block * (count // 2) + i else resolution
            image = rng.integers(0, 256, (side, side), dtype=np.uint8)
            mode = "RGB" if i % 3 == 0 else "L"  # RGB files are converted to grayscale, as the original
            pil = Image.fromarray(np.repeat(image[..., None], 3, axis=2) if mode == "RGB" else image, mode)
            pil.save(root / difficulty / "imgs" / str(block) / f"sample_{i}.png")
            label = int(rng.integers(0, 2))
            lines.append(f"imgs/{block} sample_{i}.png 0 {label} 14 1.5\n")
            images.append(np.asarray(pil.convert("L")).reshape(-1))
            labels.append(label)
        (root / difficulty / "metadata" / f"{block}.npy").write_text("".join(lines))
    return images, labels


def test_pathfinder_images_labels_and_split(tmp_path):
    images, labels = write_pathfinder(tmp_path / "pathfinder32", 20, 8)
    counts = lra.prepare_pathfinder(str(tmp_path / "pathfinder32"), str(tmp_path / "out"), resolution=8)
    assert counts == {"train": 16, "valid": 2, "test": 2}
    subsets = torch.utils.data.random_split(range(20), (16, 2, 2), generator=torch.Generator().manual_seed(42))
    for split, subset in zip(("train", "valid", "test"), subsets):
        rows = list(subset)
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "input" / f"{split}.npy"),
                                      np.stack([images[r] for r in rows]))
        assert (tmp_path / "out" / "label" / f"{split}.label").read_text().split() == [str(labels[r]) for r in rows]


def test_pathfinder_wrong_size_and_bad_label(tmp_path):
    write_pathfinder(tmp_path / "a", 10, 8, bad_size_index=6)
    with pytest.raises(ValueError, match=r"imgs.1.sample_1\.png: image of 9x9 pixels, expected 8x8 .*wrong image size"):
        lra.prepare_pathfinder(str(tmp_path / "a"), str(tmp_path / "out"), resolution=8)
    write_pathfinder(tmp_path / "b", 10, 8)
    (tmp_path / "b" / "curv_contour_length_14" / "imgs" / "0" / "sample_0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"sample_0\.png: cannot read the image"):
        lra.prepare_pathfinder(str(tmp_path / "b"), str(tmp_path / "out"), resolution=8)
    metadata = tmp_path / "b" / "curv_contour_length_14" / "metadata" / "1.npy"
    metadata.write_text(metadata.read_text().replace(" 0 1 14", " 0 7 14").replace(" 0 0 14", " 0 7 14"))
    with pytest.raises(ValueError, match=r"metadata.1\.npy: line 1: unknown label '7'"):
        lra.prepare_pathfinder(str(tmp_path / "b"), str(tmp_path / "out"), resolution=8)
    with pytest.raises(FileNotFoundError, match="missing Pathfinder metadata folder"):
        lra.prepare_pathfinder(str(tmp_path / "b"), str(tmp_path / "out"), 8, difficulty="curv_baseline")
