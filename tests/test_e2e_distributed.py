"""benchmarks/e2e/e2e_distributed.sh with a stand-in for fairseq-train: which runs it makes, how long each runs,
which records it averages (each one-GPU run over the same epochs as the 2-GPU runs), the ratios, repeated runs in
alternating order (a steady drift of the host's speed cancels in the means), and its errors."""
import json
import os
import random
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "e2e", "e2e_distributed.sh")

# Writes fairseq-train's train_inner records every 25 updates. Words/s: SLOW before the third epoch (graphs still
# recorded), else BASE x the number of GPUs (x BOOST on one GPU at --update-freq 2), x (1 + FAKE_DRIFT x the number
# of runs before this one: a host that speeds up steadily); WORDS target words a batch. Each run appends "GPUS UPDATE_FREQ" to FAKE_ORDER's file.
FAKE_TRAIN = '''
import json, os, sys
args = sys.argv[1:]
def option(name, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default
updates, freq, world = option("--max-update", 0), option("--update-freq", 1), option("--distributed-world-size", 1)
order = os.environ.get("FAKE_ORDER")
before = len(open(order).read().splitlines()) if order and os.path.exists(order) else 0
if order:
    open(order, "a").write(f"{{world}} {{freq}}\\n")
drift = 1 + float(os.environ.get("FAKE_DRIFT", "0")) * before
for update in range(25, updates + 1, 25):
    epochs = update * freq / (69 / world)
    wps = {slow} if epochs < 3 else {base} * world * ({boost} if world == 1 and freq == 2 else 1) * drift
    words = {words} * world * freq
    record = {{"epoch": int(epochs) + 1, "update": round(epochs, 3), "loss": str(10 - update / 100), "wps": str(wps),
              "ups": str(wps / words), "wpb": str(words), "num_updates": str(update)}}
    print("2026-11-29 00:00:00 | INFO | train_inner | " + json.dumps(record))
'''


def run_script(tmp_path, base, boost, slow=10.0, words=6000.0, **env):
    fake = tmp_path / "fake" / "fairseq_cli"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "train.py").write_text(FAKE_TRAIN.format(slow=slow, base=base, boost=boost, words=words))
    out = tmp_path / "out"
    environment = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"),
                       PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env)
    result = subprocess.run(["bash", SCRIPT, str(tmp_path / "data"), str(out)], env=environment, capture_output=True,
                            text=True, timeout=120)
    return result, out


def test_one_gpu_runs_cover_the_same_epochs_as_two_gpus(tmp_path):
    rng = random.Random()
    base, boost, words = rng.uniform(500, 2000), rng.uniform(1.05, 1.3), float(rng.randrange(3000, 20000))
    result, out = run_script(tmp_path, base, boost, words=words, BATCHES="default", UPDATES="150",
                             WARMUP_UPDATES="125")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "distributed.json").read_text())
    records = summary["records"]
    assert [update for update, _ in records["one_gpu_update_freq_1"]][-1] == 300  # twice the 2-GPU updates
    assert [update for update, _ in records["one_gpu"]][-1] == 150
    assert summary["warmup_updates"] == {"one_gpu_update_freq_1": 250, "one_gpu": 125,
                                         "two_gpus_default_legacy_ddp": 125}
    # every averaged record is past the third epoch: no slow record in any mean
    assert summary["wps"]["one_gpu_update_freq_1"] == pytest.approx(base)
    assert summary["wps"]["one_gpu"] == pytest.approx(base * boost)
    assert summary["scaling"]["one_gpu_update_freq_1"]["two_gpus_default_legacy_ddp"] == pytest.approx(2.0)
    assert summary["scaling"]["one_gpu"]["two_gpus_default_legacy_ddp"] == pytest.approx(2.0 / boost)
    assert summary["epochs"]["two_gpus_default_legacy_ddp"][-1] == pytest.approx(150 / 34.5, abs=1e-3)
    assert "2 GPUs against one_gpu_update_freq_1: two_gpus_default_legacy_ddp 2.00x" in result.stdout
    # an update's ms from the records' updates/s: one batch a GPU takes words / base s on one GPU and on 2
    one_ms, boosted_ms = 1000 * words / base, 1000 * 2 * words / (base * boost)
    assert summary["update_ms"] == pytest.approx({"one_gpu_update_freq_1": one_ms, "one_gpu": boosted_ms,
                                                  "two_gpus_default_legacy_ddp": one_ms})
    assert summary["update_words"] == pytest.approx({"one_gpu_update_freq_1": words, "one_gpu": 2 * words,
                                                     "two_gpus_default_legacy_ddp": 2 * words})
    assert (f"an update past the warm-up (ms, target words): one_gpu_update_freq_1 {one_ms:.1f} ms, {words:,.0f}; "
            f"one_gpu {boosted_ms:.1f} ms, {2 * words:,.0f}") in result.stdout
    assert "2 GPUs' update against one GPU's at --update-freq 1: two_gpus_default_legacy_ddp +0.0 ms" in result.stdout
    loss_header = next(line for line in result.stdout.splitlines() if line.endswith("(loss)"))
    assert "one_gpu_update_freq_1" not in loss_header  # fewer tokens an update: not in the loss table


def test_repeats_run_forwards_then_backwards_and_a_steady_drift_cancels(tmp_path):
    order = tmp_path / "order.txt"
    base, boost = random.uniform(500, 2000), random.uniform(1.05, 1.3)
    result, out = run_script(tmp_path, base, boost, BATCHES="default", UPDATES="150", WARMUP_UPDATES="125",
                             REPEATS="2", FAKE_ORDER=str(order), FAKE_DRIFT="0.1")
    assert result.returncode == 0, result.stderr
    assert order.read_text().splitlines() == ["1 1", "1 2", "2 1", "2 1", "1 2", "1 1"]
    for name in ("one_gpu_update_freq_1", "one_gpu", "two_gpus_default_legacy_ddp"):
        assert (out / f"{name}_run1.log").exists() and (out / f"{name}_run2.log").exists()
    summary = json.loads((out / "distributed.json").read_text())
    assert summary["wps"]["one_gpu_update_freq_1"] == pytest.approx(base * (1.0 + 1.5) / 2)
    assert summary["scaling"]["one_gpu_update_freq_1"]["two_gpus_default_legacy_ddp"] == pytest.approx(2.0)
    assert summary["scaling"]["one_gpu"]["two_gpus_default_legacy_ddp"] == pytest.approx(2.0 / boost)
    by_repeat = summary["scaling_by_repeat"]["one_gpu_update_freq_1"]["two_gpus_default_legacy_ddp"]
    assert by_repeat == pytest.approx([2.0 * 1.2 / 1.0, 2.0 * 1.3 / 1.5])
    assert "two_gpus_default_legacy_ddp 2.00x (by repeat: 2.40x, 1.73x)" in result.stdout
    assert summary["warmup_updates"]["one_gpu_update_freq_1_run2"] == 250


def test_a_run_without_records_past_its_warm_up_is_an_error(tmp_path):
    result, _ = run_script(tmp_path, 1000.0, 1.1, ONE_GPU_UPDATE_FREQS="1", UPDATES="100", WARMUP_UPDATES="100")
    assert result.returncode != 0
    assert "has no record past update 200: raise UPDATES above WARMUP_UPDATES" in result.stderr + result.stdout


@pytest.mark.parametrize("setting, message", [
    ({"ONE_GPU_UPDATE_FREQS": "1 two"}, "ONE_GPU_UPDATE_FREQS: 'two' is not a positive integer"),
    ({"BATCHES": "dealt"}, "BATCHES: unknown way 'dealt'"),
    ({"MAX_TOKENS": "8k"}, "MAX_TOKENS: '8k' is not a positive integer"),
    ({"REPEATS": "0"}, "REPEATS: '0' is not a positive integer"),
])
def test_bad_settings_are_named(tmp_path, setting, message):
    result, out = run_script(tmp_path, 1000.0, 1.1, **setting)
    assert result.returncode == 2 and message in result.stderr
    assert not (out / "one_gpu.log").exists()
