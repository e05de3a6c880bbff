"""The toy translation corpus of examples/translation (toy_data.py), written and binarized with
fairseq-preprocess, for the tests that drive fairseq's command-line entry points."""
import os
import sys
from pathlib import Path
from typing import Dict

from fairseq import options
from fairseq_cli import preprocess

from fairseq_helpers import REPO

sys.path.insert(0, os.path.join(REPO, "examples", "translation"))
import toy_data  # noqa: E402


def binarize(root: Path, sizes: Dict[str, int], seed: int, language_model: bool = False) -> Path:
    """Write the splits ``sizes`` (train, valid, test -> sentences) under root/raw and binarize them into
    root/data-bin: the English side alone (``language_model``), or en-de with a joined dictionary."""
    raw, data = root / "raw", root / "data-bin"
    toy_data.write_splits(str(raw), sizes, seed=seed)
    prefixes = []
    for split in sizes:
        side = raw / (f"{split}.en" if language_model else split)
        prefixes += [f"--{'train' if split == 'train' else split}pref", str(side)]
    languages = ["--only-source"] if language_model else ["--source-lang", "en", "--target-lang", "de",
                                                           "--joined-dictionary"]
    preprocess.main(options.get_preprocessing_parser().parse_args(
        [*languages, "--workers", "1", "--destdir", str(data), *prefixes]))
    return data
