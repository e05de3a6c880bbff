"""benchmarks/e2e/lra_listops.sh end to end on the CPU with tiny sizes: generate ListOps, prepare it, train Mega and
the Transformer baseline through examples/lra/listops.sh (fairseq-train, fairseq-validate), print both accuracies."""
import json
import os
import subprocess
import sys

import pytest

from fairseq_helpers import REPO

TINY = ("--encoder-layers 1 --encoder-embed-dim 16 --encoder-hidden-dim 16 --encoder-ffn-embed-dim 16 --z-dim 8 "
        "--encoder-attention-heads 2 --classifier-out-dim 8 --batch-size 16 --max-sentences-valid 8")


@pytest.mark.slow
def test_listops_benchmark_script(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TRAIN="32", VALID="8", TEST="8", MIN_LENGTH="8", MAX_LENGTH="40",
               DEPTH="4", ARGS="4", COMMON_ARGS=TINY, TRANSFORMER_ARGS="--update-freq 1", FP16="0",
               GEN_JOBS="2", PARALLEL="1")
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "e2e", "lra_listops.sh"), str(tmp_path), "3"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for model, arch in (("mega", "mega_lra_listop"), ("transformer", "transformer_lra_listop")):
        row = summary[model]
        assert row["arch"] == arch and row["updates"] == 3 and row["parameters"] > 0
        assert 0.0 <= row["test_accuracy"] <= 100.0 and 0.0 <= row["best_valid_accuracy"] <= 100.0
        assert f"{model:12s} {arch}" in result.stdout
    mega_log = (tmp_path / "mega" / "train.log").read_text()
    transformer_log = (tmp_path / "transformer" / "train.log").read_text()
    assert "'_name': 'mega_lra_listop'" in mega_log and "'_name': 'transformer_lra_listop'" in transformer_log
