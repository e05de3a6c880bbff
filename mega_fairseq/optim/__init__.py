"""Learning-rate schedulers of the original Mega recipes; batched copies for fairseq's --fp16 optimizer."""
from . import fp16_copies, linear_decay  # noqa: F401  (linear_decay registers --lr-scheduler linear_decay)
