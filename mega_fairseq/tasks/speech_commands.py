"""The ``speech_commands`` task: raw 16 kHz one-second waveforms (Speech Commands v0.02), 10 or 35 classes.

The data folder (written by scripts/prepare-speech-commands.py) holds ``raw/``
(the 10-class subset, SC10) and/or ``raw_all_classes/`` (35 classes), each with
``{train,valid,test}.npy`` (int16 samples (N, 16000)), ``{split}.label``,
``classes.txt`` and ``normalization.npz`` (per-time-step mean and scale from the
training split, as the original normalizes). Options as the original:
``--sc-all-classes``, ``--sc-dropped-rate`` (percent of the samples of every
example dropped at random; the model then also gets a 0/1 "sample present"
channel), plus ``--sc-sample-rate`` to resample (keep every k-th sample).
"""
import logging
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from ..data.real_valued_dataset import RealValuedSequenceDataset, check_length, read_labels
from .lra import RealValuedInputTask

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CLIP_LENGTH = 16000
DROP_SEED = 56789  # the original's seed for the dropped samples


@dataclass
class SpeechCommandsConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder with raw/ (10 classes) and/or raw_all_classes/"})
    sc_all_classes: bool = field(default=False, metadata={"help": "all 35 classes (raw_all_classes/)"})
    sc_dropped_rate: float = field(default=0.0, metadata={
        "help": "percent (0-100) of the samples of every example dropped at random (set to 0, with a 0/1 "
                "presence channel)"})
    sc_sample_rate: int = field(default=SAMPLE_RATE, metadata={
        "help": "resample to this rate by keeping every (16000 / rate)-th sample, without filtering as the "
                "original (8000: length 8000); must divide 16000"})
    no_shuffle: bool = field(default=False, metadata={"help": "batch examples in file order"})
    seed: int = II("common.seed")


class SpeechTransform:
    """int16 samples (16000,) -> float tensor (16000 / step,), or (16000 / step, 2) [value, present]
    when samples are dropped: ``(x - mean[t]) / scale[t]`` per time step, then every step-th sample.
    The dropped samples of an example are the same at every epoch (seeded by split and index)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, dropped_rate: float, step: int, split: str):
        self.mean, self.scale, self.dropped_rate, self.step = mean, scale, dropped_rate, step
        self.split_code = zlib.crc32(split.encode())
        self.dropped = int(CLIP_LENGTH * dropped_rate / 100.0)

    def __call__(self, index: int, row: np.ndarray) -> torch.Tensor:
        x = (row.astype(np.float32) - self.mean) / self.scale
        if self.dropped_rate > 0:
            rng = np.random.default_rng((DROP_SEED, self.split_code, index))
            removed = rng.permutation(CLIP_LENGTH)[:self.dropped]
            present = np.ones(CLIP_LENGTH, dtype=np.float32)
            present[removed] = 0.0
            x[removed] = 0.0
            x = np.stack([x, present], axis=-1)
        return torch.from_numpy(np.ascontiguousarray(x[::self.step]))


@register_task("speech_commands", dataclass=SpeechCommandsConfig)
class SpeechCommandsTask(RealValuedInputTask):
    """Classify raw waveforms; batches ``src_tokens`` (B, L) or (B, L, 2) floats and ``target`` (B,)."""

    input_type = "image"  # real values through a linear embedding, as LRA's images
    paired = False

    def __init__(self, cfg: SpeechCommandsConfig, folder: str, classes, mean: np.ndarray, scale: np.ndarray):
        super().__init__(cfg)
        self.folder, self.classes, self.mean, self.scale = folder, classes, mean, scale
        self.step = SAMPLE_RATE // cfg.sc_sample_rate

    @classmethod
    def setup_task(cls, cfg: SpeechCommandsConfig, **kwargs):
        if not 0.0 <= cfg.sc_dropped_rate < 100.0:
            raise ValueError(f"--sc-dropped-rate is a percentage in [0, 100), got {cfg.sc_dropped_rate}")
        if cfg.sc_sample_rate <= 0 or SAMPLE_RATE % cfg.sc_sample_rate:
            raise ValueError(f"--sc-sample-rate must divide {SAMPLE_RATE} (16000, 8000, 4000, ...), "
                             f"got {cfg.sc_sample_rate}")
        folder = os.path.join(cfg.data, "raw_all_classes" if cfg.sc_all_classes else "raw")
        for name in ("classes.txt", "normalization.npz"):
            if not os.path.exists(os.path.join(folder, name)):
                raise FileNotFoundError(
                    f"missing {os.path.join(folder, name)}: run scripts/prepare-speech-commands.py"
                    f"{' --all-classes' if cfg.sc_all_classes else ''} --out {cfg.data}")
        with open(os.path.join(folder, "classes.txt"), encoding="utf-8") as f:
            classes = [line.strip() for line in f if line.strip()]
        with np.load(os.path.join(folder, "normalization.npz")) as stats:
            mean, scale = stats["mean"].astype(np.float32), stats["scale"].astype(np.float32)
        if mean.shape != (CLIP_LENGTH,) or scale.shape != (CLIP_LENGTH,) or not (scale > 0).all():
            raise ValueError(f"{folder}/normalization.npz must hold 'mean' and positive 'scale' of shape "
                             f"({CLIP_LENGTH},)")
        logger.info(f"[input] Speech Commands, {len(classes)} classes from {folder}")
        return cls(cfg, folder, classes, mean, scale)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_channels(self) -> int:
        return 2 if self.cfg.sc_dropped_rate > 0 else 1

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        path = os.path.join(self.folder, f"{split}.npy")
        if not os.path.exists(path):
            raise FileNotFoundError(f"missing {path}: split '{split}' (scripts/prepare-speech-commands.py)")
        signals = np.load(path, mmap_mode="r")
        if signals.ndim != 2 or signals.shape[1] != CLIP_LENGTH or signals.dtype != np.int16:
            raise ValueError(f"{path}: expected int16 samples of shape (clips, {CLIP_LENGTH}), "
                             f"got {signals.dtype} {signals.shape}")
        label_path = os.path.join(self.folder, f"{split}.label")
        labels = read_labels(label_path)
        unknown = np.flatnonzero(labels >= self.num_classes)
        if unknown.size:
            raise ValueError(f"{label_path}: line {unknown[0] + 1}: unknown label {labels[unknown[0]]} "
                             f"(classes.txt lists {self.num_classes} classes)")
        length = CLIP_LENGTH // self.step
        check_length(length, self.check_model_built(), f"every clip of {path} (at --sc-sample-rate "
                                                        f"{self.cfg.sc_sample_rate})")
        transform = SpeechTransform(self.mean, self.scale, self.cfg.sc_dropped_rate, self.step, split)
        dataset = RealValuedSequenceDataset(signals, labels, transform, length, shuffle=not self.cfg.no_shuffle,
                                            seed=self.cfg.seed)
        logger.info(f"loaded {split}: {len(dataset)} clips of {length} samples")
        self.datasets[split] = dataset
        return dataset
