"""Strong baselines first (issue #18, item 6): read the sweep's results (v2/sweep/<method>_<setting>/ and its
subfolders, written by sweep.sh or a later run.py launch with --results) and choose each method's setting on dev.

    python benchmarks/quality_cpu/v2/choose.py pt     # -> v2/sweep/pt.md, pt.json
    python benchmarks/quality_cpu/v2/choose.py mpt

The choice for the matrix is the setting with the best dev score averaged over the targets (one
pipeline config runs every target); the table also shows each target's own best setting on dev and
the test score that setting reaches ("what the method reaches at its best on every target").
Dev = the final dev score of the run's best prompt (up to data.eval_limit examples); test likewise. Runs
without a final dev pass (target_train.final_dev: false) give the dev score at their best step instead
(target_train.eval_limit examples), marked † in the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(method: str, root: Path = HERE / "sweep") -> dict[str, dict]:
    """setting -> target -> {dev, test, metric, best_step} of seed 1, full data, from every results.json of
    the setting's folder `<root>/<method>_<setting>/` and its subfolders (targets run in later launches)."""
    out: dict[str, dict] = {}
    for folder in sorted(root.glob(f"{method}_*/")):
        setting = out.setdefault(folder.name[len(method) + 1:], {})
        for f in sorted(folder.glob("**/results.json")):
            cell = json.loads(f.read_text())["results"]["settings"]["full"][method]["tasks"]
            for t, c in cell.items():
                if not c["seeds"].get("1"):
                    continue
                if t in setting:
                    raise SystemExit(f"{f}: {t} is already in another results.json of {folder}")
                r = c["seeds"]["1"]
                dev, final = (r["dev"], True) if r["dev"] is not None else (r.get("dev_selection"), False)
                if dev is None:
                    raise SystemExit(f"{f}: {t} has no dev score")
                setting[t] = {"dev": dev, "final_dev": final, "test": r["test"], "metric": c["metric"],
                              "best_step": r["best_step"]}
    return {s: r for s, r in out.items() if r}


def choose(runs: dict[str, dict], controls: tuple[str, ...] = ("cola",)) -> dict:
    """The setting with the best mean dev over the targets every setting that ran them all has, controls
    left out (`chosen_on`); and each target's own best setting on dev, controls included."""
    targets = sorted({t for r in runs.values() for t in r})
    on = [t for t in targets if t not in controls]
    complete = {s: r for s, r in runs.items() if all(t in r for t in on)}
    mean_dev = {s: statistics.fmean(r[t]["dev"] for t in on) for s, r in complete.items()} if on else {}
    best = max(mean_dev, key=mean_dev.get) if mean_dev else None
    per_target = {t: max((s for s in runs if t in runs[s]), key=lambda s: runs[s][t]["dev"]) for t in targets}
    return {"targets": targets, "chosen_on": on, "settings": runs, "mean_dev": mean_dev, "chosen": best,
            "best_per_target": {t: {"setting": s, **runs[s][t]} for t, s in per_target.items()}}


def markdown(method: str, c: dict) -> str:
    ts = c["targets"]
    lines = [f"# {method.upper()} sweep: dev (test) per target, full data, seed 1", "",
             "| setting | " + " | ".join(f"{t} ({c['settings'][next(iter(c['settings']))][t]['metric']})"
                                        for t in ts) + " | mean dev |", "|---" * (len(ts) + 2) + "|"]
    for s, r in c["settings"].items():
        cells = [f"{r[t]['dev']:.1f}{'' if r[t]['final_dev'] else '†'} ({r[t]['test']:.1f}) @{r[t]['best_step']}"
                 if t in r else "—" for t in ts]
        md = c["mean_dev"].get(s)
        lines.append(f"| {s}{' **(chosen)**' if s == c['chosen'] else ''} | " + " | ".join(cells)
                     + f" | {'—' if md is None else f'{md:.1f}'} |")
    lines += ["", f"Cells: dev score (test score) @ best step. Mean dev and the best of it: over "
              f"{', '.join(c['chosen_on'])} (controls left out). Each target's own best on dev, and its test "
              "score there. † the dev score at the best step of training (no final dev pass).", ""]
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
