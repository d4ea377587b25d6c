"""Quality benchmark v2 (issue #18): the report of a run of v2/pipeline.yaml.

    python benchmarks/quality_cpu/v2/report.py            # runs/quality_v2 -> v2/results.{json,md}, dev_curves.png
                                                          #   and records.json (each run's per-example numbers)

Reads the stage folders (`mptune.plan.task_runs`), so it works on a partial run: a cell or claim
shows what has finished. Every comparison is a paired difference of test scores with a bootstrap 95 %
interval over the test examples and the seeds (few-shot: the seed x draw runs), each task's metric
recomputed on the drawn examples, or, where it is a mean over examples (accuracy, SQuAD F1 / EM), averaged
from the examples' own scores: the same number, seconds instead of minutes
(`mptune.stats.paired_bootstrap`, via quickstart.compare); the
average leaves out the control target(s) (a report of controls alone averages them and marks each claim
"on the control only": nothing to transfer there, so it shows the noise, not the claim). Teachers are
reported against the majority class of their dev set (QA: the empty answer; regression: a constant, 0),
with the difference's bootstrap 95 % interval over the dev examples; a teacher whose interval does not lie
above 0 does not beat it and should be left out of `sources`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(HERE.parent), str(REPO / "src")]

# (a, b, the paper's claim that a − b > 0 tests)
CLAIMS = [("mpt", "pt", "MPT > PT"), ("mpt", "spot", "MPT > SPoT (best single source)"),
          ("mpt", "spot_avg", "MPT > SPoT (teachers' average)"), ("mpt", "mpt_no_distill", "distillation helps"),
          ("mpt", "mpt_no_decomp", "decomposition helps"), ("mpt_multi", "mpt", "MPT* (multi-target) helps")]


def cells(runs: dict, targets: list[str]) -> dict:
    """method -> task -> {mean, std, n_runs, n_test, runs: {seed[/draw]: test}, selected: {seed[/draw]: {step,
    dev}}} of one setting: `selected` is each run's best step and the dev score the selection saw there
    (dev None where several targets shared the selection, MPT*)."""
    from run import dev_at_best

    from mptune.plan import replicates

    out = {}
    for method, by_task in runs.items():
        out[method] = {}
        for t in targets:
            reps = replicates(by_task.get(t, {}))
            scores = [r.entry["test"]["score"] for r in reps.values()]
            out[method][t] = {"mean": statistics.fmean(scores) if scores else None,
                              "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0, "n_runs": len(scores),
                              "n_test": next((r.entry.get("n_test") for r in reps.values()), None),
                              "runs": {k: r.entry["test"]["score"] for k, r in reps.items()},
                              "selected": {k: {"step": r.best_step, "dev": dev_at_best(r)} for k, r in reps.items()}}
    return out


def verdict(iv: dict) -> str:
    """A claim a − b > 0 read from its 95 % interval: "holds", "reversed" or "not separated"."""
    return "holds" if iv["ci95_low"] > 0 else "reversed" if iv["ci95_high"] < 0 else "not separated"


@functools.cache
def _record(folder: Path, task: str) -> dict:
    """A run's text-free record (`common.example_record`), read once per report: a run is in several
    claims and in records.json. Shared: callers do not change it."""
    from mptune.recipes import common

    return common.example_record(folder, task)


def _pair(runs: dict, a: str, b: str, targets: list[str], main: list[str], resamples: int) -> dict | None:
    """runs[a] − runs[b] on the targets both ran, averaged over the main ones among them (or, when only
    controls ran, over those): verdict, interval, runs and per task; None when they share no target."""
    from mptune.recipes.quickstart import compare

    have = [t for t in targets if all(runs.get(m, {}).get(t) for m in (a, b))]  # a partial run: what both ran
    main_have = [t for t in main if t in have]
    over = main_have or have  # only controls ran (e.g. CoLA alone): their average, marked as such
    c = compare(runs, have, resamples, pair=(a, b), average_over=over, record=_record) if have else None
    if c is None:
        return None
    iv = c["average"]
    return {"verdict": verdict(iv), "average_over": over, "controls_only": not main_have,
            "runs": len(c["seeds"]) if not c.get("draws") else c["draws"], "average": iv, "tasks": c["tasks"],
            "n_test": c["n_test"], "resamples": resamples}


def claims(runs: dict, targets: list[str], main: list[str], resamples: int) -> list[dict]:
    return [{"a": a, "b": b, "claim": what, **c} for a, b, what in CLAIMS
            if (c := _pair(runs, a, b, targets, main, resamples)) is not None]


def against(runs: dict, there: dict, where: dict, targets: list[str], main: list[str], resamples: int) -> list[dict]:
    """Each method of `there` (method -> task -> seed -> draw, from the folder where[method] names) paired
    with its own runs here: "METHOD here − METHOD there" (e.g. 200 target steps against 100), over the
    seeds both ran, in the layout of claims()."""
    out = []
    for m, by_task in there.items():
        c = _pair({"here": runs.get(m, {}), "there": by_task}, "here", "there", targets, main, resamples)
        if c is not None:
            c.pop("controls_only")
            out.append({"method": m, "there": where[m], **c})
    return out


def trivial_predictions(task, examples) -> tuple[list | None, str]:
    """Answering every example alike: the majority class of these examples (classification), the empty
    answer (generation); None for regression (a constant: no correlation, scored 0)."""
    if task.kind.value == "classification":
        return [collections.Counter(e.label for e in examples).most_common(1)[0][0]] * len(examples), "majority class"
    if task.kind.value == "generation":
        return [""] * len(examples), "empty answer"
    return None, "constant"


def trivial(task, examples) -> tuple[float, str]:
    """The score of answering every example alike (trivial_predictions) and what that answer is."""
    preds, what = trivial_predictions(task, examples)
    return (0.0 if preds is None else task.score(examples, preds)["score"]), what


def beyond_trivial(task, examples, preds, resamples: int) -> dict:
    """The dev score minus the trivial baseline's on the same examples, with a bootstrap 95 % interval over
    the examples: the examples' own scores where the metric is a mean over them (accuracy, SQuAD F1), else
    each resample rescored (Pearson, Matthews correlation)."""
    import numpy as np

    from mptune.stats import paired_bootstrap
    from mptune.tasks.metrics import example_scores

    base, _ = trivial_predictions(task, examples)
    own = example_scores(task, examples, preds)
    alike = example_scores(task, examples, base) if base is not None else None
    if own is not None and (base is None or alike is not None):  # means over examples: no rescoring
        own_, alike_ = np.asarray(own), np.asarray(alike if alike is not None else [0.0] * len(own))
        diff = lambda _t, _s, idx: float(own_[idx].mean() - alike_[idx].mean())  # noqa: E731
    else:
        def score(p, idx):
            return 0.0 if p is None else task.score([examples[i] for i in idx], [p[i] for i in idx])["score"]
        diff = lambda _t, _s, idx: score(preds, idx) - score(base, idx)  # noqa: E731
    average, _ = paired_bootstrap({task.name: len(examples)}, 1, diff, resamples)
    return average.as_dict()


def teachers(run_dir: Path, resamples: int = 1000) -> list[dict]:
    """Each finished teacher of the run folder (also those left out of `sources` afterwards): its dev
    score against its dev set's trivial baseline, and the difference's bootstrap interval; a teacher beats
    the baseline where that interval lies above 0."""
    from mptune.recipes import common

    out = []
    for folder in sorted((run_dir / "teachers").glob("*/")):
        metrics = common.read_metrics(folder)
        for t, entry in metrics.get("tasks", {}).items():
            task, examples, preds = common.predictions(folder, t, "dev")
            score, what = trivial(task, examples)
            gap = beyond_trivial(task, examples, preds, resamples)
            out.append({"task": t, "dev": entry["dev"]["score"], "trivial": score, "trivial_is": what,
                        "n_dev": len(examples), "test": entry["test"]["score"], "beyond_trivial": gap,
                        "beats_trivial": gap["ci95_low"] > 0})
    return out


def target_baselines(by_method: dict, targets: list[str]) -> dict:
    """target -> the trivial baseline on its test examples in one setting (those of any finished run: the
    same for every method, seed and draw): {score, is, n_test}."""
    from mptune.plan import replicates
    from mptune.recipes import common

    out = {}
    for t in targets:
        run = next((r for by_task in by_method.values() for r in replicates(by_task.get(t, {})).values()), None)
        if run is not None:
            task, examples, _ = common.predictions(run.folder, t, "test")
            score, what = trivial(task, examples)
            out[t] = {"score": score, "is": what, "n_test": len(examples)}
    return out


def per_class(by_method: dict, targets: list[str]) -> bool | None:
    """Whether a few-shot setting's runs drew k per class (each run records its classes' counts) or k in
    all (tasks without classes, e.g. QA): True, False, or None where its targets are of both."""
    from mptune.plan import replicates

    drew = {"train_per_class" in r.entry for by_task in by_method.values() for t in targets
            for r in replicates(by_task.get(t, {})).values()}
    return None if len(drew) > 1 else drew != {False}


def spot_picks(runs: dict, targets: list[str]) -> dict:
    """target -> {seed[/draw]: the source task(s) SPoT (best source) started from, chosen on that target's
    dev set (its run folder's spot_choice.json)}."""
    from mptune.plan import replicates

    out = {}
    for t in targets:
        for k, r in replicates(runs.get("spot", {}).get(t, {})).items():
            f = Path(r.folder) / "spot_choice.json"
            if f.is_file():
                out.setdefault(t, {})[k] = "+".join(json.loads(f.read_text())["pick_tasks"])
    return out


RECORDS = "records.json"  # next to results.json: each run's test predictions as text-free numbers (pair.py)


def example_records(runs: dict, there: dict, targets: list[str]) -> dict:
    """records.json: every run of the report as `common.example_record` (no example text), so pair.py
    re-makes a paired interval from the commit without the run folders: {"uids": {task: [...]}, "runs":
    {setting: {label: {task: {seed[/draw]: record}}}}}, label the method, or "against/<method>" for the
    runs --against read; a run tested on other examples than its task's first keeps its own uids."""
    from mptune.plan import replicates

    uids, out = {}, {}
    for setting in dict.fromkeys([*runs, *there]):
        labelled = [*runs.get(setting, {}).items(), *((f"against/{m}", r) for m, r in there.get(setting, {}).items())]
        for label, by_task in labelled:
            for t in targets:
                for k, r in replicates(by_task.get(t, {})).items():
                    rec = _record(r.folder, t)
                    if uids.setdefault(t, rec["uids"]) == rec["uids"]:
                        rec = {key: v for key, v in rec.items() if key != "uids"}  # the task's, kept once
                    out.setdefault(setting, {}).setdefault(label, {}).setdefault(t, {})[k] = rec
    return {"about": "each run's test examples (uids) and the numbers that rescore any subset of them; "
                     "benchmarks/quality_cpu/v2/pair.py pairs two methods from files like this one",
            "uids": uids, "runs": out}


def environment_line(envs: list[dict]) -> str:
    def words(env: dict) -> str:  # the device first, then the libraries
        rest = [f"{k} {v}" for k, v in env.items() if k != "device"]
        return ", ".join([env.get("device", "device not recorded"), *rest])

    def n(k: int) -> str:
        return f"{k} stage{'' if k == 1 else 's'}"

    said = [f"{words(e['environment'])} ({n(e['stages'])})" for e in envs if e["environment"]]
    old = sum(e["stages"] for e in envs if not e["environment"])
    unknown = f"not recorded: {n(old)} (made before stage.json kept it)" if old else ""
    line = "Stages ran on: " + "; ".join(x for x in (" | ".join(said), unknown) if x) + "."
    return line + (" **More than one environment**: their runs are not exact replicas of each other."
                   if len(said) > 1 else "")


def curves(runs: dict, targets: list[str]) -> dict:
    """method -> task -> [[step, mean dev score over the runs that logged it], ...] (MPT*: none, its
    selection pools the targets)."""
    out = {}
    for method, by_task in runs.items():
        for t in targets:
            pts = collections.defaultdict(list)
            for draws in by_task.get(t, {}).values():
                for r in draws.values():
                    for h in r.dev_history or []:
                        if h.get("dev_score") is not None:
                            pts[h["step"]].append(h["dev_score"])
            if pts:
                out.setdefault(method, {})[t] = [[k, statistics.fmean(v)] for k, v in sorted(pts.items())]
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mptune.plan import METHODS

    settings = [s for s in res["settings"] if res["settings"][s]["curves"]]
    targets = res["targets"]
    if not settings:
        return
    # one legend beside the panels (inside one it hid the curves), each method in its table colour
    fig, axes = plt.subplots(len(settings), len(targets), figsize=(3.2 * len(targets) + 1.8, 2.6 * len(settings)),
                             squeeze=False, layout="constrained")
    for i, s in enumerate(settings):
        for j, t in enumerate(targets):
            ax = axes[i][j]
            for m, by_task in res["settings"][s]["curves"].items():
                if t in by_task:
                    xs, ys = zip(*by_task[t])
                    ax.plot(xs, ys, marker=".", label=METHODS[m].label, color=METHODS[m].colour)
            ax.set_title(f"{t}, {s}", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = {lb: h for ax in axes.flat for h, lb in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=7)
    fig.supxlabel("target step", fontsize=9)
    fig.supylabel("dev score (mean over runs)", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _paired_head(first: str, second: str) -> list[str]:
    """Header and rule of a table whose rows end in _paired()."""
    return [f"| {first} | {second} | average (w/o controls) | 95 % interval | verdict | runs | per task |",
            "|---|---|---|---|---|---|---|"]


def _paired(c: dict, marked: str = "") -> str:
    """The rest of a claims-table row: average, its interval, verdict (+ mark), runs, each task's interval."""
    iv = lambda v: f"{v['diff']:+.1f} [{v['ci95_low']:+.1f}, {v['ci95_high']:+.1f}]"  # noqa: E731
    a = c["average"]
    return (f"{a['diff']:+.1f} | [{a['ci95_low']:+.1f}, {a['ci95_high']:+.1f}] | {c['verdict']}{marked} | {c['runs']} | "
            + "; ".join(f"{t} {iv(v)}" for t, v in c["tasks"].items()) + " |")


def _selected(cells_: dict) -> str:
    """Each run's selected step and dev score, e.g. "PT rte 1: 4 (50.0), 2: 2 (62.5)"; "" for results
    written before cells recorded them."""
    def run(k: str, sel: dict) -> str:
        return f"{k}: {sel['step']} ({'—' if sel['dev'] is None else format(sel['dev'], '.1f')})"

    from mptune.plan import METHODS

    return "; ".join(f"{METHODS[m].label} {t} " + ", ".join(run(k, sel) for k, sel in c["selected"].items())
                     for m, by_task in cells_.items() for t, c in by_task.items() if c.get("selected"))


def markdown(res: dict) -> str:
    from mptune.plan import METHODS, setting_title

    f = lambda c: "—" if c["mean"] is None else f"{c['mean']:.1f} ± {c['std']:.1f} ({c['n_runs']})"  # noqa: E731
    lines = ["# Quality benchmark v2: results (issue #18)", "", f"Made by `{res['command']}` from `{res['run']}`; "
             f"controls (left out of the averages): {', '.join(res['controls']) or 'none'}.", ""]
    if res.get("environments"):
        lines += [environment_line(res["environments"]), ""]
    if res["teachers"]:
        lines += ["## Teachers (dev score vs the trivial baseline on the same dev examples)", "",
                  "| source | dev | trivial | baseline | n_dev | dev − trivial [95 % interval] | test | beats it |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {t['task']} | {t['dev']:.1f} | {t['trivial']:.1f} | {t['trivial_is']} | {t['n_dev']} | "
                  f"{g['diff']:+.1f} [{g['ci95_low']:+.1f}, {g['ci95_high']:+.1f}] | {t['test']:.1f} | "
                  f"{'yes' if t['beats_trivial'] else '**no**'} |"
                  for t in res["teachers"] for g in [t["beyond_trivial"]]]
        lines.append("")
    for s, r in res["settings"].items():
        lines += [f"## {setting_title(s, r.get('per_class', True))}", ""]
        if not r["claims"]:
            lines.append("Claims: none (no claim has both of its methods run here).")
        else:
            lines += ["Claims: paired difference of test scores, bootstrap 95 % interval over test examples and runs.",
                      "", *_paired_head("claim", "a − b")]
        for c in r["claims"]:
            lines.append(f"| {c['claim']} | {c['a']} − {c['b']} | "
                         + _paired(c, " (on the control only)" if c.get("controls_only") else ""))
        if r.get("against"):
            lines += ["", "Each method against its own runs in another folder (launched with the overrides named): "
                      "paired difference of test scores, bootstrap 95 % interval over test examples and runs.", "",
                      *_paired_head("method", "here − there")]
            for c in r["against"]:
                lines.append(f"| {METHODS[c['method']].label} | here − `{' '.join(c['there'])}` | " + _paired(c))
        lines += ["", "| method | " + " | ".join(f"{t} (n_test {res['n_test'].get(t, '?')})" for t in res["targets"])
                  + " |", "|---" * (len(res["targets"]) + 1) + "|"]
        for m, by_task in r["cells"].items():
            lines.append(f"| {METHODS[m].label} | " + " | ".join(f(by_task[t]) for t in res["targets"]) + " |")
        base = r.get("trivial", {})
        if base:
            lines.append("| *trivial baseline* | " + " | ".join(
                f"{base[t]['score']:.1f} ({base[t]['is']})" if t in base else "—" for t in res["targets"]) + " |")
        picked = _selected(r["cells"])
        if picked:  # below the table, not inside it
            lines += ["", "Selected step (dev score there) per run: " + picked + "."]
        if r.get("spot_picks"):
            lines += ["", "SPoT's source, chosen on each target's dev set: " + "; ".join(
                f"{t}: " + ", ".join(f"{src} (run {k})" for k, src in by_run.items())
                for t, by_run in r["spot_picks"].items()) + "."]
        lines += ["", "Cells: test score, mean ± std over runs (number of runs); the trivial baseline answers every "
                  "test example alike (the majority class of the test examples, or the empty answer).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--out", default=None, help="the run folder (default: the config's output_dir)")
    ap.add_argument("--results", default=str(HERE))
    ap.add_argument("--controls", default="cola")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--set", nargs="*", default=[], help="the overrides the run was launched with")
    ap.add_argument("--from", dest="method_from", nargs="+", action="append", default=[],
                    metavar=("METHOD OUT", "KEY=VALUE"),
                    help="take METHOD's runs from another run folder OUT, launched with these extra overrides "
                         "(e.g. PT at the length and lr its sweep chose): --from pt runs/x prompt.length=20")
    ap.add_argument("--against", dest="method_against", nargs="+", action="append", default=[],
                    metavar=("METHOD OUT", "KEY=VALUE"),
                    help="pair METHOD's runs here with its own runs in another run folder OUT, launched with these "
                         "extra overrides (e.g. fewer target steps): --against pt runs/x target_train.max_steps=100")
    args = ap.parse_args(argv)
    _record.cache_clear()  # read this report's runs afresh (a process may make several reports)

    from run import load_config, stages

    from mptune.plan import METHODS, Layout, replicates, task_runs
    from mptune.recipes.common import environments

    cfg = load_config(args.config, out=args.out, sets=args.set, dry_run=True)
    planned = stages(cfg, list(cfg.methods))
    runs = task_runs(planned)
    upstream = [s.folder for s in planned if not s.method]  # teachers, source stages

    def runs_of(method: str, out: str, sets: list[str]) -> dict:  # setting -> method -> task -> seed -> draw
        ocfg = load_config(args.config, out=out, sets=[*args.set, *sets, f"methods=[{method}]"], dry_run=True)
        oplanned = stages(ocfg, [method])
        upstream.extend(s.folder for s in oplanned if not s.method)
        return task_runs(oplanned)

    for method, out, *sets in args.method_from:  # that method's cells from its own run folder
        other = runs_of(method, out, sets)
        for setting in runs.keys() | other.keys():
            runs.setdefault(setting, {}).pop(method, None)
            if method in other.get(setting, {}):
                runs[setting][method] = other[setting][method]
    # the methods table's order, wherever a method's runs came from
    runs = {s: {m: by[m] for m in METHODS if m in by} for s, by in runs.items()}
    targets = Layout(cfg, check_data=False).target_names()
    controls = [c for c in args.controls.split(",") if c in targets]
    main_targets = [t for t in targets if t not in controls]
    res = {"command": "python " + " ".join([str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
           "run": cfg.output_dir, "method_from": {m: [o, *s] for m, o, *s in args.method_from}, "targets": targets,
           "controls": controls, "teachers": teachers(Path(cfg.output_dir), args.resamples),
           "n_test": {}, "settings": {}}
    there = {}  # setting -> method -> its runs in the folder --against names
    for method, out, *sets in args.method_against:
        for setting, by_method in runs_of(method, out, sets).items():
            if method in by_method:
                there.setdefault(setting, {})[method] = by_method[method]
    if args.method_against:
        res["method_against"] = {m: [o, *s] for m, o, *s in args.method_against}
    for s, by_method in runs.items():
        c = cells(by_method, targets)
        for by_task in c.values():
            for t, cell in by_task.items():
                if cell["n_test"]:
                    res["n_test"][t] = cell["n_test"]
        res["settings"][s] = {"cells": c, "claims": claims(by_method, targets, main_targets, args.resamples),
                              "curves": curves(by_method, targets), "spot_picks": spot_picks(by_method, targets),
                              "trivial": target_baselines(by_method, targets),
                              "per_class": per_class(by_method, targets)}
        if s in there:
            res["settings"][s]["against"] = against(by_method, there[s], res["method_against"], targets,
                                                    main_targets, args.resamples)
    res["environments"] = environments([*upstream, *(r.folder for table in (runs, there) for by_method in table.values()
                                                      for by_task in by_method.values() for by_seed in by_task.values()
                                                      for r in replicates(by_seed).values())])
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(markdown(res) + "\n")
    (out / RECORDS).write_text(json.dumps({"command": res["command"], **example_records(runs, there, targets)},
                                          separators=(",", ":")) + "\n")
    plot(res, out / "dev_curves.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
