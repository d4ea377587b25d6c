"""Quality benchmark on CPU: MPT vs PT vs SPoT-style transfer vs the MPT ablations.

Not a test: it trains on the real SmolLM2-135M-Instruct and real data for about
an hour or more on 2 CPU cores. It runs the stages of the `mptune run` pipeline
of ``pipeline.yaml`` (``mptune.plan.plan``: teachers, one source-training stage
per variant, one stage per target run) with the plan runner on several worker
processes (``mptune.runner.run_plan``: each stage starts when the stages it
needs are done; finished stages are skipped). ``--fewshot-methods`` limits the
few-shot settings, ``--order`` the order of the target runs. Finally the
per-seed test scores are read back from the stage folders into
``results.json`` / ``results.md`` (mean ± std over seeds), in the output folder unless
``--results`` names another (the committed v1 results: ``--results benchmarks/quality_cpu``).

    python benchmarks/quality_cpu/run.py --workers 2 --threads 1 --results benchmarks/quality_cpu
    python benchmarks/quality_cpu/run.py --dry-run        # list the jobs

Data: ``--data-dir`` (default ``$MPTUNE_DATA_DIR``, else ``../shared/data``)
must hold the GLUE files and the VADER / BIG-bench files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# -- planning -----------------------------------------------------------------------------

def phase(stage) -> str:
    return "targets" if stage.method else ("source training" if stage.kind == "distill" else "teachers")


def stages(cfg, fewshot_methods: list[str], order: str = "methods") -> list:
    """The pipeline's plan, few-shot settings limited to `fewshot_methods`, target runs in `order`."""
    from mptune.plan import METHODS, ROLES, plan

    planned = [s for s in plan(cfg) if s.method is None or s.setting == "full" or s.method in fewshot_methods]
    targets = [s for s in planned if s.method]
    # PT and MPT first (the main comparison), then SPoT, then the ablations; seeds outermost after that,
    # so a run cut short still has complete, comparable cells
    role = lambda s: ROLES.index(METHODS[s.method].role)  # noqa: E731
    if order == "methods":
        targets.sort(key=lambda s: (role(s), s.seed, s.setting != "full", s.setting, s.method))
    else:  # "settings": full data for every method first (seed by seed), then each few-shot k
        targets.sort(key=lambda s: (s.setting != "full", s.setting, s.seed, role(s), s.method))
    return [s for s in planned if not s.method] + targets


# -- results --------------------------------------------------------------------------------

def _mean_std(vals: list[float]) -> dict:
    return {"mean": statistics.fmean(vals) if vals else None, "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}


def dev_at_best(r) -> float | None:
    """The dev score the selection saw at a run's best step (None where several targets shared the
    selection, MPT*, or the run logged no dev score there)."""
    return next((h["dev_score"] for h in r.dev_history or () if h["step"] == r.best_step), None)


def _run_record(r) -> dict:
    """One run's numbers; without a final dev pass (target_train.final_dev: false) also the dev score at
    its best step, the one the selection saw (`dev_selection`)."""
    rec = {"test": r.entry["test"]["score"], "dev": r.entry["dev"].get("score"), "best_step": r.best_step,
           "metrics": r.entry["test"]}
    if rec["dev"] is None and (at_best := dev_at_best(r)) is not None:
        rec["dev_selection"] = at_best
    return rec


def _seed_record(draws: dict) -> dict:
    """A seed's numbers: its one run's, or (several few-shot draws) the means over its draws and each draw's."""
    recs = {str(d): _run_record(r) for d, r in draws.items()}
    if len(recs) == 1:
        return next(iter(recs.values()))
    dev = [x["dev"] for x in recs.values() if x["dev"] is not None]
    return {"test": statistics.fmean(x["test"] for x in recs.values()), "dev": statistics.fmean(dev) if dev else None,
            "draws": recs}


def collect(cfg, planned: list, fewshot_methods: list[str], controls: list[str] = ()) -> dict:
    """Test scores per (setting, method, task, seed); averages over all targets and over the targets
    that are not controls (tasks the sources are not expected to help, e.g. CoLA for sentiment sources)."""
    from mptune.plan import Layout, task_metric, task_runs
    from mptune.plan import settings as settings_of
    from mptune.recipes import common

    from compare import per_seed_average  # this folder, the script's sys.path[0]

    runs = task_runs(planned)
    targets = Layout(cfg, check_data=False).target_names()
    settings = {}
    for setting in settings_of(cfg):
        ms = cfg.methods if setting == "full" else [m for m in cfg.methods if m in fewshot_methods]
        sres = settings[setting] = {}
        for method in ms:
            tasks = {}
            main_targets = [t for t in targets if t not in controls]
            for task in targets:
                by_seed = runs.get(setting, {}).get(method, {}).get(task, {})
                seeds = {str(seed): _seed_record(draws)
                         for seed, draws in sorted(by_seed.items(), key=lambda x: cfg.seeds.index(x[0]))}
                metric = task_metric(next(iter(next(iter(by_seed.values())).values()))) if by_seed else None
                tasks[task] = {"metric": metric, **_mean_std([s["test"] for s in seeds.values()]), "seeds": seeds}
            per_seed_avg = per_seed_average(tasks, targets)
            per_seed_main = per_seed_average(tasks, main_targets, require=targets)
            sres[method] = {"tasks": tasks, "average": {**_mean_std(list(per_seed_avg.values())),
                                                        "per_seed": per_seed_avg}}
            if controls:
                sres[method]["average_without_controls"] = {**_mean_std(list(per_seed_main.values())),
                                                            "per_seed": per_seed_main}
    sources = {}  # test score of each source stage on its own task(s)
    for s in planned:
        if s.method is None:
            for t, r in common.read_metrics(s.folder).get("tasks", {}).items():
                key = s.name if phase(s) == "teachers" else f"source/{s.folder.name} {t}"
                sources[key] = r.get("test", {}).get("score")
    return {"settings": settings, "source_stages_test": sources}


def _read(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def markdown(res: dict) -> str:
    from mptune.plan import METHODS, setting_title

    base = res["config"]
    lines = ["# Quality benchmark on CPU: results", "",
             f"Command: `{res['command']}`", "",
             f"Backbone SmolLM2-135M-Instruct (frozen, fp32); sources {', '.join(base['sources'])}; prompt length "
             f"{base['prompt']['length']}, rank {base['rank']}; batch {base['target_train']['batch_size']}; steps: "
             f"teachers {base['teacher_train']['max_steps']}, source training {base['source_train']['max_steps']}, "
             f"every target run {base['target_train']['max_steps']}; lr {base['target_train']['lr']} (P* and u, v: "
             f"{base['adapt'].get('lr_shared') or base['target_train']['lr']} / "
             f"{base['adapt'].get('lr_task') or base['target_train']['lr']}); dev and test sets: a seeded subset of "
             f"{base['data']['eval_limit']} examples of each paper split (the same for every method and seed); "
             f"seeds {base['seeds']}.", "",
             _timing_line(res["timing"]), ""]
    controls = res.get("controls") or []
    for setting, methods in res["results"]["settings"].items():
        what = setting_title(setting)
        draws = base.get("few_shot_draws", 1)  # a config without it ran before draws: one per seed
        over = "seeds" if setting == "full" or draws == 1 else f"seeds, each the mean of {draws} draws"
        lines += [f"## {what} (test score, mean ± std over {over})", "",
                  "| method | " + " | ".join(f"{t} ({methods[next(iter(methods))]['tasks'][t]['metric']})"
                                            for t in base["targets"]) + " | average |"
                  + "".join(f" average w/o {c} |" for c in [", ".join(controls)] if controls),
                  "|---" * (len(base["targets"]) + 2 + bool(controls)) + "|"]
        for method, cell in methods.items():
            f = lambda v: "—" if v["mean"] is None else f"{v['mean']:.1f} ± {v['std']:.1f}"  # noqa: E731
            lines.append(f"| {METHODS[method].label} | " + " | ".join(f(cell["tasks"][t]) for t in base["targets"])
                         + f" | {f(cell['average'])} |"
                         + (f" {f(cell['average_without_controls'])} |" if controls else ""))
        lines.append("")
    if res["results"].get("source_stages_test"):
        lines += ["Source stages (test score on the source tasks): " + "; ".join(
            f"{k} {v:.1f}" for k, v in res["results"]["source_stages_test"].items() if v is not None), ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------

def load_config(path: str, data_dir: str | None = None, model: str | None = None, out: str | None = None,
                sets: list[str] = (), dry_run: bool = False):
    """The pipeline config of a benchmark run: the YAML, the model folder (SmolLM2 from the asset cache
    unless given; a placeholder name for a dry run), the data dir (else the YAML's, $MPTUNE_DATA_DIR or
    ../shared/data), the output folder, key=value overrides."""
    from mptune import assets
    from mptune.config import load_yaml, parse
    from mptune.recipes.pipeline import PipelineConfig

    base = load_yaml(path)
    data_dir = (data_dir or base.get("data", {}).get("data_dir") or os.environ.get("MPTUNE_DATA_DIR")
                or str(REPO.parent / "shared" / "data"))
    base["model"] = {**base.get("model", {}), "name": model or (
        "smollm2" if dry_run else str(assets.smollm2_model_dir()))}
    base["data"] = {**base.get("data", {}), "data_dir": str(Path(data_dir).resolve())}
    if out:
        base["output_dir"] = out
    return parse(PipelineConfig, base, list(sets), source=path)  # validated, defaults filled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--out", default=None, help="output folder (default: the config's output_dir)")
    ap.add_argument("--data-dir", default=os.environ.get("MPTUNE_DATA_DIR") or str(REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct from the cache)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--fewshot-methods", default=None,
                    help="methods run in the few-shot settings (the full-data setting runs all); default: every "
                         "method of the config, or with --collect-only those of the committed results.json")
    ap.add_argument("--controls", default="cola",
                    help="targets the sources are not expected to help; results also average the others")
    ap.add_argument("--set", nargs="*", default=[], help="pipeline overrides key=value")
    ap.add_argument("--results", default=None,
                    help="folder for results.json / results.md (default: the output folder; the committed v1 "
                         "results: --results benchmarks/quality_cpu); one that holds the results of another "
                         "output folder is refused before any stage runs")
    ap.add_argument("--order", choices=["methods", "settings"], default="methods",
                    help="target job order: PT and MPT in every setting first, or every method on full data "
                         "first (seed by seed), then the few-shot settings; a run cut short keeps whole cells")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--reverse", action="store_true",
                    help="run the target jobs last-first (a second runner on the same folder meets the first "
                         "half way; finished stages are skipped, a stage the other is running is left to it)")
    ap.add_argument("--stop-after", choices=["teachers", "source training"], default=None,
                    help="stop after this phase (e.g. to inspect the starting prompts with init_scores.py)")
    ap.add_argument("--collect-only", action="store_true",
                    help="only (re)write results.json / results.md from the stage folders (partial while running)")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, args.data_dir, args.model, args.out, args.set, args.dry_run)
    args.results = args.results or cfg.output_dir  # an output folder describes itself
    if args.fewshot_methods:
        fewshot = args.fewshot_methods.split(",")
    elif args.collect_only and _read(Path(args.results) / "results.json").get("fewshot_methods"):
        fewshot = _read(Path(args.results) / "results.json")["fewshot_methods"]
    else:
        fewshot = list(cfg.methods)
    planned = stages(cfg, fewshot, args.order)
    for name in ("teachers", "source training", "targets"):
        mine = [s for s in planned if phase(s) == name]
        print(f"{name}: {len(mine)} stage(s)")
        for s in mine:
            print(f"   {s.name}" + (f"  (after {', '.join(s.needs)})" if s.needs and name != "targets" else ""))
    if args.dry_run:
        return 0
    _check_results_folder(Path(args.results), cfg.output_dir)  # before hours of runs, not after them
    if args.collect_only:
        write_results(args, argv, cfg, planned, fewshot, None, [])
        return 0
    run = planned
    if args.stop_after:
        keep = ("teachers",) if args.stop_after == "teachers" else ("teachers", "source training")
        run = [s for s in planned if phase(s) in keep]
    if args.reverse:
        run = [s for s in run if not s.method] + [s for s in run if s.method][::-1]

    from mptune.runner import run_plan

    t0 = time.time()
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    records = run_plan(run, args.workers, args.threads)
    if args.stop_after:
        return 0
    print(write_results(args, argv, cfg, planned, fewshot, time.time() - t0, records))
    return 0


def _timing_line(t: dict) -> str:
    """How long the command behind results.* took, and how many of its jobs it ran rather than reused."""
    if not t.get("wall_s"):
        return "Partial results, collected while the run was going on."
    jobs = t.get("jobs") or []  # one record per stage (mptune.runner); skipped ones have no wall time
    ran = [j for j in jobs if (j.get("wall_s") or 0) > 1]  # older launches: a skipped job took under a second
    return (f"Wall time of that command {t['wall_s'] / 60:.0f} min with {t['workers']} worker process(es) x "
            f"{t['threads']} torch thread(s) on {t['cpu_count']} CPU cores: it ran {len(ran)} of its {len(jobs)} "
            f"jobs ({sum(j['cpu_s'] for j in ran) / 60:.0f} CPU min) and reused the other stages, finished by "
            f"earlier launches of the same config; load average at the end {t['loadavg_end']}.")


EXECUTION = ("workers", "threads")  # how the stages ran, not what they computed: recorded under "timing"


def _same_run(old, new, default) -> bool:
    """`new` describes the run `old` does: equal on every key of `old`; the keys added since (options
    newer than `old`) hold their defaults, i.e. they were not used. Entries of a mapping the default
    config leaves empty (method_settings.<method>) have no default: there a newer key is unused when None
    (unset, MethodSettings' convention)."""
    if isinstance(old, dict) and isinstance(new, dict):
        default = default if isinstance(default, dict) else None
        return (all(k in new and _same_run(v, new[k], (default or {}).get(k)) for k, v in old.items())
                and all(new[k] is None if default is None else k in default and new[k] == default[k]
                        for k in new.keys() - old.keys()))
    return old == new


def _check_results_folder(out: Path, output_dir) -> None:
    """results.* in `out` describe the stages of one output folder: refuse to overwrite those of another
    (v2 launches once wrote over the committed v1 results, then the default --results)."""
    made_from = (_read(out / "results.json").get("config") or {}).get("output_dir")
    if made_from is not None and Path(made_from) != Path(output_dir):
        raise SystemExit(f"{out / 'results.json'} holds the results of the stages in {made_from}, not of "
                         f"{output_dir}: pass --results FOLDER (a new folder, or the one that holds {output_dir}'s)")


def write_results(args, argv, cfg, planned: list, fewshot: list[str], wall_s, jobs: list[dict]) -> str:
    from mptune.config import to_dict

    out = Path(args.results)
    old = _read(out / "results.json")
    controls = [c for c in args.controls.split(",") if c in cfg.targets]
    base = {k: v for k, v in to_dict(cfg).items() if k not in EXECUTION}
    config = {**base, "model": {**base["model"], "name": "SmolLM2-135M-Instruct (asset cache)"},
              "data": {**base["data"], "data_dir": "../shared/data"}}
    if wall_s is None:  # --collect-only: keep the timing of the run that made the folders, if any
        timing = old.get("timing") or {"wall_s": None, "workers": None, "threads": None, "partial": True}
        command = old.get("command") or "python benchmarks/quality_cpu/run.py"
        required = {k: base[k] for k in ("model", "sources", "targets", "output_dir")}
        default = {**to_dict(type(cfg)(**{**required, "model": cfg.model})), **required}
        if _same_run(old.get("config"), config, default):  # and its description, written before newer options
            config = old["config"]
    else:
        timing = {"wall_s": round(wall_s, 1), "workers": args.workers, "threads": args.threads, "jobs": jobs,
                  "cpu_count": os.cpu_count(), "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                  "machine": platform.platform()}
        command = "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])])
    res = {"command": command, "fewshot_methods": fewshot, "controls": controls, "timing": timing,
           "results": collect(cfg, planned, fewshot, controls), "config": config}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
