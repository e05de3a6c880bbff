"""fairseq-train with 2 processes on the CPU (gloo): the distributed code path without GPUs.

fairseq's own launchers need CUDA (torchrun's init divides by the GPU count, and the c10d
wrapper passes device_ids), so the two ranks are started by hand with
``--distributed-init-method tcp://... --distributed-rank R --distributed-no-spawn`` and
``--ddp-backend legacy_ddp``. Two workers with batch b must follow the same loss curve as one
worker with batch b and ``--update-freq 2`` (dropout off, so the runs are deterministic). The processes
fairseq's own launcher spawns fork their data-loader workers, as a single process does.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils

from fairseq_helpers import USER_DIR, free_port, report_data_loader_workers
from toy_corpus import binarize


FLAGS = ["--user-dir", USER_DIR, "--cpu", "--arch", "mega_wmt_en_de", "--encoder-layers", "1",
         "--decoder-layers", "1", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "48",
         "--encoder-ffn-embed-dim", "48", "--encoder-z-dim", "16", "--encoder-n-dim", "4",
         "--decoder-chunk-size", "4", "--share-all-embeddings", "--dropout", "0", "--attention-dropout", "0",
         "--hidden-dropout", "0", "--activation-dropout", "0", "--optimizer", "adam", "--lr", "0.002",
         "--lr-scheduler", "linear_decay", "--warmup-updates", "2", "--total-num-update", "20",
         "--max-tokens", "600", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
         "--no-epoch-checkpoints", "--log-interval", "1", "--log-format", "simple", "--seed", "7",
         "--num-workers", "0", "--disable-validation", "--required-batch-size-multiple", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return binarize(tmp_path_factory.mktemp("dist"), {"train": 300, "valid": 20, "test": 20}, seed=11)


def train_command(data, save_dir, extra):
    return [sys.executable, "-m", "fairseq_cli.train", str(data), *FLAGS, "--save-dir", str(save_dir), *extra]


def run_two_workers(data, save_dir, extra):
    """Start ranks 0 and 1 of a gloo run; return rank 0's log."""
    distributed = ["--distributed-world-size", "2", "--distributed-backend", "gloo", "--distributed-no-spawn",
                   "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", "legacy_ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(train_command(data, save_dir, [*distributed, "--distributed-rank", str(rank), *extra]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for rank in (0, 1)]
    logs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
        assert "destroy_process_group" not in log and "recvValue" not in log, log[-3000:]
    return logs[0]


def run_one_worker(data, save_dir, extra):
    result = subprocess.run(train_command(data, save_dir, extra), capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def losses(log):
    """num_updates -> (loss, words per batch, lr) from the train_inner lines."""
    pattern = r"loss=([\d.]+), nll_loss=[\d.]+, .*?wpb=([\d.]+), .*?num_updates=(\d+), lr=([\de.+-]+)"
    return {int(m[2]): (float(m[0]), float(m[1]), float(m[3])) for m in re.findall(pattern, log)}


@pytest.fixture(scope="module")
def two_workers(data, tmp_path_factory):
    """One 2-worker run of 6 updates that also saves a checkpoint after update 4 (both tests read it)."""
    save_dir = tmp_path_factory.mktemp("two")
    return save_dir, run_two_workers(data, save_dir, ["--max-update", "6", "--save-interval-updates", "4"])


def test_two_workers_match_one_worker_with_update_freq_2(data, two_workers, tmp_path):
    two = losses(two_workers[1])
    one = losses(run_one_worker(data, tmp_path / "one", ["--max-update", "6", "--update-freq", "2"]))
    assert sorted(two) == sorted(one) == list(range(1, 7))
    for update in two:
        assert two[update][1] == one[update][1], "both runs must see the same batches"
        assert two[update][0] == pytest.approx(one[update][0], abs=2e-3)
        assert two[update][2] == pytest.approx(one[update][2], rel=1e-5)


def test_checkpoint_of_a_two_worker_run_resumes_on_one_worker(data, two_workers, tmp_path):
    (checkpoint,) = two_workers[0].glob("checkpoint_*_4.pt")
    state = torch.load(checkpoint)
    assert state["optimizer_history"][-1]["num_updates"] == 4
    resumed = losses(run_one_worker(data, tmp_path / "resumed", ["--max-update", "6", "--update-freq", "2",
                                                                  "--restore-file", str(checkpoint)]))
    assert sorted(resumed) == [5, 6]
    for update, (_, _, lr) in resumed.items():
        assert lr == pytest.approx(0.002 * (20 - update) / 18, rel=1e-5)


def test_spawned_processes_fork_their_data_loader_workers(tmp_path, monkeypatch):
    """fairseq's launcher spawns one process per GPU, where Python's start method is 'spawn': their data-loader
    workers would be fresh interpreters importing torch and fairseq. One process stands in for a GPU here."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), [
        "/nonexistent", "--user-dir", USER_DIR, "--arch", "mega_wmt_en_de", "--cpu", "--distributed-world-size", "1",
        "--distributed-backend", "gloo", "--distributed-init-method", f"file://{tmp_path / 'store'}"]))
    report = tmp_path / "report.json"
    distributed_utils.call_main(cfg, report_data_loader_workers, report=str(report))
    assert json.loads(report.read_text()) == {"start_method": "fork", "forked": [1, 1, 1, 1]}
