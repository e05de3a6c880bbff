"""Shared pytest setup.

The tests are laid out like the package (ops/, modules/, models/, tasks/, cli/ for fairseq's entry
points end to end); the builders and seeded inputs they share are modules of tests/helpers/, which
setup.cfg puts on the import path (``from reference import randn``). No test imports another.

The module tests run thousands of tiny CPU ops: with several intra-op threads the
thread hand-off costs far more than the work (and stalls on a busy machine), so
one thread keeps the suite fast and stable.
"""
import torch

torch.set_num_threads(1)
