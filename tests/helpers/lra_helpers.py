"""Helpers of the LRA and Speech Commands tests: models from command-line options, fairseq-train runs."""
import os
from types import SimpleNamespace

import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import train

from fairseq_helpers import USER_DIR, make_dictionary
from mega_fairseq.models.lra import LRAModel, SCRawModel

PAD = 1  # fairseq's padding index
TINY_MEGA = ["--encoder-layers", "2", "--encoder-embed-dim", "16", "--encoder-hidden-dim", "24", "--z-dim", "8",
             "--n-dim", "4", "--classifier-out-dim", "12", "--dropout", "0", "--attention-dropout", "0",
             "--act-dropout", "0"]
TINY_TRANSFORMER = ["--encoder-layers", "2", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "24",
                    "--encoder-attention-heads", "2", "--classifier-out-dim", "12", "--dropout", "0",
                    "--attention-dropout", "0", "--act-dropout", "0"]
TRAIN_FLAGS = ["--criterion", "lra_cross_entropy", "--best-checkpoint-metric", "accuracy",
               "--maximize-best-checkpoint-metric", "--optimizer", "adam", "--lr", "0.003", "--adam-betas",
               "(0.9, 0.98)", "--clip-norm", "1.0", "--sentence-avg", "--lr-scheduler", "linear_decay",
               "--warmup-updates", "2", "--warmup-init-lr", "1e-07", "--required-batch-size-multiple", "1",
               "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "1", "--log-format", "simple",
               "--log-interval", "1"]


def model_args(arch: str, extra=()):
    """The model arguments fairseq-train builds from these options."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data", "--user-dir", USER_DIR, "--arch", arch, *extra])


def fake_task(input_type: str = "text", num_classes: int = 4, paired: bool = False, input_channels: int = 1,
              num_words: int = 20):
    """What the model reads from its task."""
    return SimpleNamespace(input_type=input_type, input_channels=input_channels, num_classes=num_classes,
                           paired=paired, source_dictionary=make_dictionary(num_words))


def build(arch: str, extra=(), task=None, seed: int = 0):
    """A model in float64 and eval mode."""
    torch.manual_seed(seed)
    task = task or fake_task()
    model_class = SCRawModel if arch.startswith("mega_sc") else LRAModel
    return model_class.build_model(model_args(arch, extra), task).double().eval()


def run_train(data_dir, save_dir, task_args, arch: str, extra=(), max_update: int = 6, batch_size: int = 8):
    """Train with fairseq_cli.train.main; returns the best validation accuracy."""
    reset_best_checkpoint_score()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_dir), "--user-dir", USER_DIR, *task_args, "--arch", arch, *extra, *TRAIN_FLAGS,
        "--save-dir", str(save_dir), "--max-update", str(max_update), "--total-num-update", str(max_update),
        "--batch-size", str(batch_size)])
    try:
        train.main(convert_namespace_to_omegaconf(args))
    finally:
        reset_best_checkpoint_score()
    assert os.path.exists(os.path.join(save_dir, "checkpoint_best.pt"))
    state = torch.load(os.path.join(save_dir, "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == max_update
    return state["extra_state"]["best"]  # the best --best-checkpoint-metric value, the accuracy here


def reset_best_checkpoint_score():
    """fairseq keeps the best validation score of a process on a function attribute: forget it between runs."""
    from fairseq import checkpoint_utils

    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best


def setup(data_dir, task_args, arch: str, extra=()):
    """The task and model fairseq-train would build (the model first: the task takes --max-positions from it)."""
    from fairseq import tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_dir), "--user-dir", USER_DIR, *task_args, "--arch", arch,
                                                *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return task, model


def run_validate(data_dir, checkpoint, task_args, subset: str = "test"):
    """fairseq-validate in-process (it logs the subset's loss and accuracy)."""
    from fairseq_cli import validate

    argv = [str(data_dir), "--user-dir", USER_DIR, *task_args, "--path", str(checkpoint), "--valid-subset", subset,
            "--batch-size", "8", "--criterion", "lra_cross_entropy", "--num-workers", "0"]
    parser = options.get_validation_parser()
    args = options.parse_args_and_arch(parser, argv)
    override_args = options.parse_args_and_arch(options.get_validation_parser(), argv, suppress_defaults=True)
    validate.main(convert_namespace_to_omegaconf(args), override_args=override_args)


def token_batch(lengths, num_words=20, extra_pads=0, seed=0):
    """(B, max(lengths) + extra_pads) right-padded tokens ending with eos (2), and the unpadded rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.cat([torch.randint(4, num_words + 4, (n - 1,), generator=generator), torch.tensor([2])])
            for n in lengths]
    width = max(lengths) + extra_pads
    batch = torch.full((len(rows), width), PAD)
    for i, row in enumerate(rows):
        batch[i, :len(row)] = row
    return batch, rows
