"""Reliability section: one intra-op thread while these tests run (tiny models are several
times faster single-threaded, and far faster when the machine is shared), restored after.
Subprocesses started here get OMP_NUM_THREADS=1 too, so in-process and subprocess runs
use the same kernels (bit-exact comparisons)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    from .tally import COUNTS, UNHANDLED

    if not COUNTS:
        return
    import json
    import os

    tr = terminalreporter
    tr.section("reliability figures")
    for kind, n in sorted(COUNTS.items()):
        bad = UNHANDLED.get(kind, 0)
        tr.write_line(f"{kind:<48} {n:>6} tried   {n - bad:>6} handled" + (f"   {bad} KNOWN GAPS" if bad else ""))
    path = os.environ.get("MPTUNE_RELIABILITY_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"counts": dict(COUNTS), "unhandled": dict(UNHANDLED)}, f, indent=1, sort_keys=True)
