"""Quality benchmark v2 (issue #18): what the whole matrix of pipeline.yaml costs, from measured stages.

    python benchmarks/quality_cpu/v2/cost.py \\
        --launch benchmarks/quality_cpu/v2/seed1/run.log 'seeds=[1]' 'few_shot_k=[]' 'targets=[vader_movie]' \\
        --launch benchmarks/quality_cpu/v2/slice6/run.log 'sources=[...]' ...   # each launch, its overrides
        [--plan 'sources=[...]']                                                 # the design to price

Reads the per-stage seconds that launches of ``run.py`` recorded, each launch with the overrides it ran
under (so that its stage names map to what they ran: which sources a source stage had, which setting a
target run): run.py's results.json (timing.jobs; one worker process per core, one torch thread each, so
CPU time is core time), or the runner's log ("done <stage> (<N>s)" lines: wall seconds, core seconds when
each stage process had a core). Then prices every stage of the plan of pipeline.yaml (with ``--plan``'s
overrides, e.g. SQuAD among the sources) by the first rule that applies, each row naming it:

- measured: the mean of the runs of the same kind (teacher of that task; source variant with the same
  sources; method on that target in that setting);
- a target run: its runs in another setting (few-shot from few-shot where measured, else full data: the
  same steps, and the per-step dev is at most as large); a multi-target run: MPT's prices of its targets,
  summed, times what a measured multi-target run cost against its targets' MPT runs; other methods on the
  same target and setting; the mean of its method's runs; the mean of all target runs;
- a source stage: the variant with other sources, scaled by what MPT's source stage cost with each;
- a teacher: the mean of the measured teachers.

Writes <stem>.json / <stem>.md (default cost.json / cost.md) next to this file (``--results``).
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

Key = tuple[str, str, str]


def key(stage) -> Key:
    """What a stage's price depends on: (teacher | source | method, its task(s) or variant, setting or sources)."""
    if stage.method is None:
        if stage.kind == "distill":
            return "source", stage.folder.name, "+".join(stage.tasks)
        return "teacher", stage.tasks[0], ""
    return stage.method, "+".join(stage.tasks), stage.setting


def label(k: Key) -> str:
    return " / ".join(x for x in k if x)


class Prices:
    """The measured seconds per kind of stage, and the rules that price a kind not measured."""

    def __init__(self, measured: dict[Key, float]):
        self.m = measured

    def _mean(self, keys) -> float | None:
        vals = [self.m[k] for k in keys]
        return statistics.fmean(vals) if vals else None

    def __call__(self, k: Key) -> tuple[float | None, str]:
        if k in self.m:
            return self.m[k], "measured"
        role, what, setting = k
        if role == "teacher":
            v = self._mean(x for x in self.m if x[0] == "teacher")
            return v, "estimate: mean of the measured teachers"
        if role == "source":
            return self._source(what, setting)
        return self._target(role, what, setting)

    def _source(self, variant: str, sources: str) -> tuple[float | None, str]:
        own = [x for x in self.m if x[:2] == ("source", variant)]
        scaled = [self.m[x] * self.m[("source", "mpt", sources)] / self.m[("source", "mpt", x[2])]
                  for x in own if ("source", "mpt", sources) in self.m and ("source", "mpt", x[2]) in self.m]
        if scaled:
            return statistics.fmean(scaled), "estimate: its run with other sources, scaled as MPT's"
        if own:
            return self._mean(own), "estimate: its run with other sources"
        return self._mean(x for x in self.m if x[0] == "source"), "estimate: mean of the measured source stages"

    def _mpt_sum(self, tasks: str, setting: str) -> float | None:
        """MPT's measured single-target runs of these targets in this setting, summed; None if one is missing."""
        each = [self.m.get(("mpt", t, setting)) for t in tasks.split("+")]
        return None if None in each else sum(each)

    def _target(self, method: str, tasks: str, setting: str) -> tuple[float | None, str]:
        few = setting != "full"
        other = [x for x in self.m if x[:2] == (method, tasks)]
        near = [x for x in other if (x[2] != "full") == few] or other
        if near:
            kinds = "few-shot" if near[0][2] != "full" else "full-data"
            return self._mean(near), f"estimate: its {kinds} run(s)"
        if "+" in tasks:  # several targets in one run: priced from MPT's single-target runs
            parts = [self(("mpt", t, setting))[0] for t in tasks.split("+")]
            ratios = [self.m[x] / mpt for x in self.m if x[0] == method and (mpt := self._mpt_sum(x[1], x[2]))]
            if ratios and None not in parts:
                return sum(parts) * statistics.fmean(ratios), "estimate: MPT's runs on its targets, scaled"
        same_task = [x for x in self.m if x[1] == tasks and x[0] not in ("teacher", "source")]
        if same_task:
            near = [x for x in same_task if x[2] == setting] or same_task
            return self._mean(near), "estimate: other methods on this target"
        own = [x for x in self.m if x[0] == method]
        if own:
            return self._mean(own), f"estimate: mean of the measured {method} runs"
        runs = [x for x in self.m if x[0] not in ("teacher", "source")]
        return self._mean(runs), "estimate: mean of the measured target runs"


def price(planned: list, measured: dict[Key, float]) -> list[dict]:
    """One row per planned stage: its CPU seconds and where the figure comes from."""
    prices = Prices(measured)
    rows = []
    for st in planned:
        s, how = prices(key(st))
        rows.append({"stage": st.name, "cpu_s": s, "from": how if s is not None else "no measured stage of its kind"})
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
    ap.add_argument("--launch", required=True, nargs="+", action="append", metavar="FILE [KEY=VALUE ...]",
                    help="a launch's results.json (timing.jobs) or runner log, then the overrides it ran with; "
                         "repeat for each launch")
    ap.add_argument("--plan", nargs="*", default=[], help="overrides of the plan to price (default: pipeline.yaml)")
    ap.add_argument("--config", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--results", default=str(HERE))
    ap.add_argument("--stem", default="cost", help="output file names: <stem>.json, <stem>.md")
    args = ap.parse_args(argv)

    from run import load_config, stages

    runs = collections.defaultdict(list)  # kind of stage -> its measured seconds (each seed, each launch)
    for path, *sets in args.launch:
        timed = load_config(args.config, sets=sets, dry_run=True)
        jobs = read_jobs(Path(path))
        for s in stages(timed, list(timed.methods)):
            if s.name in jobs and not jobs[s.name]["skipped"]:
                runs[key(s)].append(jobs[s.name]["cpu_s"])
    measured = {k: statistics.fmean(v) for k, v in runs.items()}
    full = load_config(args.config, sets=args.plan, dry_run=True)
    rows = price(stages(full, list(full.methods)), measured)
    known = [r["cpu_s"] for r in rows if r["cpu_s"] is not None]
    core_h = sum(known) / 3600
    rules = collections.Counter(r["from"] for r in rows)
    res = {"command": "python " + " ".join([str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
           "plan": args.plan,
           "measured": {label(k): round(v, 1) for k, v in measured.items()},
           "runs_measured": {label(k): len(v) for k, v in runs.items()},
           "stages": len(rows), "estimated": sum(r["from"] != "measured" for r in rows),
           "unpriced": sum(r["cpu_s"] is None for r in rows), "by_rule": dict(rules),
           "core_hours": round(core_h, 2), "cores": args.cores,
           "wall_hours_at_least": round(core_h / args.cores, 2), "rows": rows}
    out = Path(args.results)
    (out / f"{args.stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    design = "pipeline.yaml" + (f" with {' '.join(args.plan)}" if args.plan else "")
    lines = ["# Quality benchmark v2: the cost of the whole matrix", "", f"Made by `{res['command']}`.", "",
             f"The full plan of {design} has {res['stages']} stages; priced from the stages measured in those "
             f"launches ({len(measured)} kinds, {sum(map(len, runs.values()))} stages), {res['estimated']} of "
             f"them by estimate ({res['unpriced']} unpriced): "
             f"**{core_h:.1f} core-hours, at least {res['wall_hours_at_least']:.1f} h wall on {args.cores} cores** "
             "(perfect packing).", "", "| how a stage is priced | stages | core hours |", "|---|---|---|"]
    for how, n in rules.most_common():
        hours = sum(r["cpu_s"] or 0 for r in rows if r["from"] == how) / 3600
        lines.append(f"| {how} | {n} | {hours:.1f} |")
    lines += ["", "| measured stage | core min (mean) | runs |", "|---|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} | {res['runs_measured'][k]} |" for k, v in res["measured"].items()]
    (out / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
