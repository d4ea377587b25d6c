"""Quality benchmark v2 (issue #18): what the whole matrix of pipeline.yaml costs, from measured stages.

    python benchmarks/quality_cpu/v2/cost.py --timing runs/quality_v2/results_seed1/results.json \\
        --set 'seeds=[1]' 'few_shot_k=[]' 'targets=[vader_movie,vader_nyt]'    # the overrides of that launch

Reads the per-stage CPU seconds that ``run.py`` recorded for one or more launches of the same overrides
(results.json: timing.jobs; one worker process per core, one torch thread each, so CPU time is core
time; or the wall seconds of the runner's "done" lines in its log), and prices every stage of
the full plan of pipeline.yaml (no overrides): a stage is priced by the measured stages of the same kind
(teacher of that task; source variant; method on that target, full data; the mean where several seeds
ran), else by the mean of the measured stages of its method (e.g. a target not run yet), else (a method
not measured) by the mean of all measured target runs, each flagged as an estimate. Few-shot runs are
priced as full-data runs of the method: the same steps, and the per-step dev is at most as large.
Writes cost.json / cost.md next to this file (``--results``).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(HERE.parent), str(REPO / "src")]


def key(stage) -> tuple[str, str, str]:
    """What a stage's price depends on: (teacher | source | method, its task(s) or variant, setting)."""
    if stage.method is None:
        return ("source", stage.folder.name, "") if stage.kind == "distill" else ("teacher", stage.tasks[0], "")
    return stage.method, "+".join(stage.tasks), stage.setting


def price(planned: list, measured: dict[tuple[str, str, str], float]) -> list[dict]:
    """One row per planned stage: its CPU seconds and where the figure comes from."""
    by_kind = collections.defaultdict(list)
    for (kind, _, _), s in measured.items():
        by_kind[kind].append(s)
    targets = [s for (kind, _, _), s in measured.items() if kind not in ("teacher", "source")]
    rows = []
    for st in planned:
        k = key(st)
        if k in measured:
            rows.append({"stage": st.name, "cpu_s": measured[k], "from": "measured"})
        elif (*k[:2], "full") in measured:
            rows.append({"stage": st.name, "cpu_s": measured[(*k[:2], "full")],
                         "from": "estimate: its full-data run"})
        elif by_kind.get(k[0]):
            rows.append({"stage": st.name, "cpu_s": statistics.fmean(by_kind[k[0]]),
                         "from": f"estimate: mean of the measured {k[0]} stages"})
        elif st.method is not None and targets:  # a method not measured: like any target run (100 steps)
            rows.append({"stage": st.name, "cpu_s": statistics.fmean(targets),
                         "from": "estimate: mean of the measured target runs"})
        else:
            rows.append({"stage": st.name, "cpu_s": None, "from": "no measured stage of its kind"})
    return rows


def read_jobs(path: Path) -> dict[str, dict]:
    """stage name -> {skipped, cpu_s}: run.py's results.json (timing.jobs), or, for a launch stopped before
    it wrote one, the runner's log (its "done <stage> (<N>s)" lines: wall seconds, which equal core
    seconds when each stage process has a core of its own)."""
    from mptune.runner import DONE_LINE

    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        return {j["stage"]: j for j in json.loads(text)["timing"]["jobs"]}
    done = (DONE_LINE.match(line.replace("\0", "").strip()) for line in text.splitlines())
    return {m["stage"]: {"stage": m["stage"], "skipped": False, "cpu_s": float(m["s"])} for m in done if m}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timing", required=True, nargs="+",
                    help="results.json of run.py launches (their timing.jobs), or those launches' runner logs")
    ap.add_argument("--config", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="the overrides that launch ran with")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--results", default=str(HERE))
    args = ap.parse_args(argv)

    from run import load_config, stages

    timed = load_config(args.config, sets=args.set, dry_run=True)
    timed_stages = stages(timed, list(timed.methods))
    runs = collections.defaultdict(list)  # kind of stage -> its measured CPU seconds (each seed, each log)
    for path in args.timing:
        jobs = read_jobs(Path(path))
        for s in timed_stages:
            if s.name in jobs and not jobs[s.name]["skipped"]:
                runs[key(s)].append(jobs[s.name]["cpu_s"])
    measured = {k: statistics.fmean(v) for k, v in runs.items()}
    full = load_config(args.config, dry_run=True)
    rows = price(stages(full, list(full.methods)), measured)
    known = [r["cpu_s"] for r in rows if r["cpu_s"] is not None]
    core_h = sum(known) / 3600
    res = {"command": "python " + " ".join([str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
           "measured": {" / ".join(x for x in k if x): round(v, 1) for k, v in measured.items()},
           "runs_measured": {" / ".join(x for x in k if x): len(v) for k, v in runs.items()},
           "stages": len(rows), "estimated": sum(r["from"] != "measured" for r in rows),
           "unpriced": sum(r["cpu_s"] is None for r in rows), "core_hours": round(core_h, 2),
           "cores": args.cores, "wall_hours_at_least": round(core_h / args.cores, 2), "rows": rows}
    out = Path(args.results)
    (out / "cost.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Quality benchmark v2: the cost of the whole matrix", "", f"Made by `{res['command']}`.", "",
             f"The full plan of pipeline.yaml has {res['stages']} stages; priced from the stages measured in that "
             f"launch(es) ({len(measured)} kinds, {sum(map(len, runs.values()))} stages), {res['estimated']} of "
             f"them by estimate ({res['unpriced']} unpriced): "
             f"**{core_h:.1f} core-hours, at least {res['wall_hours_at_least']:.1f} h wall on {args.cores} cores** "
             "(perfect packing).", "", "| measured stage | core min (mean) | runs |", "|---|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} | {res['runs_measured'][k]} |" for k, v in res["measured"].items()]
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
