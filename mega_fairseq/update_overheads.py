"""Host work that fairseq's training loop repeats every update, made cheap. On a GPU an update of
Multi30k is bound by the host (benchmarks/RESULTS.md: an update takes ~25 ms besides its batches'
forward and backward), so every millisecond of host work saved is a millisecond of the update.

* ``Trainer._set_seed`` seeds every update through ``utils.set_torch_seed``, which saves the RNG states
  (never restored there) and calls ``torch.manual_seed``. That also seeds the device types torch has not
  initialized (XPU and MTIA on a CUDA machine) lazily, and each lazy seed formats the whole Python stack
  (``traceback.format_stack``) to report later where it was set: on the CPU at the depth of fairseq-train,
  about 1.2 ms an update for the three (profile_train_step --phase-times). With CUDA initialized, the
  same seeds are set directly on the generators that exist: the CPU's and each CUDA device's. fairseq's
  own runs everywhere else (a CPU run, a TPU, another accelerator type available).
* ``nn.Module.train`` visits and sets every module; fairseq calls ``model.train()`` twice an update (the
  trainer and the task: about 300 modules each in mega_wmt_en_de, 1 ms on the CPU). A fairseq model whose
  modules are all already in the asked mode returns at once (a check of every module's flag, a fifth of
  the time); otherwise ``nn.Module.train`` runs as before.

Both apply to every fairseq model loaded with the plugin (the Transformer baselines of benchmarks/ too).
"""
import functools

import torch
from fairseq.models import BaseFairseqModel
from fairseq.trainer import Trainer

from .patching import patch_once


@functools.lru_cache(maxsize=None)
def _other_accelerator_available() -> bool:
    """Whether torch.manual_seed would seed an available device type besides the CPU and CUDA (asked once)."""
    return (torch.backends.mps.is_available() or torch.xpu.is_available() or torch.mtia.is_available()
            or hasattr(torch, torch._C._get_privateuse1_backend_name()))


def _seeding_generators(set_seed):
    @functools.wraps(set_seed)
    def wrapper(self):
        if self.tpu or not torch.cuda.is_initialized() or _other_accelerator_available():
            return set_seed(self)
        seed = self.cfg.common.seed + self.get_num_updates()
        torch.default_generator.manual_seed(seed)
        for generator in torch.cuda.default_generators:
            generator.manual_seed(seed)

    return wrapper


def seed_generators_directly() -> None:
    """Patch fairseq's Trainer._set_seed once (see the module's docstring)."""
    patch_once(Trainer, "_set_seed", _seeding_generators)


def _train_unless_settled(train):
    @functools.wraps(train)
    def wrapper(self, mode: bool = True):
        if isinstance(mode, bool) and all(module.training is mode for module in self.modules()):
            return self
        return train(self, mode)

    return wrapper


def skip_settled_mode_switches() -> None:
    """Patch fairseq's models' ``train`` once (see the module's docstring)."""
    patch_once(BaseFairseqModel, "train", _train_unless_settled)
