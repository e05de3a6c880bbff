"""Shared pytest setup.

The module tests run thousands of tiny CPU ops: with several intra-op threads the
thread hand-off costs far more than the work (and stalls on a busy machine), so
one thread keeps the suite fast and stable.
"""
import torch

torch.set_num_threads(1)
