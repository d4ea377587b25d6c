"""Strong baselines first (issue #18, item 6): read the sweep's results (v2/sweep/<method>_<setting>/,
written by sweep.sh through run.py) and choose each method's setting on dev.

    python benchmarks/quality_cpu/v2/choose.py pt     # -> v2/sweep/pt.md, pt.json
    python benchmarks/quality_cpu/v2/choose.py mpt

The choice for the matrix is the setting with the best dev score averaged over the targets (one
pipeline config runs every target); the table also shows each target's own best setting on dev and
the test score that setting reaches ("what the method reaches at its best on every target").
Dev = the final dev score of the run's best prompt (up to data.eval_limit examples); test likewise.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(method: str) -> dict[str, dict]:
    """setting -> target -> {dev, test, metric, n_test?} of seed 1, full data."""
    out = {}
    for f in sorted((HERE / "sweep").glob(f"{method}_*/results.json")):
        res = json.loads(f.read_text())
        cell = res["results"]["settings"]["full"][method]["tasks"]
        out[f.parent.name[len(method) + 1:]] = {
            t: {"dev": c["seeds"]["1"]["dev"], "test": c["seeds"]["1"]["test"], "metric": c["metric"],
                "best_step": c["seeds"]["1"]["best_step"]}
            for t, c in cell.items() if c["seeds"].get("1")}
    return out


def choose(runs: dict[str, dict]) -> dict:
    targets = sorted({t for r in runs.values() for t in r})
    complete = {s: r for s, r in runs.items() if all(t in r for t in targets)}
    mean_dev = {s: statistics.fmean(r[t]["dev"] for t in targets) for s, r in complete.items()}
    best = max(mean_dev, key=mean_dev.get) if mean_dev else None
    per_target = {t: max((s for s in runs if t in runs[s]), key=lambda s: runs[s][t]["dev"]) for t in targets}
    return {"targets": targets, "settings": runs, "mean_dev": mean_dev, "chosen": best,
            "best_per_target": {t: {"setting": s, **runs[s][t]} for t, s in per_target.items()}}


def markdown(method: str, c: dict) -> str:
    ts = c["targets"]
    lines = [f"# {method.upper()} sweep: dev (test) per target, full data, seed 1", "",
             "| setting | " + " | ".join(f"{t} ({c['settings'][next(iter(c['settings']))][t]['metric']})"
                                        for t in ts) + " | mean dev |", "|---" * (len(ts) + 2) + "|"]
    for s, r in c["settings"].items():
        cells = [f"{r[t]['dev']:.1f} ({r[t]['test']:.1f}) @{r[t]['best_step']}" if t in r else "—" for t in ts]
        md = c["mean_dev"].get(s)
        lines.append(f"| {s}{' **(chosen)**' if s == c['chosen'] else ''} | " + " | ".join(cells)
                     + f" | {'—' if md is None else f'{md:.1f}'} |")
    lines += ["", "Cells: dev score (test score) @ best step. Chosen for the matrix: the best mean dev. "
              "Each target's own best on dev, and its test score there:", ""]
    lines += [f"- {t}: {b['setting']} — dev {b['dev']:.1f}, test {b['test']:.1f}" for t, b in c["best_per_target"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    method = (argv or sys.argv[1:] or ["pt"])[0]
    c = choose(load(method))
    if not c["settings"]:
        print(f"no sweep results for {method} under {HERE / 'sweep'}")
        return 1
    (HERE / "sweep" / f"{method}.json").write_text(json.dumps(c, indent=1) + "\n")
    md = markdown(method, c)
    (HERE / "sweep" / f"{method}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
