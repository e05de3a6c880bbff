"""fairseq-train on 2 GPUs (NCCL, fairseq's own spawn) ends cleanly: exit 0 and none of PyTorch's
end-of-run complaints ("destroy_process_group() was not called", TCPStore "recvValue failed")."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("fairseq")
from fairseq_helpers import REPO, USER_DIR  # noqa: E402
from toy_corpus import binarize  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


def test_two_gpu_run_ends_without_process_group_complaints(tmp_path):
    data = binarize(tmp_path, {"train": 300, "valid": 20, "test": 20}, seed=11)
    command = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", USER_DIR,
               "--arch", "mega_wmt_en_de", "--encoder-layers", "1", "--decoder-layers", "1",
               "--encoder-embed-dim", "32", "--encoder-hidden-dim", "48", "--encoder-ffn-embed-dim", "48",
               "--encoder-z-dim", "16", "--encoder-n-dim", "4", "--share-all-embeddings", "--optimizer", "adam",
               "--lr", "0.001", "--max-tokens", "600", "--max-update", "4", "--distributed-world-size", "2",
               "--save-dir", str(tmp_path / "save"), "--no-epoch-checkpoints", "--num-workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for complaint in ("destroy_process_group", "recvValue"):
        assert complaint not in result.stderr, result.stderr[-3000:]
