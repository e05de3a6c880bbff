"""Learning-rate schedulers of the original Mega recipes."""
from . import linear_decay  # noqa: F401  (registers --lr-scheduler linear_decay)
