"""The Mega LM end to end through fairseq's entry points: preprocess, train, eval_lm, interactive sampling."""
import re
import subprocess
import sys

import pytest
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import eval_lm, train

from mega_fairseq import stream_eval
from fairseq_helpers import USER_DIR
from toy_corpus import binarize

LM_FLAGS = ["--task", "mega_language_modeling", "--arch", "mega_lm", "--decoder-layers", "1",
            "--decoder-embed-dim", "32", "--decoder-hidden-dim", "48", "--decoder-ffn-embed-dim", "48",
            "--decoder-z-dim", "16", "--decoder-n-dim", "4", "--decoder-chunk-size", "8", "--normalize-before",
            "--no-affine-final-norm", "--rel-pos-bias", "rotary", "--variant-block-multiple-min", "2",
            "--variant-block-multiple-max", "4", "--valid-block", "splits:2", "--sample-break-mode", "complete",
            "--optimizer", "adam", "--lr", "0.003", "--max-update", "8", "--max-tokens", "1024",
            "--max-tokens-valid", "4096", "--no-epoch-checkpoints", "--num-workers", "0", "--log-format", "simple"]
ADAPTIVE = ["--adaptive-input", "--adaptive-input-cutoff", "20,40", "--adaptive-softmax-cutoff", "20,40",
            "--tie-adaptive-weights", "--tie-adaptive-proj", "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp"]


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    return binarize(tmp_path_factory.mktemp("lm"), {"train": 400, "valid": 40, "test": 40}, seed=5,
                    language_model=True)


def train_lm(data, save_dir, extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", USER_DIR, "--save-dir", str(save_dir),
                                                *LM_FLAGS, *extra])
    train.main(convert_namespace_to_omegaconf(args))
    return save_dir / "checkpoint_last.pt"


@pytest.mark.parametrize("extra", [["--criterion", "cross_entropy", "--share-decoder-input-output-embed"], ADAPTIVE],
                         ids=["cross_entropy", "adaptive_loss"])
def test_train_then_eval_lm_and_stream_eval(lm_data, tmp_path, extra, caplog):
    checkpoint = train_lm(lm_data, tmp_path, extra)
    parser = options.get_eval_lm_parser()
    args = options.parse_args_and_arch(parser, [str(lm_data), "--user-dir", USER_DIR, "--path", str(checkpoint),
                                                "--tokens-per-sample", "32", "--max-tokens", "4096"])
    with caplog.at_level("INFO"):
        eval_lm.main(convert_namespace_to_omegaconf(args))
    assert re.search(r"Loss \(base 2\): \d+\.\d+, Perplexity: \d", caplog.text)
    loss = stream_eval.main([str(lm_data), "--path", str(checkpoint), "--block-length", "13"])
    assert 0 < loss < 20


def test_interactive_sampling_from_the_lm(lm_data, tmp_path):
    checkpoint = train_lm(lm_data, tmp_path, ["--criterion", "cross_entropy"])
    command = [sys.executable, "-m", "fairseq_cli.interactive", str(lm_data), "--task", "language_modeling",
               "--user-dir", USER_DIR, "--path", str(checkpoint), "--sampling", "--sampling-topk", "5",
               "--beam", "1", "--max-len-b", "10", "--seed", "3"]
    result = subprocess.run(command, input="the dog\ntoday a\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r"^H-\d+\t", result.stdout, flags=re.M)) == 2


@pytest.mark.parametrize("extra, message", [
    (["--decoder-chunk-size", "-1"], "need a positive --decoder-chunk-size"),
    (["--max-tokens-valid", "100"], "does not fit in --max-tokens 100"),
    (["--variant-block-multiple-min", "5"], "--variant-block-multiple-min"),
])
def test_bad_block_options_are_clear_errors(lm_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_lm(lm_data, tmp_path, ["--criterion", "cross_entropy", *extra])
