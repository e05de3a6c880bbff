"""End to end through fairseq's own entry points: preprocess, train, generate, interactive."""
import os
import re
import subprocess
import sys

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import generate, train

from fairseq_helpers import REPO, USER_DIR
from toy_corpus import binarize


TRAIN_FLAGS = ["--arch", "mega_wmt_en_de", "--encoder-layers", "1", "--decoder-layers", "1",
               "--encoder-embed-dim", "32", "--encoder-hidden-dim", "48", "--encoder-ffn-embed-dim", "48",
               "--encoder-z-dim", "16", "--encoder-n-dim", "4", "--decoder-chunk-size", "4",
               "--share-all-embeddings", "--normalize-before",
               "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler", "linear_decay", "--warmup-updates", "3",
               "--total-num-update", "12", "--max-update", "12", "--max-tokens", "1000",
               "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
               "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "1", "--log-format", "simple"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy corpus, binarized, and a Mega trained on it for a few updates with fairseq_cli.train."""
    root = tmp_path_factory.mktemp("toy")
    data, save = binarize(root, {"train": 600, "valid": 40, "test": 30}, seed=3), root / "checkpoints"
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", USER_DIR, "--save-dir", str(save),
                                                *TRAIN_FLAGS])
    train.main(convert_namespace_to_omegaconf(args))
    return root


def run_generate(data, checkpoint, results, extra=()):
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--beam", "5", "--lenpen", "0.5",
        "--batch-size", "16", "--results-path", str(results), *extra])
    generate.main(args)
    with open(os.path.join(results, "generate-test.txt"), encoding="utf-8") as f:
        return f.read()


def test_train_saves_a_checkpoint_that_loads_weights_only(trained):
    checkpoint = trained / "checkpoints" / "checkpoint_last.pt"
    state = torch.load(checkpoint)  # torch's default is weights_only=True; the plugin allows what fairseq needs
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert any(name.endswith("mega_layer.move.alpha") for name in state["model"])
    assert state["cfg"]["model"]["_name"] == "mega_wmt_en_de"


@pytest.mark.parametrize("scoring", ["sacrebleu", "bleu"])
def test_generate_beam_search_and_bleu(trained, tmp_path, scoring):
    output = run_generate(trained / "data-bin", trained / "checkpoints" / "checkpoint_best.pt", tmp_path,
                          ["--scoring", scoring])
    assert len(re.findall(r"^H-\d+\t", output, flags=re.M)) == 30
    assert re.search(r"Generate test with beam=5: BLEU4? = \d", output)


def test_generate_remove_bpe_and_print_alignment(trained, tmp_path):
    output = run_generate(trained / "data-bin", trained / "checkpoints" / "checkpoint_best.pt", tmp_path,
                          ["--remove-bpe", "--print-alignment", "--scoring", "sacrebleu"])
    assert re.search(r"^A-\d+\t\d+-\d+", output, flags=re.M)


def test_interactive_and_user_dir_from_anywhere(trained, tmp_path):
    """fairseq-interactive with --user-dir pointing at the thin user_dir package, run from another directory."""
    command = [sys.executable, "-m", "fairseq_cli.interactive", str(trained / "data-bin"),
               "--user-dir", os.path.join(REPO, "user_dir"), "--path", str(trained / "checkpoints" / "checkpoint_best.pt"),
               "--source-lang", "en", "--target-lang", "de", "--beam", "3"]
    result = subprocess.run(command, input="the dog sees a cat .\ntoday the man likes the house .\n",
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r"^H-\d+\t", result.stdout, flags=re.M)) == 2


def test_training_resumes_from_the_checkpoint(trained, tmp_path):
    """--restore-file continues at the saved update count with the saved schedule."""
    parser = options.get_training_parser()
    flags = [flag if flag != "12" else "14" for flag in TRAIN_FLAGS]
    args = options.parse_args_and_arch(parser, [
        str(trained / "data-bin"), "--user-dir", USER_DIR, "--save-dir", str(tmp_path),
        "--restore-file", str(trained / "checkpoints" / "checkpoint_last.pt"), *flags])
    train.main(convert_namespace_to_omegaconf(args))
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 14


def test_training_with_bf16_autocast(trained, tmp_path):
    """fairseq's --bf16 means TPU; --bf16-autocast trains with bf16 matrix products on any device."""
    parser = options.get_training_parser()
    flags = [flag if flag != "12" else "4" for flag in TRAIN_FLAGS]
    args = options.parse_args_and_arch(parser, [str(trained / "data-bin"), "--user-dir", USER_DIR,
                                                "--save-dir", str(tmp_path), "--bf16-autocast", *flags])
    train.main(convert_namespace_to_omegaconf(args))
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert state["cfg"]["model"]["bf16_autocast"] is True
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
