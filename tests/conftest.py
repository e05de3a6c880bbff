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


def pytest_collection_finish(session):
    """Start the Triton-interpreter check scripts of the selected tests on the idle core."""
    from interpreter_runs import start_all
    from mega_fairseq.ops.triton import triton_available

    if triton_available():
        tests_dir = session.config.rootpath / "tests"
        start_all({str(item.path.relative_to(tests_dir)) for item in session.items
                   if item.path.is_relative_to(tests_dir) and not item.get_closest_marker("gpu")})


def pytest_sessionfinish(session, exitstatus):
    from interpreter_runs import stop_all

    stop_all()
