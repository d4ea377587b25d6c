"""Compare methods across results.json files: task average (dev and test) per setting, paired by seed.

Each argument is ``LABEL=PATH:METHOD`` (PATH a results.json written by run.py); the first
is the reference the others are paired against, seed by seed. Control tasks (the file's
``controls``, e.g. CoLA) are left out of the averages unless ``--with-controls``.

    python benchmarks/quality_cpu/compare.py \\
        "MPT=benchmarks/quality_cpu/results.json:mpt" \\
        "lr u,v 0.3=benchmarks/quality_cpu/lr_sweep/task0.3/results.json:mpt"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def per_seed_average(tasks: dict, names: list[str], split: str = "test",
                     require: list[str] | None = None) -> dict[str, float]:
    """seed -> mean of ``tasks[t]["seeds"][seed][split]`` over ``names`` (a results.json cell's tasks),
    for the seeds that every task in ``require`` (default: ``names``) has, in the order they were run;
    {} when there is nothing to average (e.g. the targets without controls of a launch on the control only)."""
    require = names if require is None else require
    if not require or not names:
        return {}
    common = set.intersection(*(set(tasks[t]["seeds"]) for t in require))
    return {s: statistics.fmean(tasks[t]["seeds"][s][split] for t in names)
            for s in tasks[require[0]]["seeds"] if s in common}


def seed_averages(res: dict, method: str, setting: str, split: str, with_controls: bool) -> dict[str, float]:
    """seed -> average over the tasks of one (setting, method) cell; {} if the cell is missing."""
    cell = res["results"]["settings"].get(setting, {}).get(method)
    if cell is None:
        return {}
    skip = set() if with_controls else set(res.get("controls", []))
    return per_seed_average(cell["tasks"], [t for t in cell["tasks"] if t not in skip], split)


def _mean_std(xs: list[float]) -> str:
    """Mean ± population std over seeds, as in results.md."""
    return f"{statistics.fmean(xs):.1f} ± {statistics.pstdev(xs):.1f}"


def table(entries: list[tuple[str, dict, str]], split: str, with_controls: bool) -> str:
    """Markdown: one row per entry, per setting the mean ± std over seeds and the paired diffs to entry 0."""
    settings = [s for s in entries[0][1]["results"]["settings"]]
    head = "| method | " + " | ".join(f"{s} | {s}: − {entries[0][0]} per seed" for s in settings) + " |"
    lines = [head, "|---" * (1 + 2 * len(settings)) + "|"]
    ref = {s: seed_averages(entries[0][1], entries[0][2], s, split, with_controls) for s in settings}
    for i, (label, res, method) in enumerate(entries):
        cells = []
        for s in settings:
            mine = seed_averages(res, method, s, split, with_controls)
            if not mine:
                cells += ["–", "–"]
                continue
            paired = [mine[k] - ref[s][k] for k in mine if k in ref[s]]
            diffs = ", ".join(f"{d:+.1f}" for d in paired) + (f" (mean {statistics.mean(paired):+.1f})" if paired else "")
            cells += [_mean_std(list(mine.values())), diffs if i > 0 else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entries", nargs="+", help="LABEL=PATH:METHOD (the first is the reference)")
    ap.add_argument("--with-controls", action="store_true", help="keep the control tasks in the averages")
    args = ap.parse_args(argv)
    entries = []
    for e in args.entries:
        label, sep, rest = e.partition("=")
        path, sep2, method = rest.rpartition(":")
        if not (sep and sep2 and label and method):
            ap.error(f"{e!r}: expected LABEL=PATH:METHOD")
        res = json.loads(Path(path).read_text())
        if not any(method in cell for cell in res["results"]["settings"].values()):
            ap.error(f"{path}: no method {method!r} (has {sorted({m for c in res['results']['settings'].values() for m in c})})")
        entries.append((label, res, method))
    what = "all targets" if args.with_controls else "targets without the controls"
    for split in ("dev", "test"):
        print(f"\n{split} score, task average over {what} (mean ± std over seeds):\n")
        print(table(entries, split, args.with_controls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
