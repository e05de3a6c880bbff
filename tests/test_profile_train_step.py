"""benchmarks/e2e/profile_train_step.py: what pairing two GPUs' batches costs (--batch-times), checked against
sums written out here; the garbage collector's pause timer, object census and experiments (--gc-unfrozen,
--gc-at-update-ends); the split of physical cores (--bind-cpus). The updates themselves need fairseq's data."""
import gc
import itertools
import os
import random
import statistics
import sys
import threading
import time
import types
import weakref

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "e2e"))
profile_train_step = pytest.importorskip("profile_train_step")


def record(ms, source_length, target_length, tokens, gc_ms=0.0, captures=0):
    return {"ms": ms, "gc_ms": gc_ms, "tokens": tokens, "source": [8, source_length], "target": [8, target_length],
            "captures": captures}


def test_pairing_cost_of_random_and_neighbour_pairs():
    records = [record(10.0, 5, 6, 40), record(30.0, 20, 21, 160), record(12.0, 6, 6, 48), record(31.0, 19, 22, 152),
               record(900.0, 7, 8, 56, captures=2)]  # recorded graphs: left out
    cost = profile_train_step.pairing_cost(records)
    assert cost["batches"] == 4 and cost["recording_updates"] == 1
    assert cost["mean_ms"] == pytest.approx(20.75)
    # all six pairs: max(10,30) max(10,12) max(10,31) max(30,12) max(30,31) max(12,31)
    assert cost["slower_random_ms"] == pytest.approx((30 + 12 + 31 + 30 + 31 + 31) / 6)
    # sorted by (source length, target length, tokens): 10 (5), 12 (6), 31 (19), 30 (20)
    assert cost["slower_neighbours_ms"] == pytest.approx((12 + 31) / 2)


@pytest.mark.parametrize("count", [7, 12])
def test_pairing_cost_on_random_records(count):
    rng = random.Random(count)
    records = [record(rng.uniform(20, 80), rng.randrange(3, 40), rng.randrange(3, 40), rng.randrange(100, 8000),
                      rng.uniform(0, 2)) for _ in range(count)]
    cost = profile_train_step.pairing_cost(records)
    ms = [r["ms"] for r in records]
    assert cost["slower_random_ms"] == pytest.approx(
        statistics.mean(max(a, b) for a, b in itertools.combinations(ms, 2)))
    ordered = sorted(records, key=lambda r: (r["source"][1], r["target"][1], r["tokens"]))
    pairs = [(ordered[i]["ms"], ordered[i + 1]["ms"]) for i in range(0, count - 1, 2)]
    assert cost["slower_neighbours_ms"] == pytest.approx(statistics.mean(max(pair) for pair in pairs))
    assert cost["p10_ms"] <= cost["p50_ms"] <= cost["p90_ms"]
    assert cost["gc_max_ms"] == pytest.approx(max(r["gc_ms"] for r in records))
    assert -1 <= cost["tokens_correlation"] <= 1


def test_garbage_collection_pauses_are_timed_while_entered():
    with profile_train_step.GarbageCollectionPauses() as pauses:
        gc.collect()
    assert pauses.ms > 0
    assert not any(getattr(callback, "__self__", None) is pauses for callback in gc.callbacks)
    before = pauses.ms
    gc.collect()
    assert pauses.ms == before


def test_garbage_collection_pauses_count_full_collections_and_the_longest():
    with profile_train_step.GarbageCollectionPauses() as pauses:
        gc.collect(0)
        gc.collect(1)
    assert pauses.full == 0 and 0 < pauses.longest_ms <= pauses.ms
    with profile_train_step.GarbageCollectionPauses() as pauses:
        gc.collect()
        gc.collect()
    assert pauses.full == 2 and pauses.longest_ms <= pauses.ms


def test_heap_freezing_can_be_left_out_for_a_comparison(monkeypatch):
    from fairseq.trainer import Trainer

    import mega_fairseq  # noqa: F401  (applies the patches)
    patched = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", patched)  # restored after the test
    profile_train_step.unpatch_heap_freezing()
    assert Trainer.train_step is patched.__wrapped__
    assert "_freezing_after_recordings" not in getattr(Trainer.train_step, "mega_patches", ())


def test_cached_outputs_are_counted_while_active(monkeypatch):
    from torch._inductor.cudagraph_trees import CUDAGraphNode

    built = []
    monkeypatch.setattr(CUDAGraphNode, "_initialize_cached_tensors", built.append)  # restored after the test
    nodes = [types.SimpleNamespace(cached_tensor_outputs=[torch.zeros(1)] * n + [None]) for n in random.sample(range(9), 3)]
    with profile_train_step.counted_cached_outputs() as counted:
        for node in nodes:
            CUDAGraphNode._initialize_cached_tensors(node)
    CUDAGraphNode._initialize_cached_tensors(nodes[0])
    assert counted["outputs"] == sum(len(node.cached_tensor_outputs) - 1 for node in nodes)
    assert built == nodes + nodes[:1] and CUDAGraphNode._initialize_cached_tensors == built.append


@pytest.mark.parametrize("packages, cores, threads, world", [(1, 16, 2, 2), (2, 8, 2, 2), (1, 7, 1, 2), (2, 3, 2, 4)])
def test_exclusive_cpus_split_physical_cores(packages, cores, threads, world):
    """Logical CPU numbering as Linux gives it: the second thread of each core after all first threads."""
    physical = [(package, core) for package in range(packages) for core in range(cores)]
    core_of = {cpu: physical[cpu % len(physical)] for cpu in range(len(physical) * threads)}
    shares = [profile_train_step.exclusive_cpus(rank, world, set(core_of), core_of.get) for rank in range(world)]
    assert set().union(*shares) == set(core_of)
    owners = {}
    for rank, share in enumerate(shares):
        for cpu in share:
            assert owners.setdefault(core_of[cpu], rank) == rank  # no core in two shares
    sizes = sorted(len({core_of[cpu] for cpu in share}) for share in shares)
    assert sizes[-1] - sizes[0] <= 1
    assert all(core_of[cpu][0] == 0 for cpu in shares[0])  # the first share starts on the first package


def test_exclusive_cpus_refuse_fewer_cores_than_processes():
    with pytest.raises(ValueError, match="2 physical cores cannot be split among 4"):
        profile_train_step.exclusive_cpus(0, 4, {0, 1, 2, 3}, lambda cpu: (0, cpu % 2))


def test_binding_one_process_keeps_every_allowed_cpu():
    allowed = os.sched_getaffinity(0)
    assert profile_train_step.bind_to_exclusive_cores(0, 1) == allowed
    assert os.sched_getaffinity(0) == allowed


class Loop:
    def __init__(self):
        self.me = self


class FakeTrainer:
    """train_step keeps one Loop and two fresh tensors (of a size drawn once) alive per call, the Loops in a list,
    the tensors in a list and a dict of its own, and drops two Loops (cyclic garbage)."""

    def __init__(self, seed):
        self.n = random.Random(seed).randrange(1, 9)
        self.kept = {"losses": [], "loops": []}

    def train_step(self, samples):
        self.kept["loops"].append(Loop())
        Loop(), Loop()
        self.kept["losses"].append(torch.zeros(self.n, dtype=torch.float64))
        self.kept[f"step{len(self.kept)}"] = torch.ones(self.n, 3)


def test_object_census_counts_kept_objects_and_cyclic_garbage_and_names_holders():
    steps = random.randrange(1, 9)  # one census: each visits the whole heap (~3 s)
    trainer = FakeTrainer(steps)
    census = profile_train_step.object_census(trainer, itertools.repeat({}), steps)
    assert dict(census["garbage_types"])["Loop"] == 2 * steps
    assert census["garbage_per_update"] >= 2
    live = dict(census["live_types"])
    assert live["Loop"] == steps and live["Tensor"] == 2 * steps
    assert gc.isenabled() and not gc.garbage and gc.get_debug() == 0
    tensors = census["holders"]["Tensor"]
    held_by = dict(tensors["held_by"])
    assert held_by[f"list of {steps}"] == steps  # the losses list holds one new tensor a step
    assert sum(n for holder, n in held_by.items() if holder.startswith("dict(losses, loops, step")) == steps
    assert dict(tensors["kinds"]) == {f"cpu float64 ({trainer.n},)": steps, f"cpu float32 ({trainer.n}, 3)": steps}
    assert census["graph_recordings"] == 0 and census["cached_outputs_built"] == 0


def test_holders_describe_sequences_dicts_and_objects():
    describe = profile_train_step.describe_holder
    assert describe({"alpha": 1, "beta": 2, "gamma": 3, "delta": 4, "epsilon": 5}) == "dict(alpha, beta, gamma, delta)"
    assert describe([1, 2, 3]) == "list of 3" and describe((1,)) == "tuple of 1"
    assert describe(Loop()) == "Loop"


def test_thread_cpu_per_update_keeps_the_busiest_threads():
    before = {"MainThread (7)": 100.0, "pin memory (8)": 50.0, "idle (9)": 5.0}
    after = {"MainThread (7)": 160.0, "pin memory (8)": 59.0, "idle (9)": 5.0, "new (10)": 12.0}
    per_update = profile_train_step.thread_cpu_per_update(before, after, steps=3)
    assert list(per_update.items()) == [("MainThread (7)", 20.0), ("new (10)", 4.0), ("pin memory (8)", 3.0)]
    assert list(profile_train_step.thread_cpu_per_update(before, after, steps=3, top=1)) == ["MainThread (7)"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread CPU times come from Linux's /proc")
def test_thread_cpu_names_a_busy_python_thread():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    helper = threading.Thread(target=spin, name="busy helper")
    before = profile_train_step.thread_cpu_ms()
    helper.start()
    try:
        time.sleep(0.4)
        after = profile_train_step.thread_cpu_ms()
    finally:
        stop.set()
        helper.join()
    assert f"MainThread ({threading.main_thread().native_id})" in after
    per_update = profile_train_step.thread_cpu_per_update(before, after, steps=4)
    assert per_update[f"busy helper ({helper.native_id})"] >= 20  # ~100 ms a step with the main thread asleep


class LoggingTrainer:
    """What fairseq's Trainer._reduce_and_log_stats reads of its trainer; the task logs a loss and an nll_loss."""

    def __init__(self, clip_norm, amp=False):
        self.tpu, self._warn_once = False, set()
        self.cfg = types.SimpleNamespace(common=types.SimpleNamespace(amp=amp),
                                         optimization=types.SimpleNamespace(clip_norm=clip_norm))
        self.task = types.SimpleNamespace(reduce_metrics=self.reduce_metrics)

    def get_criterion(self):
        return None

    @staticmethod
    def reduce_metrics(logging_outputs, criterion):
        from fairseq.logging import metrics
        sample_size = sum(log["sample_size"] for log in logging_outputs)
        metrics.log_scalar("loss", sum(log["loss"] for log in logging_outputs) / sample_size, sample_size, round=3)
        metrics.log_scalar("nll_loss", sum(log["nll_loss"] for log in logging_outputs) / sample_size, sample_size)


def logged(method, trainer, logging_outputs, sample_size, grad_norm):
    """The meters (but the wall-clock ones) and the return value of one call of ``method`` in a fresh root."""
    from fairseq.logging import metrics
    with metrics.aggregate(new_root=True) as aggregate:
        returned = method(trainer, logging_outputs, sample_size, grad_norm)
    values = aggregate.get_smoothed_values()
    assert ("ups" in values) == (grad_norm is not None)
    return {k: v for k, v in values.items() if k != "ups"}, returned


@pytest.mark.parametrize("clip_norm", [0.0, 1.0, 25.0])
@pytest.mark.parametrize("with_grad_norm", [True, False])
def test_logging_without_waits_logs_what_fairseq_logs(monkeypatch, clip_norm, with_grad_norm):
    from fairseq.trainer import Trainer
    rng = random.Random(f"{clip_norm}{with_grad_norm}")
    fairseqs = Trainer._reduce_and_log_stats
    monkeypatch.setattr(Trainer, "_reduce_and_log_stats", fairseqs)
    profile_train_step.log_without_waiting()
    ours = Trainer._reduce_and_log_stats
    assert ours is not fairseqs and ours.__wrapped__ is fairseqs
    outputs = [{"loss": torch.tensor(rng.uniform(1, 50)), "nll_loss": torch.tensor(rng.uniform(1, 50)),
                "sample_size": rng.randrange(10, 99)} for _ in range(rng.randrange(1, 4))]
    sample_size = sum(log["sample_size"] for log in outputs)
    grad_norm = torch.tensor(rng.uniform(0.1, 50)) if with_grad_norm else None
    expected, fairseq_returned = logged(fairseqs, LoggingTrainer(clip_norm), outputs, sample_size, grad_norm)
    got, returned = logged(ours, LoggingTrainer(clip_norm), outputs, sample_size, grad_norm)
    assert got == expected and ("clip" in got) == (with_grad_norm and clip_norm > 0)
    assert returned == {"sample_size": sample_size} and fairseq_returned["sample_size"] == sample_size
    _, amp_returned = logged(ours, LoggingTrainer(clip_norm, amp=True), outputs, sample_size, grad_norm)
    assert amp_returned == fairseq_returned  # with --amp fairseq's own runs


def test_collections_at_update_ends(monkeypatch):
    """The collector is off inside an update; each update's cyclic garbage is collected after it; every third
    update a full collection freezes what survives."""
    from fairseq.trainer import Trainer

    inside, garbage = [], []

    def train_step(trainer, samples):
        inside.append(gc.isenabled())
        garbage.append(weakref.ref(Loop()))
        return len(inside)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    gc.collect()
    gc.unfreeze()
    try:
        profile_train_step.collect_at_update_ends(3)
        frozen = []
        for update in range(1, 7):
            assert Trainer.train_step(None, []) == update
            assert garbage[-1]() is None and gc.isenabled()
            frozen.append(gc.get_freeze_count())
        assert not any(inside)
        assert frozen[0] == frozen[1] == 0 < frozen[2]
    finally:
        gc.unfreeze()
