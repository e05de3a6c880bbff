"""The Triton-interpreter check scripts, run as subprocesses started early in the background.

pytest runs the tests on one core; the interpreter checks are long, single-threaded subprocesses.
``start_all`` (called by conftest.py once collection is done) starts each selected script, and
``result`` waits for one and returns its JSON line, so the checks run on the otherwise idle core
while the other tests run.
"""
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {  # test file -> its interpreter script, both relative to tests/
    "ops/test_ema_fused.py": "ops/ema_interpreted.py",
    "ops/test_attention_fused.py": "ops/attention_interpreted.py",
    "modules/test_block_fused.py": "modules/block_fused_interpreted.py",
}
_RUNS: Dict[str, tuple] = {}


def start(script: str) -> None:
    """Start tests/``script`` under TRITON_INTERPRET=1 unless it is already running."""
    if script in _RUNS:
        return
    env = dict(os.environ, TRITON_INTERPRET="1")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, os.path.join(TESTS, script)], env=env, stdout=out, stderr=err,
                               text=True)
    _RUNS[script] = (process, out, err)


def start_all(test_files) -> None:
    """Start the scripts of the collected test files (paths relative to tests/)."""
    for test_file, script in SCRIPTS.items():
        if test_file in test_files:
            start(script)


def result(script: str, timeout: float = 900) -> dict:
    """The JSON summary a script printed last; raises with its stderr's end if it failed."""
    start(script)
    process, out, err = _RUNS[script]
    returncode = process.wait(timeout=timeout)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    if returncode != 0:
        raise AssertionError(f"{script} failed (exit {returncode}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def stop_all() -> None:
    """End the scripts still running (a session that stopped early)."""
    for process, _, _ in _RUNS.values():
        if process.poll() is None:
            process.kill()
