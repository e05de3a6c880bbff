"""Long Range Arena tasks: ``lra-text`` (ListOps, Text, Retrieval) and ``lra-image`` (Image, Pathfinder, Path-X).

Data directories are written by scripts/prepare-lra.py (layouts in
mega_fairseq/prepare/lra.py); the text layout is the original
implementation's, so its released binarized text data loads as well, and the
image task also reads the original ``input/{split}.src`` text files.
``--max-positions`` and ``--sen-rep-type`` are options of the model (its
architecture sets their defaults); the tasks take them from the model they build
(fairseq builds the model before it loads data) to check and prepare inputs.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from fairseq.data import (
    Dictionary,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    RawLabelDataset,
    RightPadDataset,
    SortDataset,
    TruncateDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.real_valued_dataset import (
    RealValuedSequenceDataset,
    check_length,
    load_pixels,
    PixelTransform,
    read_labels,
)

logger = logging.getLogger(__name__)

CLS_SYMBOL = "<CLS>"
SHORTEN_CHOICES = ChoiceEnum(["none", "truncate"])


class ModelOptionsTask(FairseqTask):
    """A task whose data depend on the model's --max-positions and --sen-rep-type."""

    model_max_positions: Optional[int] = None
    sen_rep_type: Optional[str] = None

    def build_model(self, cfg, from_checkpoint: bool = False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "sen_rep_type"):
            raise ValueError(f"this task needs a sequence classifier (--arch mega_lra_*, transformer_lra_* or "
                             f"mega_sc_raw*), not {type(model).__name__}")
        self.model_max_positions, self.sen_rep_type = model.max_positions(), model.sen_rep_type
        return model

    def check_model_built(self) -> int:
        """The model's --max-positions; data are loaded after the model is built."""
        if self.model_max_positions is None:
            raise RuntimeError(f"{type(self).__name__} takes --max-positions from its model: build the model "
                               f"(task.build_model) before loading data")
        return self.model_max_positions

    def max_positions(self):
        return self.model_max_positions


class RealValuedInputTask(ModelOptionsTask):
    """A task whose inputs are real values (pixels, audio samples): no dictionaries."""

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


def require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing {path}: {what} (scripts/prepare-lra.py writes the data directories)")
    return path


@dataclass
class LRATextConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={
        "help": "data directory: src-bin/ and label-bin/, plus src1-bin/ for document pairs (Retrieval)"})
    shorten_method: SHORTEN_CHOICES = field(default="none", metadata={
        "help": "none: an input longer than --max-positions is an error; truncate: keep its first "
                "--max-positions tokens (what the original always did)"})
    no_shuffle: bool = field(default=False, metadata={"help": "batch examples in file order"})
    seed: int = II("common.seed")


@register_task("lra-text", dataclass=LRATextConfig)
class LRATextTask(ModelOptionsTask):
    """Token sequences (or pairs of them) and a class label per example.

    With ``--sen-rep-type cls`` a ``<CLS>`` token (added to the dictionary, as the
    original does) is prepended to every input. Batches: ``net_input`` holds
    ``src_tokens`` (B, L), ``src_lengths`` (B,) and, for pairs, ``src1_tokens``,
    ``src1_lengths``; ``target`` (B,).
    """

    input_type = "text"
    input_channels = 1

    def __init__(self, cfg: LRATextConfig, dictionary: Dictionary, label_dictionary: Dictionary, paired: bool):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.label_dictionary = label_dictionary
        self.cls_index = dictionary.index(CLS_SYMBOL)
        self.paired = paired

    @classmethod
    def setup_task(cls, cfg: LRATextConfig, **kwargs):
        dictionary = Dictionary.load(require(os.path.join(cfg.data, "src-bin", "dict.txt"), "the input dictionary"))
        dictionary.add_symbol(CLS_SYMBOL)
        label_dictionary = Dictionary.load(require(os.path.join(cfg.data, "label-bin", "dict.txt"),
                                                   "the label dictionary"))
        paired = os.path.isdir(os.path.join(cfg.data, "src1-bin"))
        logger.info(f"[input] dictionary: {len(dictionary)} types; {len(label_dictionary) - label_dictionary.nspecial}"
                    f" classes; {'document pairs' if paired else 'single inputs'}")
        return cls(cfg, dictionary, label_dictionary, paired)

    @property
    def num_classes(self) -> int:
        return len(self.label_dictionary) - self.label_dictionary.nspecial

    @property
    def prepend_cls(self) -> bool:
        return self.sen_rep_type == "cls"

    def _load(self, kind: str, split: str, dictionary: Dictionary, combine: bool):
        path = os.path.join(self.cfg.data, kind, split)
        dataset = data_utils.load_indexed_dataset(path, dictionary, combine=combine)
        if dataset is None:
            raise FileNotFoundError(f"missing {path}.bin/.idx: split '{split}' of {kind}/ "
                                    f"(scripts/prepare-lra.py writes the data directories)")
        return dataset, path

    def _targets(self, split: str, combine: bool) -> np.ndarray:
        """Class numbers (N,) of a split; an entry that is not one known label is an error naming it."""
        labels, path = self._load("label-bin", split, self.label_dictionary, combine)
        bad = np.flatnonzero(labels.sizes != 2)
        if bad.size:
            raise ValueError(f"example {bad[0]} of split '{split}' ({path}) has {labels.sizes[bad[0]] - 1} label "
                             f"tokens, expected one")
        ids = np.fromiter((int(labels[i][0]) for i in range(len(labels))), dtype=np.int64, count=len(labels))
        unknown = np.flatnonzero(ids < self.label_dictionary.nspecial)
        if unknown.size:
            raise ValueError(f"example {unknown[0]} of split '{split}' ({path}) has an unknown label "
                             f"({self.label_dictionary[ids[unknown[0]]]}): not in {path}/../dict.txt")
        return ids - self.label_dictionary.nspecial

    def _inputs(self, kind: str, split: str, combine: bool):
        """Token sequences of a split with <CLS> prepended if asked, checked against --max-positions."""
        max_positions = self.check_model_built()
        tokens, path = self._load(kind, split, self.dictionary, combine)
        if self.prepend_cls:
            tokens = PrependTokenDataset(tokens, self.cls_index)
        too_long = np.flatnonzero(tokens.sizes > max_positions)
        if too_long.size and self.cfg.shorten_method == "none":
            index = too_long[0]
            counted = "end-of-sentence and <CLS> tokens" if self.prepend_cls else "the end-of-sentence token"
            raise ValueError(
                f"example {index} of split '{split}' ({path}) has {tokens.sizes[index]} tokens (with {counted}), "
                f"more than --max-positions {max_positions} ({too_long.size} such examples); raise --max-positions "
                f"or keep the first tokens with --shorten-method truncate")
        if too_long.size:
            tokens = TruncateDataset(tokens, max_positions)
        return tokens

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        src = self._inputs("src-bin", split, combine)
        pad = self.dictionary.pad()
        net_input = {"src_tokens": RightPadDataset(src, pad_idx=pad), "src_lengths": NumelDataset(src, reduce=False)}
        sizes = src.sizes
        if self.paired:
            src1 = self._inputs("src1-bin", split, combine)
            if len(src1) != len(src):
                raise ValueError(f"split '{split}' has {len(src)} first documents (src-bin) but {len(src1)} second "
                                 f"documents (src1-bin)")
            net_input.update(src1_tokens=RightPadDataset(src1, pad_idx=pad),
                             src1_lengths=NumelDataset(src1, reduce=False))
            sizes = np.maximum(sizes, src1.sizes)
        targets = self._targets(split, combine)
        if len(targets) != len(src):
            raise ValueError(f"split '{split}' has {len(src)} inputs but {len(targets)} labels")
        dataset = NestedDictionaryDataset({
            "id": IdDataset(),
            "net_input": net_input,
            "target": RawLabelDataset(targets.tolist()),
            "nsentences": NumSamplesDataset(),
            "ntokens": NumelDataset(src, reduce=True),
        }, sizes=[sizes])
        if not self.cfg.no_shuffle:
            with data_utils.numpy_seed(self.cfg.seed):
                dataset = SortDataset(dataset, sort_order=[np.random.permutation(len(dataset))])
        logger.info(f"loaded {split}: {len(dataset)} examples")
        self.datasets[split] = dataset
        return dataset

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary


@dataclass
class LRAImageConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data directory: input/ and label/"})
    pixel_normalization: List[float] = field(default_factory=lambda: [0.5, 0.5], metadata={
        "help": "MEAN STD: pixels p (0-255) become (p / 255 - MEAN) / STD"})
    no_shuffle: bool = field(default=False, metadata={"help": "batch examples in file order"})
    seed: int = II("common.seed")


@register_task("lra-image", dataclass=LRAImageConfig)
class LRAImageTask(RealValuedInputTask):
    """Grayscale images as pixel sequences (row-major), normalized; batches of real values
    ``src_tokens`` (B, H*W) and ``target`` (B,). The number of classes is 1 + the largest
    label found in label/*.label."""

    input_type = "image"
    input_channels = 1

    def __init__(self, cfg: LRAImageConfig, num_classes: int):
        super().__init__(cfg)
        self.num_classes = num_classes
        self.paired = False

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--pixel-normalization", type=float, nargs=2, metavar=("MEAN", "STD"), default=[0.5, 0.5],
                            help="pixels p (0-255) become (p / 255 - MEAN) / STD")
        super().add_args(parser)  # the dataclass field of the same name is then skipped

    @classmethod
    def setup_task(cls, cfg: LRAImageConfig, **kwargs):
        normalization = list(cfg.pixel_normalization)
        if len(normalization) != 2 or not normalization[1] > 0:
            raise ValueError(f"--pixel-normalization takes MEAN STD with STD > 0, got {normalization}")
        label_dir = require(os.path.join(cfg.data, "label"), "the label folder of lra-image")
        label_files = sorted(f for f in os.listdir(label_dir) if f.endswith(".label"))
        if not label_files:
            raise FileNotFoundError(f"no label files (*.label) in {label_dir}")
        num_classes = 1 + max(int(read_labels(os.path.join(label_dir, f)).max(initial=0)) for f in label_files)
        logger.info(f"[input] images, {num_classes} classes, pixel normalization {normalization}")
        return cls(cfg, num_classes)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        pixels, path = load_pixels(os.path.join(self.cfg.data, "input"), split)
        label_path = require(os.path.join(self.cfg.data, "label", f"{split}.label"), f"labels of split '{split}'")
        labels = read_labels(label_path)
        if len(labels) != len(pixels):
            raise ValueError(f"{path} holds {len(pixels)} images but {label_path} has {len(labels)} labels")
        check_length(pixels.shape[1], self.check_model_built(), f"every image of {path}")
        mean, std = self.cfg.pixel_normalization
        dataset = RealValuedSequenceDataset(pixels, labels, PixelTransform(mean, std), pixels.shape[1],
                                            shuffle=not self.cfg.no_shuffle, seed=self.cfg.seed)
        logger.info(f"loaded {split}: {len(dataset)} images of {pixels.shape[1]} pixels")
        self.datasets[split] = dataset
        return dataset
