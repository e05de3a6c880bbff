"""Raw Speech Commands: scripts/prepare-speech-commands.py on synthesized WAV files (written with the standard
library's wave module), the speech_commands task (normalization, resampling, dropped samples) and training
through fairseq_cli.train.main."""
import os
import runpy
import sys
import tarfile
import wave

import numpy as np
import pytest
import torch

from fairseq_helpers import REPO
from lra_helpers import TINY_MEGA, run_train, setup
from mega_fairseq.prepare.speech_commands import ALL_CLASSES, ORIGINAL_EPSILON, SUBSET_CLASSES
from mega_fairseq.prepare.speech_commands import prepare_speech_commands

SCRIPT = os.path.join(REPO, "scripts", "prepare-speech-commands.py")
SC = ["--task", "speech_commands"]
SMALL_SC = [*TINY_MEGA, "--chunk-size", "100"]


def write_wav(path, samples, rate=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def synthesize(root, classes, per_class, seed=0, short=True):
    """Clips: a tone whose pitch depends on the class, plus noise; one short clip per class; a background
    noise folder. Returns {relative path: int16 samples} of the full-length clips."""
    rng = np.random.default_rng(seed)
    time = np.arange(16000) / 16000.0
    clips = {}
    for label, name in enumerate(classes):
        for i in range(per_class):
            tone = np.sin(2 * np.pi * (200 + 150 * label) * time) * rng.uniform(2000, 8000)
            samples = np.clip(tone + rng.normal(0, 500, 16000), -32768, 32767).astype(np.int16)
            write_wav(root / name / f"clip{i:03d}_nohash_0.wav", samples)
            clips[f"{name}/clip{i:03d}_nohash_0.wav"] = samples
        if short:
            write_wav(root / name / "short_nohash_0.wav", rng.integers(-100, 100, 12000))
    write_wav(root / "_background_noise_" / "noise.wav", rng.integers(-100, 100, 32000))
    return clips


@pytest.fixture(scope="module")
def sc10(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc10")
    clips = synthesize(root / "archive", SUBSET_CLASSES, per_class=10)
    counts = prepare_speech_commands(str(root / "archive"), str(root / "data"))
    return root, clips, counts


def test_sc10_split_normalization_and_samples(sc10):
    root, clips, counts = sc10
    assert counts == {"train": 70, "valid": 15, "test": 15}  # short clips left out, 70 / 15 / 15 %
    folder = root / "data" / "raw"
    assert (folder / "classes.txt").read_text().split() == list(SUBSET_CLASSES)
    by_content = {samples.tobytes(): path for path, samples in clips.items()}
    seen = []
    for split in ("train", "valid", "test"):
        stored = np.load(folder / f"{split}.npy")
        labels = [int(x) for x in (folder / f"{split}.label").read_text().split()]
        assert stored.dtype == np.int16 and stored.shape == (counts[split], 16000)
        for samples, label in zip(stored, labels):
            path = by_content[samples.tobytes()]  # every stored clip is one of the WAV files, unchanged
            assert path.split("/")[0] == SUBSET_CLASSES[label]
            seen.append(path)
        if split == "train":  # stratified
            assert (np.bincount(labels, minlength=10) == 7).all()
    assert sorted(seen) == sorted(clips)
    train = np.load(folder / "train.npy").astype(np.float64)
    stats = np.load(folder / "normalization.npz")
    np.testing.assert_allclose(stats["mean"], train.mean(axis=0), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(stats["scale"], np.std(train, axis=0, ddof=1) + 1e-5 * 2 ** 30, rtol=1e-6)
    assert float(stats["epsilon"]) == ORIGINAL_EPSILON


def test_archive_gives_the_same_data_as_the_folder(sc10, tmp_path, monkeypatch):
    root, _, _ = sc10
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in sorted(os.listdir(root / "archive")):
            tar.add(root / "archive" / name, arcname=f"./{name}")
    monkeypatch.setattr(sys, "argv", ["prepare-speech-commands.py", "--input", str(archive), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_info.value.code == 0
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.load(tmp_path / "raw" / f"{split}.npy"),
                                      np.load(root / "data" / "raw" / f"{split}.npy"))


def test_all_classes_use_the_archive_lists_and_pad_short_clips(tmp_path):
    clips = synthesize(tmp_path / "archive", ALL_CLASSES, per_class=3, short=False)
    write_wav(tmp_path / "archive" / "bed" / "short_nohash_0.wav", np.full(12000, 7))
    (tmp_path / "archive" / "validation_list.txt").write_text("bed/clip000_nohash_0.wav\nzero/clip001_nohash_0.wav\n")
    (tmp_path / "archive" / "testing_list.txt").write_text("wow/clip002_nohash_0.wav\n")
    counts = prepare_speech_commands(str(tmp_path / "archive"), str(tmp_path / "data"), all_classes=True)
    assert counts == {"train": 35 * 3 + 1 - 3, "valid": 2, "test": 1}
    folder = tmp_path / "data" / "raw_all_classes"
    assert (folder / "classes.txt").read_text().split() == list(ALL_CLASSES)
    valid = np.load(folder / "valid.npy")
    np.testing.assert_array_equal(valid[0], clips["bed/clip000_nohash_0.wav"])
    assert (folder / "valid.label").read_text().split() == ["0", str(ALL_CLASSES.index("zero"))]
    train = np.load(folder / "train.npy")
    padded = [row for row in train if (row[:12000] == 7).all()]
    assert len(padded) == 1 and (padded[0][12000:] == 0).all()  # short clips padded with zeros
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    (tmp_path / "archive" / "testing_list.txt").write_bytes(b"wow/clip002_nohash_0.wav\nM\xfcller\n")
    with pytest.raises(ValueError, match=r"testing_list\.txt: line 2: not UTF-8 text"):
        prepare_speech_commands(str(tmp_path / "archive"), str(tmp_path / "data"), all_classes=True)
    (tmp_path / "archive" / "testing_list.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"the test split\(s\) would be empty"):
        prepare_speech_commands(str(tmp_path / "archive"), str(tmp_path / "data"), all_classes=True)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before  # failed runs change nothing
    assert os.listdir(tmp_path / "data") == ["raw_all_classes"]
    (tmp_path / "archive" / "testing_list.txt").write_text("lamp/clip002_nohash_0.wav\n")
    with pytest.raises(ValueError, match=r"testing_list\.txt: line 1: 'lamp/clip002_nohash_0\.wav' has an unknown "
                                         r"label"):
        prepare_speech_commands(str(tmp_path / "archive"), str(tmp_path / "data"), all_classes=True)
    os.remove(tmp_path / "archive" / "testing_list.txt")
    with pytest.raises(FileNotFoundError, match="missing testing_list.txt"):
        prepare_speech_commands(str(tmp_path / "archive"), str(tmp_path / "data"), all_classes=True)


@pytest.mark.parametrize("kind, message", [
    ("garbage", r"yes.bad\.wav: not a readable WAV file"),
    ("stereo", r"yes.bad\.wav: 2 channel\(s\), 16 bit, 16000 Hz"),
    ("8khz", r"yes.bad\.wav: 1 channel\(s\), 16 bit, 8000 Hz"),
    ("long", r"yes.bad\.wav: 16001 samples, more than one second"),
])
def test_malformed_wav_names_the_file(tmp_path, kind, message):
    synthesize(tmp_path, SUBSET_CLASSES, per_class=1, short=False)
    bad = tmp_path / "yes" / "bad.wav"
    if kind == "garbage":
        bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    elif kind == "stereo":
        write_wav(bad, np.zeros(32000), channels=2)
    elif kind == "8khz":
        write_wav(bad, np.zeros(8000), rate=8000)
    else:
        write_wav(bad, np.zeros(16001))
    with pytest.raises(ValueError, match=message):
        prepare_speech_commands(str(tmp_path), str(tmp_path / "out"))


def test_dataset_normalizes_resamples_and_drops(sc10):
    root, _, _ = sc10
    folder = root / "data" / "raw"
    stats = np.load(folder / "normalization.npz")
    clip = np.load(folder / "valid.npy")[3].astype(np.float64)
    normalized = (clip - stats["mean"]) / stats["scale"]

    task, model = setup(root / "data", [*SC, "--sc-sample-rate", "8000"], "mega_sc_raw", SMALL_SC)
    task.load_dataset("valid")
    item = task.dataset("valid")[3]["source"].numpy()
    np.testing.assert_allclose(item, normalized[::2], rtol=1e-5, atol=1e-5)
    assert item.shape == (8000,) and model.encoder.embed_tokens.weight.shape == (16,)

    task, model = setup(root / "data", [*SC, "--sc-dropped-rate", "50"], "mega_sc_raw", SMALL_SC)
    assert model.encoder.embed_tokens.weight.shape == (2, 16)  # value and "sample present" channels
    task.load_dataset("valid")
    item = task.dataset("valid")[3]["source"].numpy()
    present = item[:, 1]
    assert item.shape == (16000, 2) and present.sum() == 8000 and set(np.unique(present)) == {0.0, 1.0}
    np.testing.assert_allclose(item[:, 0], np.where(present == 1, normalized, 0.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(task.dataset("valid")[3]["source"].numpy(), item)  # the same drops every time
    assert not np.array_equal(task.dataset("valid")[4]["source"].numpy()[:, 1], present)


def test_speech_commands_trains_and_reports_accuracy(sc10, tmp_path):
    root, _, _ = sc10
    accuracy = run_train(root / "data", tmp_path, [*SC, "--sc-sample-rate", "1000"], "mega_sc_raw",
                         [*SMALL_SC, "--encoder-normalize-before"], max_update=4, batch_size=10)
    assert 0.0 <= accuracy <= 100.0
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert state["cfg"]["task"]["sc_sample_rate"] == 1000 and state["cfg"]["model"]["_name"] == "mega_sc_raw"


def test_task_errors(sc10, tmp_path):
    root, _, _ = sc10
    with pytest.raises(ValueError, match="--sc-sample-rate must divide 16000"):
        setup(root / "data", [*SC, "--sc-sample-rate", "7000"], "mega_sc_raw", SMALL_SC)
    with pytest.raises(ValueError, match=r"--sc-dropped-rate is a percentage in \[0, 100\)"):
        setup(root / "data", [*SC, "--sc-dropped-rate", "100"], "mega_sc_raw", SMALL_SC)
    with pytest.raises(FileNotFoundError, match=r"raw_all_classes.classes\.txt: run .* --all-classes"):
        setup(root / "data", [*SC, "--sc-all-classes"], "mega_sc_raw", SMALL_SC)
    task, _ = setup(root / "data", SC, "mega_sc_raw", [*SMALL_SC, "--max-positions", "8000"])
    with pytest.raises(ValueError, match=r"every clip of .*raw.valid\.npy \(at --sc-sample-rate 16000\) has 16000 "
                                         r"positions, more than --max-positions 8000"):
        task.load_dataset("valid")
    data = tmp_path / "data"
    os.makedirs(data / "raw")
    for name in ("classes.txt", "normalization.npz", "valid.npy"):
        os.symlink(root / "data" / "raw" / name, data / "raw" / name)
    labels = (root / "data" / "raw" / "valid.label").read_text().split()
    (data / "raw" / "valid.label").write_text("\n".join(labels[:5] + ["10"] + labels[6:]) + "\n")
    task, _ = setup(data, SC, "mega_sc_raw", SMALL_SC)
    with pytest.raises(ValueError, match=r"valid\.label: line 6: unknown label 10 \(classes\.txt lists 10 classes\)"):
        task.load_dataset("valid")


def test_too_few_clips_to_split_is_a_clear_error(tmp_path):
    synthesize(tmp_path, SUBSET_CLASSES, per_class=2, short=False)
    with pytest.raises(ValueError, match=r"cannot split the clips 70 / 15 / 15 % by class"):
        prepare_speech_commands(str(tmp_path), str(tmp_path / "out"))
