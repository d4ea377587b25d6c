"""Counts for the reliability figures: faults injected and inputs tried, by kind.

Tests call ``tally(kind)`` once a case has passed its checks, so a case that is not handled fails its
test instead of being counted. The section's conftest prints the counts at the end of the run and
writes them to $MPTUNE_RELIABILITY_COUNTS if set. The committed tally (tally.json, tally.md and the
table in README.md) comes from one command, which refuses to write unless every test passed:

    python tests/reliability/tally.py            # --render: the tables again from tally.json, no test run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

COUNTS: Counter = Counter()
HERE = Path(__file__).resolve().parent
COMMAND = "python tests/reliability/tally.py"
BEGIN, END = "<!-- tally:begin -->", "<!-- tally:end -->"  # README.md's copy of tally.md
IN_PROCESS = "in-process exception, no process killed"  # raised inside the run to stand for a kill
SIGKILL = "SIGKILL"  # a real process, killed by the OS

# kind (as the tests call tally) -> (what was done, how a "kill" was made if it is one).
# Group = the kind's prefix: "faults", "bad inputs", "valid inputs".
KINDS: dict[str, tuple[str, str | None]] = {
    "faults: process killed (toy, every step)": (
        "toy run stopped before the loss of every step (and twice in one run), then resumed bit for bit", IN_PROCESS),
    "faults: killed mid checkpoint write": ("toy run stopped mid checkpoint write (file half written), resumed",
                                            IN_PROCESS),
    "faults: killed during evaluation": ("toy run stopped during dev evaluation, resumed", IN_PROCESS),
    "faults: killed mid log line": ("toy run stopped mid log line (torn line), resumed", IN_PROCESS),
    "faults: killed while writing a prompt file": ("prompt write stopped in fsync (old file intact)", IN_PROCESS),
    "faults: SIGKILL of a real prompt-tune process": ("`mptune prompt-tune` process killed, resumed bit for bit",
                                                      SIGKILL),
    "faults: damaged checkpoint (refused, previous used)": (
        "damaged newest checkpoint (each kind) / all checkpoints damaged: refused, previous good one used", None),
    "faults: random checkpoint byte damage (detected)": ("random byte damage to a checkpoint (hypothesis)", None),
    "faults: exhaustive single-byte flips in a checkpoint (detected)": (
        "every single-byte flip over both checkpoint files", None),
    "faults: non-finite loss injected (nan/inf/-inf x every step)": ("NaN / +inf / -inf loss at every step", None),
    "faults: non-finite loss injected (real prompt-tune, CLI)": ("non-finite loss in a real CLI run", None),
    "faults: non-finite gradient injected": ("non-finite gradient under a finite loss", None),
    "faults: fp16 overflow (step skipped by the loss scaler)": ("fp16 overflow: step skipped by the loss scaler",
                                                                None),
    "bad inputs: task data files (every file-backed task)": ("task data files, every file-backed task (hypothesis)",
                                                             None),
    "bad inputs: predict input files": ("`predict` input files (hypothesis)", None),
    "bad inputs: random bytes into the readers": ("random bytes into the tsv/csv/jsonl/SQuAD readers", None),
    "bad inputs: malformed rows among good ones (named file:line)": (
        "a malformed row among good ones (file:line named)", None),
    "bad inputs: wrong encodings, empty/blank files, huge lines": ("wrong encodings, empty/blank files, huge lines",
                                                                   None),
    "bad inputs: labels outside the label set": ("labels outside the label set", None),
    "bad inputs: config impossible values / wrong types": ("config: impossible values and wrong types", None),
    "bad inputs: config unknown keys": ("config: unknown keys", None),
    "bad inputs: resume with changed train settings": ("resume with changed train settings", None),
    "bad inputs: malicious pickle loads (payload x format x suffix x flag)": (
        "malicious pickle loads (payload x format x suffix x allow_pickle): no code ran", None),
    "bad inputs: malformed prompt files": ("malformed pickle prompt files", None),
    "bad inputs: prompt metadata/tensor fuzz": ("prompt files: metadata / tensor fuzz", None),
    "valid inputs: rows read back exactly (no silent drop)": ("valid files: every row read back exactly", None),
}


def tally(kind: str, n: int = 1) -> None:
    COUNTS[kind] += n


def summarise(counts: dict[str, int]) -> dict:
    """The tally artifact: per kind and per group, and how the kills were made."""
    missing = sorted(set(counts) - set(KINDS))
    if missing:
        raise KeyError(f"describe these tally kinds in {__file__} KINDS: {missing}")
    kinds = [{"group": k.split(":", 1)[0], "kind": k, "what": KINDS[k][0], "kill": KINDS[k][1], "tried": counts[k]}
             for k in KINDS if k in counts]
    groups: Counter = Counter()
    kills: Counter = Counter()
    for r in kinds:
        groups[r["group"]] += r["tried"]
        if r["kill"]:
            kills[r["kill"]] += r["tried"]
    return {"command": COMMAND,
            "handled": "all, since a case is counted only after its checks passed and this file is written only "
                       "from a run in which every test of tests/reliability but test_tally.py (which checks this "
                       "file) passed",
            "totals": dict(groups), "kills": dict(kills), "kinds": kinds}


def markdown(t: dict) -> str:
    tot, kills = t["totals"], t["kills"]
    out = [f"Written by `{t['command']}` from one run of `pytest tests/reliability` (hypothesis derandomized, "
           "each property a fixed number of examples: the same counts every run). Handled: " + t["handled"] + ".",
           "",
           "| kind | tried |", "|---|---:|"]
    for group in tot:
        out.append(f"| **{group}** | **{tot[group]:,}** |")
        out += [f"| {r['what']}" + (f" ({r['kill']})" if r["kill"] else "") + f" | {r['tried']:,} |"
                for r in t["kinds"] if r["group"] == group]
    out += ["", f"Kills: {kills.get(SIGKILL, 0)} real ({SIGKILL} of a process); {kills.get(IN_PROCESS, 0)} "
            "simulated by an exception (`toy.Killed`, a BaseException, or a KeyboardInterrupt) raised inside the "
            "run at the chosen point; the process lives on and the test resumes from the files on disk."]
    return "\n".join(out) + "\n"


def main() -> None:
    """Run the section, then rewrite tally.json, tally.md and README.md's table from its counts
    (with --render: from the counts in tally.json, no test run)."""
    root = HERE.parent.parent
    if sys.argv[1:] == ["--render"]:
        t = summarise({r["kind"]: r["tried"] for r in json.loads((HERE / "tally.json").read_text())["kinds"]})
    else:
        t = run(root)
    (HERE / "tally.json").write_text(json.dumps(t, indent=1) + "\n")
    md = markdown(t)
    (HERE / "tally.md").write_text("# Reliability tally\n\n" + md)
    readme = HERE / "README.md"
    head, tail = readme.read_text().split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + md + tail[tail.index(END):])
    print(f"wrote {HERE / 'tally.json'}, tally.md and the table in README.md")


def run(root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "counts.json"
        env = dict(os.environ, MPTUNE_RELIABILITY_COUNTS=str(counts_file))
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE),
                              f"--ignore={HERE / 'test_tally.py'}"], cwd=root, env=env)  # it checks these files
        if rc != 0:
            sys.exit(f"pytest tests/reliability failed (exit {rc}): tally not written")
        return summarise(json.loads(counts_file.read_text())["counts"])


if __name__ == "__main__":
    main()
