"""Turn the Speech Commands v0.02 archive into the data folder of the ``speech_commands`` task.

As the original processing (facebookresearch/mega, adapted from S4 / CKConv):

* SC10 (``raw/``): the 10 words yes, no, up, down, left, right, on, off, stop, go; clips
  shorter than one second are left out; stratified 70 / 15 / 15 % split
  (``sklearn.model_selection.train_test_split``, random states 0 then 1), files in
  class order then name order.
* all 35 words (``raw_all_classes/``, ``all_classes=True``): short clips are padded with
  zeros to 16000 samples; the archive's validation_list.txt / testing_list.txt split.
* normalization per time step with the training split's mean and (unbiased) standard
  deviation, ``(x - mean[t]) / (std[t] + epsilon)``. The original reads samples as
  int16 / 2^15 (torchaudio) and divides by 2^15 again before adding its epsilon 1e-5;
  in int16 units that epsilon is 1e-5 * 2^30 (the default here), which keeps its
  inputs' scale exactly.

Written per split: ``{train,valid,test}.npy`` (int16 (clips, 16000)), ``{split}.label``;
and ``classes.txt``, ``normalization.npz`` (``mean``, ``scale`` = std + epsilon).
WAV files are read with the standard library's ``wave`` (16 kHz, mono, 16 bit). A malformed WAV
file, a split list that is not UTF-8 or names unknown files, and an empty split stop with a message
naming the file; the output folder is written through a staging folder, so a failed run leaves it
as it was. Entry point: ``scripts/prepare-speech-commands.py`` (``python -m
mega_fairseq.prepare.speech_commands``)::

    prepare-speech-commands.py --input speech_commands_v0.02.tar.gz --out data/speech_commands
    prepare-speech-commands.py --input DIR --out data/speech_commands --all-classes   # 35 classes

``--input`` is the archive (http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz) or its
extracted folder. Needs numpy and scikit-learn.
"""
import argparse
import io
import os
import struct
import sys
import tarfile
import time
import wave
from typing import Dict, List, Tuple

import numpy as np

from .common import DataError, decode, staged_output

SAMPLE_RATE = 16000
CLIP_LENGTH = 16000
SUBSET_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# the original's order of the 35 classes (label k is the k-th)
ALL_CLASSES = ("bed", "cat", "down", "five", "forward", "go", "house", "left", "marvin", "no", "on", "right",
               "sheila", "tree", "up", "visual", "yes", "backward", "bird", "dog", "eight", "follow", "four", "happy",
               "learn", "nine", "off", "one", "seven", "six", "stop", "three", "two", "wow", "zero")
ORIGINAL_EPSILON = 1e-5 * 2 ** 30


def decode_wav(data: bytes, name: str) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV file -> int16 samples; anything else is an error naming the file."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, RuntimeError, struct.error) as error:  # RuntimeError: a truncated chunk
        raise DataError(f"{name}: not a readable WAV file ({type(error).__name__}: {error})") from None
    if (channels, width, rate) != (1, 2, SAMPLE_RATE):
        raise DataError(f"{name}: {channels} channel(s), {8 * width} bit, {rate} Hz; Speech Commands clips are "
                         f"mono 16-bit {SAMPLE_RATE} Hz")
    if len(frames) % 2:
        raise DataError(f"{name}: truncated WAV data ({len(frames)} bytes of 16-bit samples)")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    if samples.size > CLIP_LENGTH:
        raise DataError(f"{name}: {samples.size} samples, more than one second ({CLIP_LENGTH})")
    return samples


def read_archive(path: str, classes) -> Tuple[Dict[str, List[Tuple[str, np.ndarray]]], Dict[str, bytes]]:
    """Decoded WAV files of the wanted class folders, {class: [(relative path 'class/file.wav', int16 samples)]}
    in name order, and the split lists (validation_list.txt, testing_list.txt) found, from the .tar.gz archive
    or its extracted folder. Other folders (_background_noise_, ...) are ignored."""
    wanted = set(classes)
    files: Dict[str, List[Tuple[str, np.ndarray]]] = {name: [] for name in classes}
    lists: Dict[str, bytes] = {}
    if os.path.isdir(path):
        for name in classes:
            folder = os.path.join(path, name)
            if os.path.isdir(folder):
                for file in sorted(os.listdir(folder)):
                    if file.endswith(".wav"):
                        with open(os.path.join(folder, file), "rb") as f:
                            files[name].append((f"{name}/{file}", decode_wav(f.read(), os.path.join(folder, file))))
        for list_name in ("validation_list.txt", "testing_list.txt"):
            if os.path.isfile(os.path.join(path, list_name)):
                with open(os.path.join(path, list_name), "rb") as f:
                    lists[list_name] = f.read()
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in archive:
                parts = os.path.normpath(member.name).split(os.sep)
                if not member.isfile():
                    continue
                if len(parts) == 2 and parts[0] in wanted and parts[1].endswith(".wav"):
                    relative = "/".join(parts)
                    samples = decode_wav(archive.extractfile(member).read(), f"{path}:{relative}")
                    files[parts[0]].append((relative, samples))
                elif len(parts) == 1 and parts[0] in ("validation_list.txt", "testing_list.txt"):
                    lists[parts[0]] = archive.extractfile(member).read()
        for entries in files.values():
            entries.sort(key=lambda entry: entry[0])
    else:
        raise FileNotFoundError(f"Speech Commands input {path} is neither a folder nor a tar archive")
    missing = [name for name in classes if not files[name]]
    if missing:
        raise FileNotFoundError(f"{path}: no WAV files for the class(es) {', '.join(missing)}")
    return files, lists


def stratified_split(labels: np.ndarray, source: str) -> List[np.ndarray]:
    """Indices of train / valid / test, 70 / 15 / 15 % stratified by label (the original's split)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    try:
        train, rest = train_test_split(indices, train_size=0.7, random_state=0, shuffle=True, stratify=labels)
        valid, test = train_test_split(rest, train_size=0.5, random_state=1, shuffle=True, stratify=labels[rest])
    except ValueError as error:
        raise DataError(f"{source}: cannot split the clips 70 / 15 / 15 % by class: {error}") from None
    return [train, valid, test]


def listed_split(paths: List[str], lists: Dict[str, bytes], classes, source: str) -> List[np.ndarray]:
    """Indices of train / valid / test from validation_list.txt and testing_list.txt."""
    known = set(paths)
    members = {}
    for list_name in ("validation_list.txt", "testing_list.txt"):
        if list_name not in lists:
            raise FileNotFoundError(f"{source}: missing {list_name} (the archive's split of the 35 classes)")
        members[list_name] = set()
        text = decode(lists[list_name], f"{source}/{list_name}")
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            if entry.split("/")[0] not in classes:
                raise DataError(f"{source}/{list_name}: line {number}: {entry!r} has an unknown label "
                                 f"(not one of the {len(classes)} classes)")
            if entry not in known:
                raise DataError(f"{source}/{list_name}: line {number}: {entry!r} is not in the archive")
            members[list_name].add(entry)
    valid = [i for i, p in enumerate(paths) if p in members["validation_list.txt"]]
    test = [i for i, p in enumerate(paths) if p in members["testing_list.txt"]]
    held = set(valid) | set(test)
    train = [i for i in range(len(paths)) if i not in held]
    empty = [name for name, rows in (("train", train), ("valid", valid), ("test", test)) if not rows]
    if empty:
        raise DataError(f"{source}: the {' and '.join(empty)} split(s) would be empty (validation_list.txt and "
                        f"testing_list.txt decide the split)")
    return [np.asarray(train), np.asarray(valid), np.asarray(test)]


def time_step_statistics(clips: np.ndarray, rows: np.ndarray, block: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased standard deviation (16000,) over the clips ``rows``, per time step (float64, in blocks)."""
    total = np.zeros(clips.shape[1])
    for start in range(0, len(rows), block):
        total += clips[rows[start:start + block]].sum(axis=0, dtype=np.float64)
    mean = total / len(rows)
    squares = np.zeros(clips.shape[1])
    for start in range(0, len(rows), block):
        squares += ((clips[rows[start:start + block]] - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / max(len(rows) - 1, 1))


def prepare_speech_commands(path: str, out_dir: str, all_classes: bool = False,
                            epsilon: float = ORIGINAL_EPSILON) -> Dict[str, int]:
    """Write ``out_dir/raw`` (SC10) or ``out_dir/raw_all_classes`` (35 classes). Returns counts by split."""
    classes = ALL_CLASSES if all_classes else SUBSET_CLASSES
    files, lists = read_archive(path, classes)
    clips, labels, paths = [], [], []
    for label, name in enumerate(classes):
        for relative, samples in files[name]:
            if samples.size < CLIP_LENGTH:
                if not all_classes:
                    continue  # SC10 leaves short clips out, as the original
                samples = np.pad(samples, (0, CLIP_LENGTH - samples.size))
            clips.append(samples)
            labels.append(label)
            paths.append(relative)
    del files
    clips, labels = np.stack(clips), np.asarray(labels, dtype=np.int64)
    splits = listed_split(paths, lists, classes, path) if all_classes else stratified_split(labels, path)
    mean, std = time_step_statistics(clips, splits[0])
    counts = {}
    with staged_output(os.path.join(out_dir, "raw_all_classes" if all_classes else "raw")) as folder:
        for split, rows in zip(("train", "valid", "test"), splits):
            np.save(os.path.join(folder, f"{split}.npy"), clips[rows])
            with open(os.path.join(folder, f"{split}.label"), "w", encoding="utf-8") as f:
                f.writelines(f"{label}\n" for label in labels[rows])
            counts[split] = len(rows)
        with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{name}\n" for name in classes)
        np.savez(os.path.join(folder, "normalization.npz"), mean=mean.astype(np.float32),
                 scale=(std + epsilon).astype(np.float32), epsilon=np.float64(epsilon))
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prepare-speech-commands.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="speech_commands_v0.02.tar.gz or its extracted folder")
    parser.add_argument("--out", required=True, help="data folder of the task (raw/ or raw_all_classes/ inside)")
    parser.add_argument("--all-classes", action="store_true", help="all 35 words (default: the 10-word subset)")
    parser.add_argument("--epsilon", type=float, default=ORIGINAL_EPSILON,
                        help="added to the per-time-step standard deviation, in int16 units (default: the "
                             "original's 1e-5 on samples scaled by 2^-30, i.e. 1e-5 * 2^30)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    if args.epsilon < 0:
        parser.error(f"--epsilon must be >= 0, got {args.epsilon}")
    start = time.time()
    try:
        counts = prepare_speech_commands(args.input, args.out, args.all_classes, args.epsilon)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    print(f"[prepare-speech-commands] {'35 classes' if args.all_classes else 'SC10'}: "
          + ", ".join(f"{split} {n}" for split, n in counts.items()) + f" clips ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

