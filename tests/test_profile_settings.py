"""benchmarks/kernels/profile_layer.py --settings: each setting is timed from the kernels' default constants
(not on top of the settings before it), and the defaults are back afterwards. The timing itself is faked: the
script's profiler needs a GPU."""
import os
import sys

import pytest

from mega_fairseq.ops.triton import ema_scan

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "kernels"))
profile_layer = pytest.importorskip("profile_layer")


def test_each_setting_starts_from_the_defaults(monkeypatch, capsys):
    seen = []

    def fake_kernel_times(step, steps):
        seen.append((ema_scan.STAGES, ema_scan.MIN_BACKWARD_CHUNK))
        return [(100.0, 1, "_ema_backward_kernel"), (50.0, 1, "other")]

    monkeypatch.setattr(profile_layer, "kernel_times", fake_kernel_times)
    monkeypatch.setattr(profile_layer, "bf16_step", lambda layer, x: None)
    defaults = (ema_scan.STAGES, ema_scan.MIN_BACKWARD_CHUNK)
    changed = (defaults[0] + 1, defaults[1] // 2)
    profile_layer.compare_settings(None, None, [f"ema_scan.STAGES={changed[0]}",
                                                f"ema_scan.MIN_BACKWARD_CHUNK={changed[1]}"], steps=1)
    assert seen == [(changed[0], defaults[1]), (defaults[0], changed[1])] * 2
    assert (ema_scan.STAGES, ema_scan.MIN_BACKWARD_CHUNK) == defaults
    assert "layer 0.150 ms, EMA kernels 0.100 ms" in capsys.readouterr().out


def test_a_setting_that_names_no_constant_is_refused():
    with pytest.raises(SystemExit, match="not MODULE.CONSTANT=VALUE"):
        profile_layer.parse_setting("ema_scan.NO_SUCH_CONSTANT=3")


def test_a_flag_is_parsed_as_true_or_false():
    assert [value for _, _, value in profile_layer.parse_setting("ema_scan.JOINT_CHUNK_STATES=False")] == [False]
    assert [value for _, _, value in profile_layer.parse_setting("ema_scan.JOINT_CHUNK_STATES=1")] == [True]
    with pytest.raises(SystemExit, match="sets a flag: give True or False"):
        profile_layer.parse_setting("ema_scan.JOINT_CHUNK_STATES=maybe")
