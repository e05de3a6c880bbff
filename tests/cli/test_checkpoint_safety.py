"""Checkpoints through fairseq-train and fairseq-validate: a SIGKILL during the copy to
checkpoint_last.pt leaves the previous one intact, a resume falls back past an unreadable
checkpoint_last.pt, and a checkpoint with non-finite weights is refused with their names."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import train, validate

from fairseq_helpers import REPO, USER_DIR
from toy_corpus import binarize
from mega_fairseq.checkpoint_safety import CheckpointError


FLAGS = ["--user-dir", USER_DIR, "--cpu", "--task", "mega_language_modeling", "--arch", "mega_lm",
         "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-hidden-dim", "24",
         "--decoder-ffn-embed-dim", "24", "--decoder-z-dim", "8", "--decoder-n-dim", "4",
         "--tokens-per-sample", "32", "--max-tokens", "128", "--criterion", "cross_entropy", "--optimizer", "adam",
         "--lr", "0.003", "--save-interval-updates", "2", "--disable-validation", "--no-epoch-checkpoints",
         "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--seed", "3"]

# fairseq-train whose second copy to checkpoint_last.pt writes half the file, then waits to be killed
PAUSE_IN_COPY = r"""
import os, shutil, sys, time
from fairseq_cli import train

copy_file, copies = shutil.copyfile, []

def copy_half_then_pause(src, dst, *args, **kwargs):
    if "checkpoint_last" in os.path.basename(dst):
        copies.append(dst)
        if len(copies) == 2:
            with open(src, "rb") as f, open(dst, "wb") as out:
                out.write(f.read()[: os.path.getsize(src) // 2])
            open(os.environ["PAUSED"], "w").close()
            time.sleep(300)
    return copy_file(src, dst, *args, **kwargs)

shutil.copyfile = copy_half_then_pause
train.cli_main()
"""


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    return binarize(tmp_path_factory.mktemp("lm"), {"train": 200, "valid": 20, "test": 20}, seed=5,
                    language_model=True)


@pytest.fixture(scope="module")
def killed_run(lm_data, tmp_path_factory):
    """The save dir of a run killed (SIGKILL) while copying its update-4 checkpoint to checkpoint_last.pt."""
    save_dir = tmp_path_factory.mktemp("killed")
    paused = save_dir.parent / "killed.paused"
    env = {**os.environ, "PAUSED": str(paused), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", PAUSE_IN_COPY, str(lm_data), *FLAGS, "--save-dir", str(save_dir),
               "--max-update", "6"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not paused.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    log = process.communicate()[0]
    assert paused.exists(), f"the run never reached its second checkpoint copy:\n{log[-3000:]}"
    return save_dir


def updates(path) -> int:
    return torch.load(path)["optimizer_history"][-1]["num_updates"]


def train_in_process(data, save_dir, extra=()):
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data), *FLAGS, "--save-dir", str(save_dir), *extra])
    train.main(convert_namespace_to_omegaconf(args))


def test_kill_during_the_copy_keeps_the_previous_checkpoint_last(killed_run):
    assert updates(killed_run / "checkpoint_1_4.pt") == 4
    assert updates(killed_run / "checkpoint_last.pt") == 2


def test_resume_falls_back_past_an_unreadable_checkpoint_last(killed_run, lm_data, tmp_path, caplog):
    save_dir = tmp_path / "save"
    shutil.copytree(killed_run, save_dir)
    (save_dir / "checkpoint_last.pt").write_bytes(b"")
    with caplog.at_level(logging.INFO):
        train_in_process(lm_data, save_dir, ["--max-update", "6"])
    assert f"resuming from {save_dir / 'checkpoint_1_4.pt'}" in caplog.text
    assert "num_updates=5" in caplog.text and "num_updates=4" not in caplog.text
    assert updates(save_dir / "checkpoint_last.pt") == 6
    assert not [name for name in os.listdir(save_dir) if name.endswith(".partial")]


def test_resume_without_a_readable_checkpoint_says_what_to_do(lm_data, tmp_path):
    tmp_path.joinpath("checkpoint_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="holds no other readable checkpoint.*--restore-file"):
        train_in_process(lm_data, tmp_path, ["--max-update", "2"])


def test_non_finite_weights_are_refused_with_their_names(killed_run, lm_data, tmp_path):
    state = torch.load(killed_run / "checkpoint_1_4.pt")
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name].view(-1)[0] = float("inf")
    corrupted = tmp_path / "corrupted.pt"
    torch.save(state, corrupted)
    args = options.parse_args_and_arch(options.get_validation_parser(), [
        str(lm_data), "--user-dir", USER_DIR, "--cpu", "--task", "mega_language_modeling", "--path", str(corrupted),
        "--tokens-per-sample", "32", "--max-tokens", "128"])
    with pytest.raises(CheckpointError, match=rf"corrupted: 1 tensor\(s\) hold nan or inf values: model\.{name} "
                                              r"\(1 of \d+ values\)"):
        validate.main(convert_namespace_to_omegaconf(args))
