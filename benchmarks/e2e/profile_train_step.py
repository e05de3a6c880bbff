"""Where a fairseq training update's time goes: host vs GPU, per model, on real batches.

    python benchmarks/e2e/profile_train_step.py DATA_BIN --arch mega_wmt_en_de [--steps 40] [-- fairseq options]

Builds fairseq's Trainer exactly as fairseq-train does (same task, criterion, optimizer, --fp16, the data
loader's 2 worker processes of the end-to-end scripts: with none, the loader's buffering thread collates every
batch and competes with the main thread for the interpreter; in one 2-GPU run on 2 x H200 it took 19 ms of CPU
an update beside the main thread's 35),
runs ``--warmup`` updates, then times ``--steps`` updates over the real training batches (wall clock,
median and mean ms per update, words/s), and profiles ``--profile-steps`` more with torch.profiler:
CUDA kernel time per update (how long the GPU is busy), kernels launched per update, and the host
time of the forward, backward and optimizer phases (fairseq's record_function regions). An update
whose wall time is far above its kernel time is host-bound. Prints one line per model; --json
appends the figures to a file. ``--gpus 2`` trains on two GPUs as fairseq-train does (with layer graphs
the plugin's default backend is legacy_ddp; pass --fix-batches-to-gpus after ``--`` to keep each GPU's
batches) and reports the first GPU's update, its kernel time and its NCCL kernel time separately.

With layer graphs (Mega on a GPU) it also counts the CUDA graph captures of the warm-up and the
seconds spent inside them (``torch.cuda.graph``, whose entry empties the caching allocator), and
``--keep-allocator-cache`` makes that entry keep the cache (an experiment: does re-allocating the eager
memory after every capture cost start-up time? On 2 x H200, one process a GPU at once, the first
recording update took 165 ms with the cache kept against 222 ms: one update each).
``--phase-times N`` times each step of fairseq's ``Trainer.train_step`` on the host (seed, ``model.train()``,
forward, backward, all-reduce, clipping, optimizer step, logging) over N updates run back to back without
added syncs: where the host's time per update goes, and which step waits for the GPU (with several GPUs,
one line per GPU: a step where one GPU waits for the other, such as the exchange of the update's
statistics, is long on the waiting GPU and short on the other), and the CPU time per update of the process's
busiest threads (the main thread against the data loader's, CUDA's and NCCL's: do they compete with the main
thread for the interpreter or the cores?). ``--sync-sites N``
lists where the host waits for the GPU in N updates (torch's CUDA sync debug mode: every synchronizing
operation, counted by the innermost call site outside torch).
``--batch-times N`` times N updates of one batch each (one epoch's batches), synchronized, and prints what
two GPUs would pay for waiting on the slower of their two batches: the mean slower batch of random pairs
(``--fix-batches-to-gpus``: each GPU keeps its batches in its own order) and of neighbours in length
(``--grouped-shuffling``), against one batch's mean.
The garbage collector's pauses over the warm-up are printed too (seconds, full collections, longest pause);
``--gc-unfrozen`` (an experiment) runs without the plugin's heap freezing (mega_fairseq.garbage_collection),
the before of a same-machine comparison. ``--bind-cpus`` (an experiment) binds each GPU's process to its own
share of the physical cores; ``--gc-threshold N`` (an experiment) collects the youngest generation every N
allocations instead of 700; ``--gc-at-update-ends K`` (an experiment) keeps the collector out of the updates and
collects after each (fully every K-th); ``--logging-without-waits`` (an experiment) logs each update's meters
without the six host waits of fairseq's ``Trainer._reduce_and_log_stats``. ``--object-census N`` counts what N updates leave to the garbage collector: the
tracked objects that stay alive and the cyclic garbage, per update, by type, and what holds the new objects of the
types that grew most (referrers named by type, a dict by its first keys; tensors also by device, dtype and shape),
with the CUDA graphs recorded and the graph outputs whose cached tensors the graph trees built in those updates;
``--census-windows W`` takes W such counts one after the other (does the growth go on, or was it one event?).
``--graph-tree-times`` lists where CUDA graph trees spend the warm-up: inclusive seconds and calls of
their warm-up, recording and execution methods (how the layer graphs' start-up divides between running
shapes eagerly, capturing, and the trees' bookkeeping).
``--skip-graph-warmup`` (an experiment) records each new batch shape at its first batch instead of its
second (CUDA graph trees run a new graph once eagerly first): does recording without that eager run work,
and what does it save?
"""
import argparse
import collections
import contextlib
import cProfile
import functools
import gc
import io
import inspect
import itertools
import pstats
import json
import os
import statistics
import sys
import threading
import time
import traceback
import warnings

import torch
from fairseq import options, tasks, utils
from fairseq.distributed import utils as distributed_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

PHASES = ("forward", "backward", "clip-grads", "optimizer")
COMMON = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "1.0", "--lr", "7e-4",
          "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "500", "--criterion",
          "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.3",
          "--share-all-embeddings", "--seed", "1", "--num-workers", "2"]


def fairseq_config(data: str, arch: str, max_tokens: int, gpus: int, extra):
    """fairseq-train's configuration of these options (``gpus`` > 1: one process a GPU)."""
    repo_user_dir = __file__.rsplit("/benchmarks/", 1)[0] + "/mega_fairseq"
    distributed = ["--distributed-world-size", str(gpus)]  # fairseq's default: all GPUs
    argv = [data, "--user-dir", repo_user_dir, "--arch", arch, "--max-tokens", str(max_tokens), *COMMON,
            *distributed, *extra]  # extra options last: they override (e.g. --ddp-backend c10d)
    if not torch.cuda.is_available():
        argv.append("--cpu")
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    return convert_namespace_to_omegaconf(args)


def build_trainer(cfg):
    utils.import_user_module(cfg.common)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=True)
    params = sum(p.numel() for p in model.parameters())
    return trainer, epoch_itr, params


def batches(epoch_itr, fix_batches_to_gpus: bool):
    """Endless stream of training samples (epochs repeat), dealt to the GPUs as fairseq-train does."""
    while True:
        for sample in epoch_itr.next_epoch_itr(shuffle=True, fix_batches_to_gpus=fix_batches_to_gpus):
            yield sample


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class GarbageCollectionPauses:
    """Milliseconds Python's cyclic garbage collector paused the process while entered (``gc.callbacks``), the
    longest pause, and the number of full collections (of the oldest generation, 2)."""

    def __init__(self):
        self.ms, self.longest_ms, self.full = 0.0, 0.0, 0
        self._start = None

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            pause = (time.perf_counter() - self._start) * 1e3
            self.ms += pause
            self.longest_ms = max(self.longest_ms, pause)
            self.full += info["generation"] == 2
            self._start = None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def physical_core(cpu: int) -> tuple:
    """(package, core) of logical CPU ``cpu`` (Linux sysfs)."""
    topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    return tuple(int(open(f"{topology}/{name}").read()) for name in ("physical_package_id", "core_id"))


def exclusive_cpus(rank: int, world: int, allowed, core_of=physical_core) -> set:
    """The logical CPUs of process ``rank`` of ``world`` when the physical cores holding the ``allowed`` CPUs are
    split into ``world`` contiguous groups (package-major order): no two processes share a core."""
    cores = collections.defaultdict(set)
    for cpu in allowed:
        cores[core_of(cpu)].add(cpu)
    order = sorted(cores)
    if len(order) < world:
        raise ValueError(f"--bind-cpus: {len(order)} physical cores cannot be split among {world} processes")
    share = order[rank * len(order) // world:(rank + 1) * len(order) // world]
    return set().union(*(cores[core] for core in share))


def bind_to_exclusive_cores(rank: int, world: int) -> set:
    """Bind every thread of this process (and the data-loader workers it forks later) to its exclusive share
    of the allowed CPUs (``exclusive_cpus``); returns that share."""
    cpus = exclusive_cpus(rank, world, os.sched_getaffinity(0))
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), cpus)
    return cpus


def collect_at_update_ends(full_every: int) -> None:
    """Experiment: fairseq's Trainer.train_step runs with the collector off; after each update the two younger
    generations are collected, and after every ``full_every``-th a full collection runs and its survivors are
    frozen. Every GPU's process collects at the same updates, so no GPU waits for another's pause."""
    from fairseq.trainer import Trainer

    train_step = Trainer.train_step
    updates = itertools.count(1)

    @functools.wraps(train_step)
    def collecting_after(self, *args, **kwargs):
        gc.disable()
        try:
            return train_step(self, *args, **kwargs)
        finally:
            if next(updates) % full_every == 0:
                gc.collect()
                gc.freeze()
            else:
                gc.collect(1)
            gc.enable()

    Trainer.train_step = collecting_after


def log_without_waiting() -> None:
    """Experiment: fairseq's Trainer._reduce_and_log_stats, which runs after the optimizer step, logs the same
    meters without making the host wait for the GPU. fairseq's checks that the grad norm is finite (only with
    --amp can a non-finite one get there: otherwise train_step has raised or replaced it), builds the clip
    meter's 100 and 0 from host numbers (two blocking copies), and returns the update's smoothed values (three
    roundings of GPU tensors) that fairseq-train only tests against None; here the clip meter is computed on
    the GPU from the grad norm (a tensor, as fairseq's clipping returns) and the return value holds only
    ``sample_size``."""
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    reduce_and_log_stats = Trainer._reduce_and_log_stats

    @functools.wraps(reduce_and_log_stats)
    def logging_without_waits(self, logging_outputs, sample_size, grad_norm=None):
        if self.tpu or self.cfg.common.amp:
            return reduce_and_log_stats(self, logging_outputs, sample_size, grad_norm)
        if grad_norm is not None:
            metrics.log_speed("ups", 1.0, priority=100, round=2)
            metrics.log_scalar("gnorm", grad_norm, priority=400, round=3)
            clip_norm = self.cfg.optimization.clip_norm
            if clip_norm > 0:
                clipped = (grad_norm > clip_norm).to(grad_norm.dtype) * 100
                metrics.log_scalar("clip", clipped, priority=500, round=1)
        with metrics.aggregate() as aggregate:
            if logging_outputs is not None:
                self.task.reduce_metrics(logging_outputs, self.get_criterion())
            if "loss" not in aggregate:
                metrics.log_scalar("loss", -1)
        return {"sample_size": sample_size}

    Trainer._reduce_and_log_stats = logging_without_waits


def unpatch_heap_freezing() -> None:
    """Restore fairseq's Trainer.train_step where the plugin's heap freezing is its outermost patch."""
    from fairseq.trainer import Trainer

    if getattr(Trainer.train_step, "mega_patches", ())[-1:] == ("_freezing_after_recordings",):
        Trainer.train_step = Trainer.train_step.__wrapped__


def timed_updates(trainer, stream, steps: int, captures=None) -> list:
    """Each of ``steps`` updates, synchronized: wall ms, ms of garbage collection in it, target tokens, source
    and target shape, and with ``captures`` (entered) the CUDA graphs it recorded."""
    records = []
    for _ in range(steps):
        sample = next(stream)
        captured_before = captures.captures if captures else None
        sync()
        with GarbageCollectionPauses() as pauses:
            start = time.perf_counter()
            trainer.train_step([sample])
            sync()
            record = {"ms": (time.perf_counter() - start) * 1e3, "gc_ms": pauses.ms, "tokens": 0,
                      "captures": captures.captures - captured_before if captures else 0}
        if sample:
            record.update(tokens=int(sample["ntokens"]), source=list(sample["net_input"]["src_tokens"].shape),
                          target=list(sample["target"].shape))
        records.append(record)
    return records


def pairing_cost(records: list) -> dict:
    """What pairing batches on two GPUs costs when an update waits for the slower one: the mean update of
    one batch, the mean slower of two batches paired at random (each GPU keeps its batches in its own
    order: ``--fix-batches-to-gpus``) over all pairs, and paired with their neighbour in length
    (``--grouped-shuffling``: fairseq's batches are consecutive in length; neighbours here are adjacent
    in (source length, target length, tokens)). Updates that recorded a CUDA graph are left out."""
    replays = [r for r in records if not r.get("captures")]
    ms = [r["ms"] for r in replays]
    gc_ms = [r["gc_ms"] for r in replays]
    slower_random = [max(a, b) for i, a in enumerate(ms) for b in ms[i + 1:]]
    by_length = sorted(replays, key=lambda r: (r["source"][1], r["target"][1], r["tokens"]))
    slower_neighbours = [max(a["ms"], b["ms"]) for a, b in zip(by_length[0::2], by_length[1::2])]
    deciles = statistics.quantiles(ms, n=10)
    return {"batches": len(ms), "recording_updates": len(records) - len(replays), "mean_ms": statistics.mean(ms),
            "p10_ms": deciles[0], "p50_ms": statistics.median(ms), "p90_ms": deciles[-1],
            "tokens_correlation": statistics.correlation(ms, [r["tokens"] for r in replays]),
            "slower_random_ms": statistics.mean(slower_random),
            "slower_neighbours_ms": statistics.mean(slower_neighbours), "gc_mean_ms": statistics.mean(gc_ms),
            "gc_max_ms": max(gc_ms), "gc_correlation": statistics.correlation(ms, gc_ms) if any(gc_ms) else 0.0}


def describe_holder(holder) -> str:
    """A short name for an object that references others: a dict by its first keys, a sequence by its length."""
    if isinstance(holder, dict):
        return "dict(" + ", ".join(str(key)[:24] for key in itertools.islice(holder, 4)) + ")"
    if isinstance(holder, (list, tuple, set, collections.deque)):
        return f"{type(holder).__qualname__} of {len(holder)}"
    return type(holder).__qualname__


def holders(new_objects: list, type_names, sample: int = 20, top: int = 5) -> dict:
    """For each type name, what holds up to ``sample`` of its objects among ``new_objects``: the referrers' names
    with how many of the sample each kind holds, most first (this function's own lists and frames left out), and
    for tensors their device, dtype and shape."""
    result = {}
    for name in type_names:
        picked = [o for o in new_objects if type(o).__qualname__ == name][:sample]
        if not picked:
            continue
        own, picked_ids = {id(picked), id(new_objects)}, set(map(id, picked))
        held_by = collections.Counter()
        for referrer in gc.get_referrers(*picked):
            if id(referrer) not in own and not inspect.isframe(referrer):
                held = {id(o) for o in gc.get_referents(referrer)} & picked_ids
                held_by[describe_holder(referrer)] += len(held)
        found = {"held_by": held_by.most_common(top)}
        if name == "Tensor":
            found["kinds"] = collections.Counter(
                f"{t.device} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}" for t in picked).most_common(top)
        result[name] = found
    return result


@contextlib.contextmanager
def counted_cached_outputs():
    """Counts, while active, the graph outputs whose cached tensors CUDA graph trees build (a node builds them
    at its first replay, and again after the trees released them: ``CUDAGraphNode._initialize_cached_tensors``)."""
    from torch._inductor.cudagraph_trees import CUDAGraphNode

    counter = {"outputs": 0}
    build = CUDAGraphNode._initialize_cached_tensors

    def counting(node):
        build(node)
        counter["outputs"] += sum(t is not None for t in node.cached_tensor_outputs)
    CUDAGraphNode._initialize_cached_tensors = counting
    try:
        yield counter
    finally:
        CUDAGraphNode._initialize_cached_tensors = build


def object_census(trainer, stream, steps: int, top: int = 10) -> dict:
    """What ``steps`` updates leave to the cyclic garbage collector, per update: the net change in tracked objects
    alive (gc.get_objects, the frozen ones left out) and the cyclic garbage they made (collected once at the end:
    the collector is off during the updates), each with the types that contribute most, and what holds the new
    live objects of the three types that grew most (and of tensors, when they grew). New objects are those
    still in the youngest generation at the end (an update that records graphs collects, and moves its own on).
    Also the CUDA graphs recorded in those updates and the graph outputs given cached tensors (``counted_cached_outputs``)."""
    import torch._inductor.cudagraph_trees  # noqa: F401  (imported before the count: counted_cached_outputs)
    from mega_fairseq.models.graph_recordings import graphs_recorded  # the plugin fairseq loaded as --user-dir

    def types(objects):
        return collections.Counter(type(o).__qualname__ for o in objects)

    gc.collect()
    before = types(gc.get_objects())
    recorded = graphs_recorded()
    gc.disable()
    try:
        with counted_cached_outputs() as cached_outputs:
            for _ in range(steps):
                trainer.train_step([next(stream)])
            sync()
        young_ids = set(map(id, gc.get_objects(generation=0)))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage, garbage_ids = types(gc.garbage), set(map(id, gc.garbage))
        new_objects = [o for o in gc.get_objects() if id(o) in young_ids and id(o) not in garbage_ids]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    gc.collect()
    after = types(gc.get_objects())
    grown = (after - before).most_common(top)
    names = [name for name, _ in grown[:3]]
    if "Tensor" in dict(grown) and "Tensor" not in names:
        names.append("Tensor")
    return {"live_per_update": (sum(after.values()) - sum(before.values())) / steps,
            "garbage_per_update": sum(garbage.values()) / steps,
            "graph_recordings": graphs_recorded() - recorded, "cached_outputs_built": cached_outputs["outputs"],
            "live_types": grown, "garbage_types": garbage.most_common(top), "holders": holders(new_objects, names)}


def profiled_updates(trainer, stream, steps: int):
    """Kernel ms, kernel launches and host ms of each phase, per update."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step([next(stream)])
        sync()
    kernel_us, nccl_us, launches, ops = 0.0, 0.0, 0, 0
    phase_us = {phase: 0.0 for phase in PHASES}
    per_kernel = collections.Counter()
    for event in prof.events():
        device_type = str(getattr(event, "device_type", "")).lower()
        if "cuda" in device_type:
            if getattr(event, "is_user_annotation", False) or event.name in phase_us:
                continue  # record_function ranges mirrored on the GPU timeline, not kernels
            us = event.device_time if hasattr(event, "device_time") else event.cuda_time
            if "nccl" in event.name.lower():
                nccl_us += us
                continue
            kernel_us += us
            launches += 1
            per_kernel[event.name[:80]] += us
        elif event.name in phase_us:
            phase_us[event.name] += event.cpu_time_total
        elif event.name.startswith("aten::"):
            ops += 1
    return {
        "kernel_ms": kernel_us / 1e3 / steps,
        "nccl_ms": nccl_us / 1e3 / steps,
        "kernels": launches / steps,
        "aten_ops": ops / steps,
        **{f"host_{phase}_ms": us / 1e3 / steps for phase, us in phase_us.items()},
        "top_kernels_ms": {name: us / 1e3 / steps for name, us in per_kernel.most_common(15)},
    }


class CaptureStats:
    """Counts ``torch.cuda.graph`` captures and the seconds inside them; optionally keeps the caching
    allocator's cache at each capture's entry (torch.cuda.empty_cache made a no-op while active)."""

    def __init__(self, keep_allocator_cache: bool):
        self.keep_allocator_cache = keep_allocator_cache
        self.captures, self.seconds = 0, 0.0

    def __enter__(self):
        graph = torch.cuda.graph
        self.saved = graph.__enter__, graph.__exit__, torch.cuda.empty_cache
        enter, leave = self.saved[:2]
        stats = self

        def timed_enter(context):
            context.capture_started = time.perf_counter()
            return enter(context)

        def timed_exit(context, *exc):
            result = leave(context, *exc)
            stats.captures += 1
            stats.seconds += time.perf_counter() - context.capture_started
            return result
        graph.__enter__, graph.__exit__ = timed_enter, timed_exit
        if self.keep_allocator_cache:
            torch.cuda.empty_cache = lambda: None
        return self

    def __exit__(self, *exc):
        torch.cuda.graph.__enter__, torch.cuda.graph.__exit__, torch.cuda.empty_cache = self.saved


class GraphTreeTimes:
    """Inclusive seconds and calls of CUDA graph trees' methods (TREE_METHODS) while active."""

    TREE_METHODS = {
        "CUDAGraphTreeManager": ("_run", "record_function", "execute_node", "run_eager",
                                 "apply_checkpoint_execution_state_in_allocator", "try_end_curr_warmup"),
        "CUDAGraphNode": ("__init__", "_record", "_add_first_outputs", "run"),
    }

    def __init__(self):
        self.seconds, self.calls, self.saved = collections.Counter(), collections.Counter(), []

    def __enter__(self):
        from torch._inductor import cudagraph_trees
        for owner_name, methods in self.TREE_METHODS.items():
            owner = getattr(cudagraph_trees, owner_name)
            for method in methods:
                original = getattr(owner, method)
                self.saved.append((owner, method, original))
                setattr(owner, method, self._timed(f"{owner_name}.{method}", original))
        return self

    def _timed(self, label, original):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1
        return run

    def __exit__(self, *exc):
        for owner, method, original in self.saved:
            setattr(owner, method, original)

    def table(self) -> str:
        return "\n".join(f"  {seconds:8.2f} s {self.calls[label]:6d} calls  {label}"
                         for label, seconds in self.seconds.most_common())


def compile_counters() -> dict:
    """torch.compile's traced graphs and CUDA-graph skips so far (--layer-graphs, --compile-layers)."""
    from torch._dynamo.utils import counters
    return {"traced_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}


PHASE_STEPS = ("trainer._set_seed", "model.train", "criterion.train", "trainer.zero_grad", "trainer._prepare_sample",
               "task.train_step", "optimizer.backward", "trainer._aggregate_logging_outputs",
               "optimizer.all_reduce_grads", "optimizer.multiply_grads", "trainer.clip_grad_norm",
               "trainer._check_grad_norms", "task.optimizer_step", "trainer.set_num_updates",
               "trainer._reduce_and_log_stats")


def thread_cpu_ms() -> dict:
    """CPU ms so far of each thread of this process ("name (OS id)" to ms; Linux's /proc, empty elsewhere): a
    Python thread by its Python name, any other (CUDA's, NCCL's, the data loader's pin-memory thread is Python's)
    by its OS name."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return {}
    python_names = {thread.native_id: thread.name for thread in threading.enumerate()}
    ms_per_tick = 1e3 / os.sysconf("SC_CLK_TCK")
    result = {}
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/stat") as stat, open(f"{tasks}/{tid}/comm") as comm:
                fields, os_name = stat.read().rsplit(")", 1)[1].split(), comm.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = python_names.get(int(tid), os_name)
        result[f"{name} ({tid})"] = (int(fields[11]) + int(fields[12])) * ms_per_tick  # utime + stime
    return result


def thread_cpu_per_update(before: dict, after: dict, steps: int, top: int = 6) -> dict:
    """The ``top`` threads by CPU ms per update between two ``thread_cpu_ms`` readings (threads started
    meanwhile count from zero)."""
    spent = {name: (ms - before.get(name, 0.0)) / steps for name, ms in after.items()}
    busiest = sorted(((name, ms) for name, ms in spent.items() if ms > 0), key=lambda item: -item[1])
    return {name: round(ms, 2) for name, ms in busiest[:top]}


def phase_times(trainer, stream, steps: int) -> dict:
    """Host ms per update spent in each step of fairseq's ``Trainer.train_step`` (PHASE_STEPS, inclusive:
    ``task.train_step`` holds the forward and ``optimizer.backward``), over ``steps`` updates run back to back
    as fairseq-train runs them: no sync is added, so a step that waits for the GPU (a ``.item()``, a
    comparison of a GPU tensor) shows the wait. Also the next batch's fetch, the whole ``train_step`` and
    the wall time per update (one sync at the end)."""
    owners = {"trainer": trainer, "model": trainer.model, "criterion": trainer.criterion, "task": trainer.task,
              "optimizer": trainer.optimizer}
    seconds = collections.Counter()
    patched = []

    def timed(label, original):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
        return run

    for label in PHASE_STEPS:
        owner_name, method = label.split(".")
        owner = owners[owner_name]
        object.__setattr__(owner, method, timed(label, getattr(owner, method)))  # an instance attribute
        patched.append((owner, method))
    try:
        sync()
        threads_before = thread_cpu_ms()
        start = time.perf_counter()
        for _ in range(steps):
            fetch = time.perf_counter()
            sample = next(stream)
            step = time.perf_counter()
            trainer.train_step([sample])
            done = time.perf_counter()
            seconds["next batch"] += step - fetch
            seconds["train_step"] += done - step
        sync()
        seconds["wall"] = time.perf_counter() - start
        threads = thread_cpu_per_update(threads_before, thread_cpu_ms(), steps)
    finally:
        for owner, method in patched:
            object.__delattr__(owner, method)
    return {"phases": {label: round(s * 1e3 / steps, 2) for label, s in seconds.items()}, "thread_cpu": threads}


def sync_sites(trainer, stream, steps: int) -> dict:
    """Where the host waits for the GPU over ``steps`` updates: torch's CUDA sync debug mode warns at every
    synchronizing operation (``.item()``, a GPU tensor's truth value, a copy to the host...); each is
    counted per update at its innermost call site outside torch and the warnings module ("file:line
    function"). Empty without CUDA."""
    sites = collections.Counter()
    if not torch.cuda.is_available():
        return {}
    torch_dir = torch.__file__.rsplit("/", 1)[0]

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1]
                  if not f.filename.startswith(torch_dir) and not f.filename.endswith("warnings.py")]
        where = frames[-1] if frames else traceback.FrameSummary(filename, lineno, "?")
        sites[f"{'/'.join(where.filename.split('/')[-2:])}:{where.lineno} {where.name}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.train_step([next(stream)])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {site: round(count / steps, 2) for site, count in sites.most_common()}


def python_profile(trainer, stream, steps: int, top: int = 60) -> str:
    """cProfile of ``steps`` updates: the Python functions with the most own (host) time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        trainer.train_step([next(stream)])
    sync()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--label", default=None)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=150,
                        help="untimed updates first: two Multi30k epochs, so that every batch shape was seen "
                             "(fairseq's Transformer pays ~0.1 s per new shape)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep-allocator-cache", action="store_true",
                        help="experiment: CUDA graph captures do not empty the caching allocator")
    parser.add_argument("--graph-tree-times", action="store_true",
                        help="also list the seconds CUDA graph trees' methods take over the warm-up")
    parser.add_argument("--skip-graph-warmup", action="store_true",
                        help="experiment: CUDA graph trees record a new shape at once, without their eager run first")
    parser.add_argument("--python-profile", type=int, default=0, metavar="STEPS",
                        help="also run cProfile over STEPS updates and print where the host time goes (with "
                             "--warmup 69 --steps 1 --profile-steps 0 on Multi30k: the updates that record graphs)")
    parser.add_argument("--phase-times", type=int, default=0, metavar="STEPS",
                        help="also time each step of fairseq's Trainer.train_step on the host over STEPS updates run "
                             "back to back (no syncs added: a step that waits for the GPU shows the wait), and the "
                             "CPU ms per update of the busiest threads")
    parser.add_argument("--sync-sites", type=int, default=0, metavar="STEPS",
                        help="also list where the host waits for the GPU over STEPS updates (torch's CUDA sync "
                             "debug mode; per update, by call site)")
    parser.add_argument("--batch-times", type=int, default=0, metavar="STEPS",
                        help="also time STEPS updates of one batch each, synchronized (one epoch's batches: 69 on "
                             "Multi30k), and print what an update waiting for the slower of two batches costs with "
                             "batches paired at random (--fix-batches-to-gpus) and with neighbours in length "
                             "(--grouped-shuffling); --json keeps every update's ms and shapes")
    parser.add_argument("--gc-unfrozen", action="store_true",
                        help="experiment: the plugin does not freeze the heap after updates that record graphs "
                             "(mega_fairseq.garbage_collection), as before it did")
    parser.add_argument("--object-census", type=int, default=0, metavar="STEPS",
                        help="also count, over STEPS updates, the objects the garbage collector tracks that stay alive "
                             "and the cyclic garbage made, per update, by type, and what holds the new ones")
    parser.add_argument("--census-windows", type=int, default=1, metavar="W",
                        help="with --object-census: W counts of STEPS updates each, one after the other")
    parser.add_argument("--gc-threshold", type=int, default=0, metavar="N",
                        help="experiment: the garbage collector's youngest generation collected every N allocations "
                             "instead of Python's 700 (gc.set_threshold), from before the model is built")
    parser.add_argument("--gc-at-update-ends", type=int, default=0, metavar="K",
                        help="experiment: the collector off inside each update, the younger generations collected "
                             "after each, a full collection (survivors frozen) after every K-th")
    parser.add_argument("--logging-without-waits", action="store_true",
                        help="experiment: fairseq's per-update logging after the optimizer step logs the same meters "
                             "without the host waiting for the GPU (6 waits an update), and train_step returns only "
                             "the sample size")
    parser.add_argument("--bind-cpus", action="store_true",
                        help="experiment: bind each GPU's process to its own share of the physical cores (split in "
                             "order, package-major), so that no two processes share a core")
    parser.add_argument("--no-ddp-split", action="store_true",
                        help="experiment (with --gpus > 1): torch.compile does not split the layer stacks at DDP's "
                             "gradient buckets (one CUDA graph per stack and shape instead of one per piece; "
                             "the all-reduce starts after each stack's backward)")
    parser.add_argument("--gpus", type=int, default=1,
                        help="train on this many GPUs (one process each, the DDP backend of fairseq-train); the first "
                             "GPU's figures are printed, with its compute and NCCL kernel time per update")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.gpus > 1 and args.gpus > torch.cuda.device_count():
        parser.error(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA devices")
    cfg = fairseq_config(args.data, args.arch, args.max_tokens, args.gpus, extra)
    distributed_utils.call_main(cfg, profile, args=args, extra=extra)


def profile(cfg, args, extra):
    """Warm-up, timed and profiled updates on this process's GPU; the first process prints."""
    if args.skip_graph_warmup:
        from torch._inductor import config as inductor_config
        inductor_config.triton.skip_cudagraph_warmup = True
    if args.no_ddp_split:
        from torch._dynamo import config as dynamo_config
        dynamo_config.optimize_ddp = False
    if args.gc_unfrozen:
        unpatch_heap_freezing()
    if args.gc_at_update_ends:
        collect_at_update_ends(args.gc_at_update_ends)
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if args.logging_without_waits:
        log_without_waiting()
    if args.bind_cpus:
        rank, world = cfg.distributed_training.distributed_rank, cfg.distributed_training.distributed_world_size
        cpus = bind_to_exclusive_cores(rank, world)
        print(f"  process {rank} of {world} bound to CPUs {sorted(cpus)}", flush=True)
    trainer, epoch_itr, params = build_trainer(cfg)
    stream = batches(epoch_itr, cfg.distributed_training.fix_batches_to_gpus)
    tree_times = GraphTreeTimes() if args.graph_tree_times else contextlib.nullcontext()
    with CaptureStats(args.keep_allocator_cache) as captures, tree_times, GarbageCollectionPauses() as warmup_gc:
        warmup_times = [r["ms"] for r in timed_updates(trainer, stream, args.warmup)]
    warmup_s = sum(warmup_times) / 1e3
    warmup_curve_s = {n: round(sum(warmup_times[:n]) / 1e3, 1) for n in range(25, args.warmup + 1, 25)}
    timed = timed_updates(trainer, stream, args.steps)
    times, tokens = [r["ms"] for r in timed], [r["tokens"] for r in timed]
    result = {
        "label": args.label or args.arch, "arch": args.arch, "extra": " ".join(extra), "params": params,
        "gpus": args.gpus, "warmup_s": warmup_s, "warmup_curve_s": warmup_curve_s,
        "median_ms": statistics.median(times), "mean_ms": statistics.mean(times),
        "tokens_per_s": args.gpus * sum(tokens) / (sum(times) / 1e3),
        "warmup_captures": captures.captures, "warmup_capture_s": round(captures.seconds, 1),
        "warmup_gc_s": round(warmup_gc.ms / 1e3, 2), "warmup_gc_full": warmup_gc.full,
        "warmup_gc_longest_ms": round(warmup_gc.longest_ms, 1), "gc_unfrozen": args.gc_unfrozen,
        "bind_cpus": args.bind_cpus, "gc_threshold": gc.get_threshold()[0], "gc_at_update_ends": args.gc_at_update_ends,
        "keep_allocator_cache": args.keep_allocator_cache, "skip_graph_warmup": args.skip_graph_warmup,
        "no_ddp_split": args.no_ddp_split, "logging_without_waits": args.logging_without_waits,
    }
    if args.profile_steps:
        result.update(profiled_updates(trainer, stream, args.profile_steps))
    result.update(compile_counters())
    if args.phase_times:  # every GPU's: a step where one GPU waits for the other is short on the other
        mine = phase_times(trainer, stream, args.phase_times)
        result["phase_ms_per_gpu"] = [mine]
        if args.gpus > 1:
            result["phase_ms_per_gpu"] = [None] * args.gpus
            torch.distributed.all_gather_object(result["phase_ms_per_gpu"], mine)
    if args.batch_times:
        with CaptureStats(args.keep_allocator_cache) as batch_captures:
            timed = timed_updates(trainer, stream, args.batch_times, batch_captures)
        result["batch_times"] = [r for r in timed if r["tokens"]]
        result["pairing"] = pairing_cost(result["batch_times"])
    if args.object_census:
        result["census"] = [object_census(trainer, stream, args.object_census) for _ in range(args.census_windows)]
    if args.sync_sites:
        result["syncs_per_update"] = sync_sites(trainer, stream, args.sync_sites)
    host_profile = None
    if args.python_profile:  # every GPU runs the updates (they all-reduce); the first prints
        with CaptureStats(args.keep_allocator_cache) as profiled_captures:
            host_profile = python_profile(trainer, stream, args.python_profile)
    if not distributed_utils.is_master(cfg.distributed_training):
        return
    line = (f"{result['label']:<28} {params / 1e6:6.1f}M  warmup {warmup_s:6.1f}s  update {result['median_ms']:7.1f} ms"
            f" (mean {result['mean_ms']:7.1f})  tgt tok/s {result['tokens_per_s']:9.0f}")
    if "kernel_ms" in result:
        line += (f"  GPU busy {result['kernel_ms']:6.1f} ms  NCCL {result['nccl_ms']:5.1f} ms  kernels "
                 f"{result['kernels']:6.0f}  aten ops {result['aten_ops']:6.0f}  host fwd/bwd/clip/opt "
                 f"{result['host_forward_ms']:.0f}/{result['host_backward_ms']:.0f}/"
                 f"{result['host_clip-grads_ms']:.0f}/{result['host_optimizer_ms']:.0f} ms")
    line += f"  traced graphs {result['traced_graphs']}  cudagraph skips {result['cudagraph_skips']}"
    print(line, flush=True)
    if result["traced_graphs"]:
        from torch._dynamo.utils import compile_times
        print(compile_times(repr="str", aggregate=True), flush=True)
    print("  warmup seconds after N updates: " + "  ".join(f"{n}: {s}" for n, s in warmup_curve_s.items())
          + f"  (CUDA graph captures {captures.captures}, {captures.seconds:.1f} s inside them"
          + (", allocator cache kept)" if args.keep_allocator_cache else ")"), flush=True)
    mode = (f"collector off inside updates, collected after each, fully every {args.gc_at_update_ends}"
            if args.gc_at_update_ends else f"youngest generation every {result['gc_threshold']} allocations")
    print(f"  garbage collection over the warm-up{' (heap never frozen)' if args.gc_unfrozen else ''} ({mode}): "
          f"{result['warmup_gc_s']} s, {warmup_gc.full} full collections, longest pause "
          f"{result['warmup_gc_longest_ms']} ms", flush=True)
    if args.graph_tree_times:
        print("  CUDA graph trees over the warm-up, inclusive seconds:\n" + tree_times.table(), flush=True)
    for gpu, gpu_times in enumerate(result.get("phase_ms_per_gpu", [])):
        print(f"  host ms per update over {args.phase_times} back-to-back updates, GPU {gpu}: "
              + "  ".join(f"{label} {ms}" for label, ms in gpu_times["phases"].items()), flush=True)
        print(f"  CPU ms per update by thread, GPU {gpu}'s process: "
              + "  ".join(f"{name} {ms}" for name, ms in gpu_times["thread_cpu"].items()), flush=True)
    if "pairing" in result:
        pairing = result["pairing"]
        print(f"  {pairing['batches']} updates of one batch ({pairing['recording_updates']} more recorded graphs: left "
              f"out), synchronized: ms p10/p50/p90 {pairing['p10_ms']:.1f}/"
              f"{pairing['p50_ms']:.1f}/{pairing['p90_ms']:.1f}, mean {pairing['mean_ms']:.1f}, correlation with target "
              f"tokens {pairing['tokens_correlation']:.2f}; the slower of two batches: paired at random "
              f"{pairing['slower_random_ms']:.1f} ms, paired with neighbours in length "
              f"{pairing['slower_neighbours_ms']:.1f} ms; garbage collection {pairing['gc_mean_ms']:.1f} ms an update "
              f"(max {pairing['gc_max_ms']:.1f}, correlation {pairing['gc_correlation']:.2f})", flush=True)
    for window, census in enumerate(result.get("census", []), 1):
        print(f"  census {window}, per update over {args.object_census} updates: {census['live_per_update']:.0f} more "
              f"tracked objects alive (types that grew: {', '.join(f'{name} {n}' for name, n in census['live_types'])}); "
              f"{census['garbage_per_update']:.0f} objects of cyclic garbage "
              f"({', '.join(f'{name} {n}' for name, n in census['garbage_types'])}); CUDA graphs recorded "
              f"{census['graph_recordings']}, graph outputs given cached tensors {census['cached_outputs_built']}",
              flush=True)
        for name, found in census["holders"].items():
            print(f"  new {name} objects held by: {', '.join(f'{held} {n}' for held, n in found['held_by'])}"
                  + (f"; kinds: {', '.join(f'{kind} {n}' for kind, n in found['kinds'])}" if "kinds" in found else ""),
                  flush=True)
    if "syncs_per_update" in result:
        print(f"  host waits for the GPU per update ({sum(result['syncs_per_update'].values()):.1f}), by call site: "
              + "; ".join(f"{site} x{count}" for site, count in result["syncs_per_update"].items()), flush=True)
    if host_profile is not None:
        print(host_profile, flush=True)
        print(f"  cProfiled updates: CUDA graph captures {profiled_captures.captures}, "
              f"{profiled_captures.seconds:.1f} s inside them", flush=True)
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
