"""mega-fairseq: Mega (Moving Average Equipped Gated Attention) as a fairseq plugin.

``--user-dir mega_fairseq`` (or ``--user-dir user_dir`` once installed) registers
the models, architectures, learning-rate schedulers and the checkpoint-loading
allow-list, and fixes two fairseq bugs (see fairseq_fixes). ``mega_fairseq.modules`` needs torch only.
"""
__version__ = "0.1.0"

try:
    import fairseq  # noqa: F401
except ImportError:  # the torch-only modules stay usable without fairseq
    fairseq = None

if fairseq is not None:
    from . import checkpoint_safety, criterions, fairseq_fixes, models, optim, tasks  # noqa: F401

    checkpoint_safety.allow_fairseq_checkpoints()
    fairseq_fixes.keep_last_batch()
    fairseq_fixes.restore_numpy_compat()
