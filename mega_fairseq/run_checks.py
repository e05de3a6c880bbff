"""Run options checked, and two set, before fairseq-train builds its trainer, instead of failing late,
obscurely or slowly.

* ``--bf16`` is fairseq's TPU option (it implies ``--tpu``); without torch_xla it fails with
  ``'NoneType' object has no attribute 'xla_device'``. Mega's bfloat16 on a GPU is ``--bf16-autocast``.
* ``--fp16`` without a CUDA GPU (none, or ``--cpu``) fails in fairseq's fp16 optimizer with
  ``Torch not compiled with CUDA enabled``.
* ``--ema-impl triton`` where the fused scan cannot run (no GPU, ``--cpu``, no triton, an EMA
  n-dim that is not a power of two) would fail only at the first training step.

Layer graphs on several GPUs (see ``default_ddp_backend``, ``default_fixed_batches`` and
``kept_batch_iterator_advice``): fairseq's default ``--ddp-backend`` becomes ``legacy_ddp`` (torch's DDP splits
the graphs; an explicit ``c10d`` is kept), ``--fix-batches-to-gpus`` is set unless ``--grouped-shuffling`` keeps
the batches, and a batch iterator that fairseq would rebuild every epoch (``--update-epoch-batch-itr``, on with
``--grouped-shuffling``) is advised to be kept. All logged.
"""
import functools
import importlib.util
import logging
from typing import Optional

import torch

from .modules import MegaConfigError
from .patching import patch_once


def check_run_options(cfg, model) -> None:
    """Refuse precision flags and a forced fused EMA that cannot work on the device fairseq's
    trainer moves the model to; for layer graphs on several GPUs set the DDP backend and fixed batches
    (logged by the first rank). ``cfg``: fairseq's config, or a Namespace of all options."""
    common = cfg.common if hasattr(cfg, "common") else cfg
    device = torch.device("cuda" if torch.cuda.is_available() and not common.cpu else "cpu")
    if (common.bf16 or common.memory_efficient_bf16) and importlib.util.find_spec("torch_xla") is None:
        raise MegaConfigError("--bf16 is fairseq's TPU option (it implies --tpu and needs torch_xla): "
                              "for bfloat16 on a GPU use --bf16-autocast instead")
    if (common.fp16 or common.memory_efficient_fp16) and device.type != "cuda":
        where = "--cpu is set" if common.cpu else "no CUDA GPU is available"
        raise MegaConfigError(f"--fp16 needs a CUDA GPU ({where}): drop --fp16 to train in float32")
    probe = torch.empty(0, device=device)
    for name, module in model.named_modules():
        if getattr(module, "impl", None) == "triton" and hasattr(module, "fused_unavailable"):
            reason = module.fused_unavailable(probe, None)
            if reason is not None:
                raise MegaConfigError(f"--ema-impl triton cannot run on {device} ({name}): {reason}; "
                                      f"use --ema-impl fft or auto")
    distributed = getattr(cfg, "distributed_training", cfg)
    first_rank = (getattr(distributed, "distributed_rank", 0) or 0) == 0
    for check in (default_ddp_backend, default_fixed_batches, kept_batch_iterator_advice):
        message = check(cfg, model, device)
        if message is not None and first_rank:  # one message a run
            logging.getLogger(__name__).warning(message)


def _gpus_on_graphs(cfg, model, device: torch.device) -> int:
    """The number of GPUs when ``model`` trains on layer graphs on several GPUs, else 0. ``cfg``: fairseq's
    config or a flat Namespace."""
    distributed = getattr(cfg, "distributed_training", cfg)
    gpus = getattr(distributed, "distributed_world_size", 1) or 1
    on_graphs = any(getattr(module, "layer_graphs", None) == "auto" for module in model.modules())
    return gpus if device.type == "cuda" and gpus > 1 and on_graphs else 0


def default_fixed_batches(cfg, model, device: torch.device) -> Optional[str]:
    """When ``model`` trains on layer graphs on several GPUs: ``--fix-batches-to-gpus`` set in ``cfg`` (on every
    rank) unless ``--grouped-shuffling`` keeps the batches, with a message. None otherwise. Each GPU records a
    CUDA graph per batch shape it meets: with the batches dealt anew every epoch (fairseq's default) it keeps
    meeting shapes it has not recorded for many epochs, and every other GPU waits for it."""
    distributed = getattr(cfg, "distributed_training", cfg)
    dataset = getattr(cfg, "dataset", cfg)
    gpus = _gpus_on_graphs(cfg, model, device)
    if not gpus or getattr(distributed, "fix_batches_to_gpus", False) or getattr(dataset, "grouped_shuffling", False):
        return None
    distributed.fix_batches_to_gpus = True
    return (f"layer graphs on {gpus} GPUs: --fix-batches-to-gpus set, so that each GPU keeps its batches every "
            f"epoch and records its graphs in the first two; with fairseq's default the batches move between the "
            f"GPUs each epoch and the GPUs keep recording graphs for new batch shapes for many epochs (2 GPUs on "
            f"Multi30k: 0.16x the words/s of one GPU with --update-freq 2 over updates 130-260); "
            f"--layer-graphs off keeps fairseq's dealing")


def kept_batch_iterator_advice(cfg, model, device: torch.device) -> Optional[str]:
    """Advice to add --update-epoch-batch-itr False when ``model`` trains on layer graphs on several GPUs and
    fairseq would rebuild the batch iterator every epoch (``--update-epoch-batch-itr``, on with
    ``--grouped-shuffling``); None otherwise. A rebuilt iterator brings new data-loader workers in every
    GPU's process every epoch (forked since fairseq_fixes.fork_data_loader_workers; measured when they
    started as fresh interpreters importing torch and fairseq)."""
    dataset = getattr(cfg, "dataset", cfg)
    gpus = _gpus_on_graphs(cfg, model, device)
    if not gpus or not getattr(dataset, "update_epoch_batch_itr", False):
        return None
    cause = " (on with --grouped-shuffling)" if getattr(dataset, "grouped_shuffling", False) else ""
    return (f"layer graphs on {gpus} GPUs: add --update-epoch-batch-itr False (or use --fix-batches-to-gpus "
            f"instead of --grouped-shuffling); --update-epoch-batch-itr{cause} rebuilds the batch iterator and "
            f"its data loader every epoch, so each GPU's process starts new data-loader workers every epoch (2 GPUs "
            f"on Multi30k with --grouped-shuffling, workers started as fresh interpreters: ~18 s an epoch, 0.40x "
            f"the words/s of --fix-batches-to-gpus)")


def default_ddp_backend(cfg, model, device: torch.device) -> Optional[str]:
    """When ``model`` trains on layer graphs on several GPUs: fairseq's default ``--ddp-backend`` (pytorch_ddp,
    torch's DistributedDataParallel) set to ``legacy_ddp`` in ``cfg`` (on every rank), with a message; an
    explicit ``c10d`` kept, with advice. None otherwise. torch.compile splits the layer graphs at DDP's
    gradient buckets (more graphs to replay, a hook per gradient); fairseq's legacy_ddp keeps them whole
    and all-reduces every gradient at once after the backward pass (batched: see batched_copies); the
    losses are the same."""
    distributed = getattr(cfg, "distributed_training", cfg)
    gpus = _gpus_on_graphs(cfg, model, device)
    backend = getattr(distributed, "ddp_backend", "pytorch_ddp")
    measured = "2 GPUs on Multi30k with --fix-batches-to-gpus: 1.34x the words/s of torch's DDP"
    if gpus and backend == "pytorch_ddp":
        distributed.ddp_backend = "legacy_ddp"
        return (f"layer graphs on {gpus} GPUs: --ddp-backend legacy_ddp instead of fairseq's default pytorch_ddp, "
                f"which would split each layer stack's graphs at its gradient buckets ({measured}); pass "
                f"--ddp-backend c10d to keep torch's DDP")
    if gpus and backend == "c10d":
        return (f"layer graphs on {gpus} GPUs with torch's DDP (--ddp-backend c10d): --ddp-backend legacy_ddp "
                f"keeps each layer stack's graphs whole and all-reduces the gradients at once after the backward "
                f"pass ({measured})")
    return None


def _checking_trainer_init(init):
    @functools.wraps(init)
    def wrapper(self, cfg, task, model, criterion, *args, **kwargs):
        check_run_options(cfg, model)
        init(self, cfg, task, model, criterion, *args, **kwargs)

    return wrapper


def check_options_before_training() -> None:
    """Run ``check_run_options`` when fairseq's Trainer is created (patched once)."""
    from fairseq.trainer import Trainer

    patch_once(Trainer, "__init__", _checking_trainer_init)
