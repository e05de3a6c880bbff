"""``--lr-scheduler linear_decay``: linear (or power) warmup, then linear decay to an end rate."""
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class LinearDecayConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warm the learning rate up over the first N updates"})
    warmup_power: int = field(default=1, metadata={"help": "warmup follows init + (lr - init) * (n / N) ** power"})
    warmup_init_lr: float = field(
        default=-1, metadata={"help": "learning rate at update 0 of the warmup; default 0 (or --lr without warmup)"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate reached at --total-num-update"})
    total_num_update: int = field(
        default=1000000, metadata={"help": "update at which the decay ends (set it to --max-update)"})
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("linear_decay", dataclass=LinearDecayConfig)
class LinearDecaySchedule(FairseqLRScheduler):
    """lr(n) = init + (lr - init) (n / W)^p for n <= W, then decays linearly to
    ``end_learning_rate`` at n = T and stays there."""

    def __init__(self, cfg: LinearDecayConfig, optimizer):
        super().__init__(cfg, optimizer)
        if len(cfg.lr) > 1:
            raise ValueError("--lr-scheduler linear_decay takes a single --lr value; use --lr-scheduler fixed "
                             "for a per-epoch list")
        self.peak_lr = cfg.lr[0]
        if cfg.warmup_updates < 0:
            raise ValueError(f"--warmup-updates must be >= 0, got {cfg.warmup_updates}")
        if cfg.total_num_update <= cfg.warmup_updates:
            raise ValueError(f"--total-num-update ({cfg.total_num_update}) must be larger than --warmup-updates "
                             f"({cfg.warmup_updates})")
        if cfg.warmup_updates == 0:
            self.init_lr = self.peak_lr
        else:
            self.init_lr = 0.0 if cfg.warmup_init_lr < 0 else cfg.warmup_init_lr
            if self.init_lr >= self.peak_lr:
                raise ValueError(f"--warmup-init-lr ({self.init_lr}) must be below --lr ({self.peak_lr})")
        self.lr = self.init_lr
        self.optimizer.set_lr(self.lr)

    def lr_at(self, num_updates: int) -> float:
        cfg = self.cfg
        if num_updates <= cfg.warmup_updates:
            progress = (num_updates / cfg.warmup_updates) ** cfg.warmup_power if cfg.warmup_updates else 1.0
            return self.init_lr + (self.peak_lr - self.init_lr) * progress
        if num_updates >= cfg.total_num_update:
            return cfg.end_learning_rate
        remaining = (cfg.total_num_update - num_updates) / (cfg.total_num_update - cfg.warmup_updates)
        return cfg.end_learning_rate + (self.peak_lr - cfg.end_learning_rate) * remaining

    def step(self, epoch, val_loss=None):
        """The rate does not change at epoch boundaries."""
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        self.lr = self.lr_at(num_updates)
        self.optimizer.set_lr(self.lr)
        return self.lr
