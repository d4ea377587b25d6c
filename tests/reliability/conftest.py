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
    from .tally import COMMAND, COUNTS, HERE

    if not COUNTS:
        return
    import json
    import os

    tr = terminalreporter
    tr.section("reliability figures")
    for kind, n in sorted(COUNTS.items()):
        tr.write_line(f"{kind:<70} {n:>6} tried")
    saved = HERE / "tally.json"
    committed = {r["kind"]: r["tried"] for r in json.loads(saved.read_text())["kinds"]} if saved.is_file() else {}
    changed = sorted(k for k in set(committed) | set(COUNTS) if COUNTS.get(k) != committed.get(k))
    if changed:
        tr.write_line(f"differs from tests/reliability/tally.json for {len(changed)} kinds: expected if only part of "
                      f"the section ran; after a change to the section, rewrite it with `{COMMAND}`")
    path = os.environ.get("MPTUNE_RELIABILITY_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"counts": dict(COUNTS)}, f, indent=1, sort_keys=True)
