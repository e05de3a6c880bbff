"""mega-fairseq: Mega (Moving Average Equipped Gated Attention) as a fairseq plugin.

``--user-dir mega_fairseq`` (or ``--user-dir user_dir`` once installed) registers
the models, architectures, learning-rate schedulers and the checkpoint-loading
allow-list, makes checkpoint writes atomic and loads safe (see checkpoint_safety),
checks fairseq's run options up front (see run_checks), fixes fairseq bugs (see
fairseq_fixes), batches fairseq's per-parameter gradient and weight copies (see
batched_copies), makes the host work fairseq repeats every update or epoch cheap (see update_overheads), keeps
the garbage collector's full collections short once layer graphs are recorded (see garbage_collection) and
sums the statistics of several GPUs without waiting for the backward pass (see stats_sync).
``mega_fairseq.modules`` needs torch only.
"""
__version__ = "0.1.0"

try:
    import fairseq  # noqa: F401
except ImportError:  # the torch-only modules stay usable without fairseq
    fairseq = None

if fairseq is not None:
    from . import (batched_copies, checkpoint_safety, criterions, fairseq_fixes, garbage_collection,  # noqa: F401
                   models, optim, run_checks, stats_sync, tasks, update_overheads)

    checkpoint_safety.allow_fairseq_checkpoints()
    checkpoint_safety.write_checkpoints_atomically()
    checkpoint_safety.resume_from_readable_checkpoint()
    checkpoint_safety.refuse_non_finite_checkpoints()
    fairseq_fixes.keep_last_batch()
    fairseq_fixes.restore_numpy_compat()
    fairseq_fixes.end_process_group_after_success()
    fairseq_fixes.fork_data_loader_workers()
    fairseq_fixes.deal_batches_to_gpus()
    run_checks.check_options_before_training()
    batched_copies.batch_fp16_optimizer_copies()
    batched_copies.batch_legacy_ddp_all_reduce()
    update_overheads.seed_generators_directly()
    update_overheads.skip_settled_mode_switches()
    update_overheads.pass_updates_without_exceptions()
    update_overheads.collate_first_batch_once()
    stats_sync.sum_statistics_without_waiting()
    garbage_collection.freeze_heap_after_recordings()
