"""Host work that fairseq's training loop repeats every update or epoch, made cheap. On a GPU an update of
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
  modules are all already in the asked mode returns at once (a check of every module's flag, visited as
  ``submodules`` lists them: 0.1 ms, half the time of a check over ``nn.Module.modules``); otherwise
  ``nn.Module.train`` runs as before.
* The task's ``train_step`` passes the update number down with ``model.set_num_updates`` every update: fairseq
  visits every module and asks ``hasattr(module, "set_num_updates")``, and each module without one answers
  by raising and catching an AttributeError inside ``nn.Module.__getattr__``; an encoder visits its own
  modules again. The same modules are called in the same order here (``submodules``; an encoder's
  ``apply``), asked with ``has_attribute``, which looks where getattr looks without the exception: 0.79 ->
  0.42 ms an update for mega_wmt_en_de on the CPU.
* At every epoch's start ``Trainer.get_train_iterator`` keeps the training set's first batch as the dummy batch
  of updates where a GPU has no batch of its own, and ``EpochBatchIterator.first_batch`` collates it anew
  in the training process each time: Multi30k at 8192 tokens, ~20 ms an epoch on the CPU (64 ms at 32,768),
  while every GPU waits. Here it is collated once for each set of batches the iterator holds (its frozen
  batches: the same every epoch unless the batches are remade) and given again after that. A dummy batch
  only lends its shapes: its loss is multiplied by 0.

All apply to every fairseq model loaded with the plugin (the Transformer baselines of benchmarks/ too).
"""
import functools
import types
from typing import List

import torch
from fairseq.data.iterators import EpochBatchIterator
from fairseq.models import BaseFairseqModel, FairseqEncoder
from fairseq.trainer import Trainer
from torch import nn

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


def submodules(root: nn.Module) -> List[nn.Module]:
    """``root`` and the modules under it, each once, in ``root.modules()``'s order (depth first, a module
    where it is first met), without the names and generators ``nn.Module.modules`` makes on the way."""
    seen, found = set(), []

    def visit(module: nn.Module) -> None:
        seen.add(id(module))
        found.append(module)
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                visit(child)
    visit(root)
    return found


_ABSENT = object()


def has_attribute(module: nn.Module, name: str) -> bool:
    """``hasattr(module, name)`` without an exception for a missing name. A method of the class answers yes;
    a name the class lacks is looked up where getattr then looks: the instance's attributes, then (in
    ``nn.Module.__getattr__``) its parameters, buffers and submodules. Any other class attribute (a property
    may raise), or a class with its own ``__getattr__``, is asked with ``hasattr``."""
    on_class = getattr(type(module), name, _ABSENT)
    if type(module).__getattr__ is not nn.Module.__getattr__ or (
            on_class is not _ABSENT and not isinstance(on_class, types.FunctionType)):
        return hasattr(module, name)
    return (on_class is not _ABSENT or name in module.__dict__ or name in module._parameters
            or name in module._buffers or name in module._modules)


def _train_unless_settled(train):
    @functools.wraps(train)
    def wrapper(self, mode: bool = True):
        if isinstance(mode, bool) and all(module.training is mode for module in submodules(self)):
            return self
        return train(self, mode)

    return wrapper


def _pass_update(owner: nn.Module, module: nn.Module, num_updates) -> None:
    """fairseq's step of passing the update number from ``owner`` on to ``module``, asked without the exception."""
    if module != owner and has_attribute(module, "set_num_updates"):
        module.set_num_updates(num_updates)


def _passing_updates_to_submodules(set_num_updates):
    @functools.wraps(set_num_updates)
    def wrapper(self, num_updates):
        for module in submodules(self):
            _pass_update(self, module, num_updates)

    return wrapper


def _passing_updates_through_apply(set_num_updates):
    @functools.wraps(set_num_updates)
    def wrapper(self, num_updates):
        self.apply(lambda module: _pass_update(self, module, num_updates))

    return wrapper


def skip_settled_mode_switches() -> None:
    """Patch fairseq's models' ``train`` once (see the module's docstring)."""
    patch_once(BaseFairseqModel, "train", _train_unless_settled)


def pass_updates_without_exceptions() -> None:
    """Patch ``set_num_updates`` of fairseq's models and encoders once (see the module's docstring)."""
    patch_once(BaseFairseqModel, "set_num_updates", _passing_updates_to_submodules)
    patch_once(FairseqEncoder, "set_num_updates", _passing_updates_through_apply)


def _first_batch_collated_once(first_batch):
    @functools.wraps(first_batch)
    def collated_once(self):
        batches = self.frozen_batches
        kept = self.__dict__.get("_mega_first_batch")
        if kept is None or kept[0] is not batches:
            kept = self._mega_first_batch = (batches, first_batch(self))
        return kept[1]

    return collated_once


def collate_first_batch_once() -> None:
    """Patch fairseq's ``EpochBatchIterator.first_batch`` once (see the module's docstring)."""
    patch_once(EpochBatchIterator, "first_batch", _first_batch_collated_once)
