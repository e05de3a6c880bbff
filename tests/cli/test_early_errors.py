"""Options that used to fail late, obscurely or silently are refused up front with a message naming
the option: fairseq-train's precision flags and a forced fused EMA (before the first step, no
crash.pt), different encoder/decoder widths (at build), fairseq-eval-lm blocks longer than the
model's positions (instead of scoring part of the split), and a distributed run's process group
is ended after success. Layer graphs on several GPUs keep their batches (--fix-batches-to-gpus set
unless --grouped-shuffling keeps them), are advised to keep a batch iterator that fairseq would rebuild
every epoch (--update-epoch-batch-itr False), and train with legacy_ddp unless c10d is asked for."""
import re
from types import SimpleNamespace

import pytest
import torch
from fairseq import options
from fairseq.dataclass.configs import DistributedTrainingConfig, FairseqConfig
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from fairseq_cli import eval_lm, train
from omegaconf import OmegaConf

from fairseq_helpers import TINY, USER_DIR, build_model, make_dictionary, parse_model_args
from mega_fairseq.models.mega import MegaModel
from mega_fairseq.modules import MegaConfigError
from mega_fairseq.run_checks import default_ddp_backend, default_fixed_batches, kept_batch_iterator_advice
from toy_corpus import binarize


LM_FLAGS = ["--user-dir", USER_DIR, "--task", "mega_language_modeling", "--arch", "mega_lm", "--decoder-layers", "1",
            "--decoder-embed-dim", "16", "--decoder-hidden-dim", "24", "--decoder-ffn-embed-dim", "24",
            "--decoder-z-dim", "8", "--decoder-n-dim", "4", "--tokens-per-sample", "16", "--max-target-positions", "16",
            "--max-tokens", "256", "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.003",
            "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0", "--log-format", "simple"]


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    return binarize(tmp_path_factory.mktemp("lm"), {"train": 60, "valid": 20, "test": 20}, seed=5,
                    language_model=True)


def train_lm(data, save_dir, extra):
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data), *LM_FLAGS, "--save-dir", str(save_dir), *extra])
    train.main(convert_namespace_to_omegaconf(args))


@pytest.mark.parametrize("extra, message", [
    (["--bf16"], "--bf16 is fairseq's TPU option .* use --bf16-autocast"),
    (["--fp16", "--cpu"], r"--fp16 needs a CUDA GPU \(--cpu is set\)"),
    (["--ema-impl", "triton", "--cpu"], r"--ema-impl triton cannot run on cpu .*use --ema-impl fft or auto"),
], ids=["bf16", "fp16-cpu", "triton-cpu"])
def test_training_options_are_refused_before_the_first_step(lm_data, tmp_path, extra, message):
    with pytest.raises(MegaConfigError, match=message):
        train_lm(lm_data, tmp_path, ["--max-update", "1", *extra])
    assert not (tmp_path / "crash.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_without_a_gpu_is_refused(lm_data, tmp_path):
    with pytest.raises(MegaConfigError, match=r"--fp16 needs a CUDA GPU \(no CUDA GPU is available\)"):
        train_lm(lm_data, tmp_path, ["--max-update", "1", "--fp16"])


def test_different_encoder_and_decoder_widths_are_refused_at_build():
    args = parse_model_args([*TINY, "--decoder-embed-dim", "24"])
    task = SimpleNamespace(source_dictionary=make_dictionary(), target_dictionary=make_dictionary(20))
    with pytest.raises(MegaConfigError, match=r"--encoder-embed-dim \(16\) and --decoder-embed-dim \(24\) must be"):
        MegaModel.build_model(args, task)


def test_eval_lm_refuses_blocks_longer_than_the_model_takes(lm_data, tmp_path):
    train_lm(lm_data, tmp_path, ["--max-update", "1", "--cpu"])
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), [
        str(lm_data), "--user-dir", USER_DIR, "--cpu", "--path", str(tmp_path / "checkpoint_last.pt"),
        "--task", "mega_language_modeling", "--valid-block", "splits:2", "--sample-break-mode", "complete",
        "--max-tokens", "8192"])
    with pytest.raises(ValueError, match=r"2 of 2 blocks .* longer than the model's 16 positions .*--valid-block"):
        eval_lm.main(convert_namespace_to_omegaconf(args))


def test_a_successful_distributed_run_ends_its_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg = OmegaConf.structured(FairseqConfig(distributed_training=DistributedTrainingConfig(
            distributed_world_size=1)))
        distributed_utils.call_main(cfg, lambda cfg: None)
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


KEEP_ITERATOR = r"add --update-epoch-batch-itr False .*; --update-epoch-batch-itr rebuilds the batch iterator"
KEEP_GROUPED_ITERATOR = (r"add --update-epoch-batch-itr False .*; "
                         r"--update-epoch-batch-itr \(on with --grouped-shuffling\) rebuilds the batch iterator")


def both_forms(gpus, fix_batches_to_gpus=False, grouped_shuffling=False, update_epoch_batch_itr=False):
    """fairseq's options in both forms (its config's groups, a flat Namespace), each with its distributed group."""
    dataset = {"grouped_shuffling": grouped_shuffling, "update_epoch_batch_itr": update_epoch_batch_itr}
    for grouped in (True, False):
        distributed = SimpleNamespace(distributed_world_size=gpus, distributed_rank=0,
                                      fix_batches_to_gpus=fix_batches_to_gpus)
        if grouped:
            yield SimpleNamespace(distributed_training=distributed, dataset=SimpleNamespace(**dataset)), distributed
        else:
            flat = SimpleNamespace(**vars(distributed), **dataset)
            yield flat, flat


@pytest.mark.parametrize("gpus, options, device, layer_graphs, fixed", [
    (2, {}, "cuda", "auto", True), (8, {}, "cuda", "auto", True),
    (2, {"update_epoch_batch_itr": True}, "cuda", "auto", True),
    (2, {"fix_batches_to_gpus": True}, "cuda", "auto", False),
    (2, {"grouped_shuffling": True}, "cuda", "auto", False),
    (1, {}, "cuda", "auto", False), (2, {}, "cpu", "auto", False), (2, {}, "cuda", "off", False),
])
def test_layer_graphs_on_several_gpus_keep_their_batches(gpus, options, device, layer_graphs, fixed):
    """--fix-batches-to-gpus set, with a message, where fairseq would deal the batches anew every epoch
    (--grouped-shuffling keeps them too); everything else left alone, silently."""
    model = build_model(["--layer-graphs", layer_graphs])
    for cfg, distributed in both_forms(gpus, **options):
        message = default_fixed_batches(cfg, model, torch.device(device))
        assert distributed.fix_batches_to_gpus == (fixed or options.get("fix_batches_to_gpus", False))
        if fixed:
            assert message.startswith(f"layer graphs on {gpus} GPUs: --fix-batches-to-gpus set, so that each GPU")
        else:
            assert message is None


@pytest.mark.parametrize("gpus, options, device, layer_graphs, advised", [
    (2, {"grouped_shuffling": True, "update_epoch_batch_itr": True}, "cuda", "auto", KEEP_GROUPED_ITERATOR),
    (2, {"fix_batches_to_gpus": True, "update_epoch_batch_itr": True}, "cuda", "auto", KEEP_ITERATOR),
    (2, {"update_epoch_batch_itr": True}, "cuda", "auto", KEEP_ITERATOR),
    (2, {"grouped_shuffling": True}, "cuda", "auto", None), (2, {}, "cuda", "auto", None),
    (2, {"grouped_shuffling": True, "update_epoch_batch_itr": True}, "cuda", "off", None),
    (1, {"update_epoch_batch_itr": True}, "cuda", "auto", None),
    (2, {"update_epoch_batch_itr": True}, "cpu", "auto", None),
])
def test_layer_graphs_on_several_gpus_are_advised_to_keep_the_batch_iterator(gpus, options, device, layer_graphs,
                                                                             advised):
    """Advice where fairseq would rebuild the batch iterator every epoch (--update-epoch-batch-itr, on with
    --grouped-shuffling); no option changed."""
    model = build_model(["--layer-graphs", layer_graphs])
    for cfg, distributed in both_forms(gpus, **options):
        advice = kept_batch_iterator_advice(cfg, model, torch.device(device))
        assert distributed.fix_batches_to_gpus == options.get("fix_batches_to_gpus", False)
        if advised is None:
            assert advice is None
        else:
            assert re.match(f"layer graphs on {gpus} GPUs: {advised}", advice), advice


def test_fixed_batches_are_what_fairseq_train_deals_with():
    """On fairseq's own config (omegaconf): the flag fairseq-train passes to each epoch's iterator is set
    before the trainer is built; --grouped-shuffling turns --update-epoch-batch-itr on, which is advised
    against; --update-epoch-batch-itr False keeps the iterator and silences the advice."""
    common = ["/nonexistent", "--user-dir", USER_DIR, "--arch", "mega_wmt_en_de", *TINY,
              "--distributed-world-size", "2"]
    for extra, fixed, advised in (([], True, False), (["--grouped-shuffling"], False, True),
                                  (["--grouped-shuffling", "--update-epoch-batch-itr", "False"], False, False)):
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(),
                                                                         common + extra))
        assert not cfg.distributed_training.fix_batches_to_gpus
        model, cuda = build_model(), torch.device("cuda")
        assert (default_fixed_batches(cfg, model, cuda) is not None) == fixed
        assert cfg.distributed_training.fix_batches_to_gpus == fixed
        advice = kept_batch_iterator_advice(cfg, model, cuda)
        if advised:
            assert "--update-epoch-batch-itr (on with --grouped-shuffling) rebuilds the batch iterator" in advice
        else:
            assert advice is None


@pytest.mark.parametrize("gpus, backend, device, layer_graphs, expected, message", [
    (2, "pytorch_ddp", "cuda", "auto", "legacy_ddp", "--ddp-backend legacy_ddp instead of fairseq's default"),
    (4, "pytorch_ddp", "cuda", "auto", "legacy_ddp", "--ddp-backend legacy_ddp instead of fairseq's default"),
    (2, "c10d", "cuda", "auto", "c10d", r"with torch's DDP \(--ddp-backend c10d\): --ddp-backend legacy_ddp keeps"),
    (2, "legacy_ddp", "cuda", "auto", "legacy_ddp", None), (2, "no_c10d", "cuda", "auto", "no_c10d", None),
    (2, "fully_sharded", "cuda", "auto", "fully_sharded", None),
    (1, "pytorch_ddp", "cuda", "auto", "pytorch_ddp", None), (2, "pytorch_ddp", "cpu", "auto", "pytorch_ddp", None),
    (2, "pytorch_ddp", "cuda", "off", "pytorch_ddp", None),
])
def test_layer_graphs_on_several_gpus_default_to_legacy_ddp(gpus, backend, device, layer_graphs, expected, message):
    """fairseq's default backend becomes legacy_ddp (torch's DDP splits the layer graphs), an explicit c10d
    stays with advice, every other case is left alone; both forms of fairseq's options."""
    model = build_model(["--layer-graphs", layer_graphs])
    for grouped in (True, False):
        distributed = SimpleNamespace(distributed_world_size=gpus, distributed_rank=0, ddp_backend=backend)
        cfg = SimpleNamespace(distributed_training=distributed) if grouped else distributed
        said = default_ddp_backend(cfg, model, torch.device(device))
        assert distributed.ddp_backend == expected
        if message is None:
            assert said is None
        else:
            assert re.search(f"layer graphs on {gpus} GPUs.*{message}", said)


def test_legacy_ddp_default_is_what_fairseq_wraps_the_model_with():
    """On fairseq's own config (omegaconf) the default is replaced before the trainer wraps the model."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "/nonexistent", "--user-dir", USER_DIR, "--arch", "mega_wmt_en_de", *TINY, "--distributed-world-size", "2"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.distributed_training.ddp_backend == "pytorch_ddp"
    default_ddp_backend(cfg, build_model(), torch.device("cuda"))
    assert cfg.distributed_training.ddp_backend in {"legacy_ddp", "no_c10d"}  # DistributedFairseqModel's test
