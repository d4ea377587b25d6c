"""Quality benchmark on CPU: MPT vs PT vs SPoT-style transfer vs the MPT ablations.

Not a test: it trains on the real SmolLM2-135M-Instruct and real data for about
an hour or more on 2 CPU cores. It runs the `mptune run` pipeline of
``pipeline.yaml`` split into jobs on several worker processes (each a fresh
process with its own torch thread count):

1. the teachers (one job per source task),
2. source training, one job per variant (mpt, no_distill, no_decomp),
3. one job per (setting, method, seed): ``pipeline.run`` with that single
   combination, in the same output folder, so the finished teacher / source
   folders are reused (skipped) and target folders never collide.

Phases 1-2 build the teacher and source-training stage configs exactly as
``pipeline.run`` does (so phase 3 finds those folders complete and skips them).
Finally the per-seed test scores are read back from the stage
folders into ``results.json`` / ``results.md`` (mean ± std over seeds).

    python benchmarks/quality_cpu/run.py --workers 2 --threads 1
    python benchmarks/quality_cpu/run.py --dry-run        # list the jobs

Data: ``--data-dir`` (default ``$MPTUNE_DATA_DIR``, else ``../shared/data``)
must hold the GLUE files and the VADER / BIG-bench files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# -- jobs (run in worker processes) --------------------------------------------------------

def _job(kind: str, cfg_dict: dict, extra: dict, threads: int) -> dict:
    """One job in a fresh process: kind = teacher | distill | targets."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # several workers: one line per finished job instead
    from mptune.config import parse
    from mptune.recipes import distill, pipeline, prompt_tune

    import contextlib
    import io

    cfg = parse(pipeline.PipelineConfig, cfg_dict, source="job")
    out = Path(cfg.output_dir)
    t0, c0 = time.time(), time.process_time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if kind == "teacher":
            task = extra["task"]
            pipeline._stage(out / "teachers" / task, "prompt-tune", prompt_tune.run, prompt_tune.PromptTuneConfig(
                model=cfg.model, task=task, output_dir=str(out / "teachers" / task), prompt=cfg.prompt,
                data=cfg.data, train=cfg.teacher_train))
        elif kind == "distill":
            variant = extra["variant"]
            folder = out / "source" / variant
            loss = dataclasses.replace(cfg.distill, weight=0.0) if variant == "no_distill" else cfg.distill
            pipeline._stage(folder, "distill", distill.run, distill.DistillConfig(
                model=cfg.model, tasks=cfg.sources, output_dir=str(folder), teachers_dir=str(out / "teachers"),
                rank=cfg.rank, decompose=variant != "no_decomp", prompt=cfg.prompt, distill=loss,
                sampling=cfg.sampling, data=cfg.data, train=cfg.source_train))
        else:
            pipeline.run(cfg)
    return {"kind": kind, **extra, "wall_s": round(time.time() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


# -- planning -----------------------------------------------------------------------------

def plan(base: dict, fewshot_methods: list[str], order: str = "methods") -> list[tuple[str, list[tuple[str, dict, dict]]]]:
    """Phases of (kind, config dict, extra) jobs."""
    from mptune.recipes.pipeline import SOURCE_VARIANT

    methods = base["methods"]
    teachers = [("teacher", base, {"task": t}) for t in base["sources"]] if any(m != "pt" for m in methods) else []
    variants = sorted({SOURCE_VARIANT[m] for m in methods if m in SOURCE_VARIANT})
    distills = [("distill", base, {"variant": v}) for v in variants]
    targets = []
    settings = (["full"] if base.get("full_data", True) else []) + [f"k={k}" for k in base.get("few_shot_k", [])]
    for setting in settings:  # full-data jobs first: the longest
        ms = methods if setting == "full" else [m for m in methods if m in fewshot_methods]
        for method in ms:
            for seed in base["seeds"]:
                sub = {**base, "methods": [method], "seeds": [seed],
                       "full_data": setting == "full", "few_shot_k": [] if setting == "full" else [int(setting[2:])]}
                targets.append(("targets", sub, {"setting": setting, "method": method, "seed": seed}))
    # PT and MPT first (the main comparison), then SPoT, then the ablations; seeds outermost after that,
    # so a run cut short still has complete, comparable cells
    group = {"pt": 0, "mpt": 0, "spot": 1, "mpt_no_distill": 2, "mpt_no_decomp": 2, "mpt_multi": 3}
    if order == "methods":
        targets.sort(key=lambda j: (group.get(j[2]["method"], 9), j[2]["seed"], j[2]["setting"] != "full",
                                    j[2]["setting"], j[2]["method"]))
    else:  # "settings": full data for every method first (seed by seed), then each few-shot k
        targets.sort(key=lambda j: (j[2]["setting"] != "full", j[2]["setting"], j[2]["seed"],
                                    group.get(j[2]["method"], 9), j[2]["method"]))
    return [("teachers", teachers), ("source training", distills), ("targets", targets)]


# -- results --------------------------------------------------------------------------------

def _mean_std(vals: list[float]) -> dict:
    return {"mean": statistics.fmean(vals) if vals else None, "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}


def collect(base: dict, fewshot_methods: list[str], controls: list[str] = ()) -> dict:
    """Test scores per (setting, method, task, seed); averages over all targets and over the targets
    that are not controls (tasks the sources are not expected to help, e.g. CoLA for sentiment sources)."""
    from mptune.recipes.quickstart import _target_metrics
    from mptune.tasks import get_task

    from compare import per_seed_average  # this folder, the script's sys.path[0]

    out = Path(base["output_dir"])
    settings = {}
    for setting in (["full"] if base.get("full_data", True) else []) + [f"k={k}" for k in base.get("few_shot_k", [])]:
        ms = base["methods"] if setting == "full" else [m for m in base["methods"] if m in fewshot_methods]
        sres = settings[setting] = {}
        for method in ms:
            tasks = {}
            main_targets = [t for t in base["targets"] if t not in controls]
            for task in base["targets"]:
                seeds = {}
                for seed in base["seeds"]:
                    folder = out / "targets" / setting.replace("=", "") / method / f"seed-{seed}" / task
                    got = _target_metrics(folder).get(task)
                    if got:
                        seeds[str(seed)] = {"test": got["test"]["score"], "dev": got["dev"].get("score"),
                                            "best_step": got["best_step"], "metrics": got["test"]}
                tasks[task] = {"metric": "/".join(get_task(task).score_metrics or get_task(task).metrics),
                               **_mean_std([s["test"] for s in seeds.values()]), "seeds": seeds}
            per_seed_avg = per_seed_average(tasks, base["targets"])
            per_seed_main = per_seed_average(tasks, main_targets, require=base["targets"])
            sres[method] = {"tasks": tasks, "average": {**_mean_std(list(per_seed_avg.values())),
                                                        "per_seed": per_seed_avg}}
            if controls:
                sres[method]["average_without_controls"] = {**_mean_std(list(per_seed_main.values())),
                                                            "per_seed": per_seed_main}
    sources = {}
    for t in base["sources"]:
        m = _read(out / "teachers" / t / "metrics.json")
        if m:
            sources[f"teacher {t}"] = m.get("test", {}).get("score")
    for v in ("mpt", "no_distill", "no_decomp"):
        m = _read(out / "source" / v / "metrics.json")
        for t, r in (m.get("tasks") or {}).items():
            sources[f"source/{v} {t}"] = r.get("test", {}).get("score")
    return {"settings": settings, "source_stages_test": sources}


def _read(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


NAMES = {"pt": "PT", "spot": "SPoT-style (teachers' avg)", "mpt": "MPT", "mpt_no_distill": "MPT w/o distillation",
         "mpt_no_decomp": "MPT w/o decomposition", "mpt_multi": "MPT*"}


def markdown(res: dict) -> str:
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
        what = "full training data" if setting == "full" else f"few-shot, {setting} per class"
        lines += [f"## {what} (test score, mean ± std over seeds)", "",
                  "| method | " + " | ".join(f"{t} ({methods[next(iter(methods))]['tasks'][t]['metric']})"
                                            for t in base["targets"]) + " | average |"
                  + "".join(f" average w/o {c} |" for c in [", ".join(controls)] if controls),
                  "|---" * (len(base["targets"]) + 2 + bool(controls)) + "|"]
        for method, cell in methods.items():
            f = lambda v: "—" if v["mean"] is None else f"{v['mean']:.1f} ± {v['std']:.1f}"  # noqa: E731
            lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(f(cell["tasks"][t]) for t in base["targets"])
                         + f" | {f(cell['average'])} |"
                         + (f" {f(cell['average_without_controls'])} |" if controls else ""))
        lines.append("")
    if res["results"].get("source_stages_test"):
        lines += ["Source stages (test score on the source tasks): " + "; ".join(
            f"{k} {v:.1f}" for k, v in res["results"]["source_stages_test"].items() if v is not None), ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------

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
    ap.add_argument("--results", default=str(HERE), help="folder for results.json / results.md")
    ap.add_argument("--order", choices=["methods", "settings"], default="methods",
                    help="target job order: PT and MPT in every setting first, or every method on full data "
                         "first (seed by seed), then the few-shot settings; a run cut short keeps whole cells")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--reverse", action="store_true",
                    help="run the target jobs last-first (a second runner on the same folder meets the first "
                         "half way; finished stages are skipped)")
    ap.add_argument("--stop-after", choices=["teachers", "source training"], default=None,
                    help="stop after this phase (e.g. to inspect the starting prompts with init_scores.py)")
    ap.add_argument("--collect-only", action="store_true",
                    help="only (re)write results.json / results.md from the stage folders (partial while running)")
    args = ap.parse_args(argv)

    from mptune import assets
    from mptune.config import load_yaml, parse, to_dict
    from mptune.recipes.pipeline import PipelineConfig

    base = load_yaml(args.config)
    base["model"] = {**base.get("model", {}), "name": args.model or (
        "smollm2" if args.dry_run else str(assets.smollm2_model_dir()))}
    base["data"] = {**base.get("data", {}), "data_dir": str(Path(args.data_dir).resolve())}
    if args.out:
        base["output_dir"] = args.out
    base = to_dict(parse(PipelineConfig, base, args.set, source=args.config))  # validated, defaults filled
    if args.fewshot_methods:
        fewshot = args.fewshot_methods.split(",")
    elif args.collect_only and _read(Path(args.results) / "results.json").get("fewshot_methods"):
        fewshot = _read(Path(args.results) / "results.json")["fewshot_methods"]
    else:
        fewshot = list(base["methods"])
    phases = plan(base, fewshot, args.order)
    for name, jobs in phases:
        print(f"{name}: {len(jobs)} job(s)")
        for kind, _, extra in jobs:
            print(f"   {kind} {extra}")
    if args.dry_run:
        return 0
    if args.stop_after:
        phases = phases[:[n for n, _ in phases].index(args.stop_after) + 1]
    if args.reverse:
        phases = [(n, list(reversed(j)) if n == "targets" else j) for n, j in phases]
    if args.collect_only:
        write_results(args, argv, base, fewshot, None, [])
        return 0

    t0 = time.time()
    Path(base["output_dir"]).mkdir(parents=True, exist_ok=True)
    done = []
    ctx = get_context("spawn")
    for name, jobs in phases:
        if not jobs:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {len(jobs)} job(s) on {args.workers} worker(s)", flush=True)
        with ProcessPoolExecutor(args.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
            futs = {pool.submit(_job, kind, cfg, extra, args.threads): extra for kind, cfg, extra in jobs}
            for f in as_completed(futs):
                r = f.result()
                done.append(r)
                print(f"[{time.strftime('%H:%M:%S')}] done {r} ({len(done)} jobs, {(time.time() - t0) / 60:.1f} min)",
                      flush=True)
    if args.stop_after:
        return 0
    print(write_results(args, argv, base, fewshot, time.time() - t0, done))
    return 0


def _timing_line(t: dict) -> str:
    """How long the command behind results.* took, and how many of its jobs it ran rather than reused."""
    if not t.get("wall_s"):
        return "Partial results, collected while the run was going on."
    jobs = t.get("jobs") or []
    ran = [j for j in jobs if j.get("wall_s", 0) > 1]  # a finished stage is skipped in well under a second
    return (f"Wall time of that command {t['wall_s'] / 60:.0f} min with {t['workers']} worker process(es) x "
            f"{t['threads']} torch thread(s) on {t['cpu_count']} CPU cores: it ran {len(ran)} of its {len(jobs)} "
            f"jobs ({sum(j['cpu_s'] for j in ran) / 60:.0f} CPU min) and reused the other stages, finished by "
            f"earlier launches of the same config; load average at the end {t['loadavg_end']}.")


def write_results(args, argv, base: dict, fewshot: list[str], wall_s, jobs: list[dict]) -> str:
    out = Path(args.results)
    old = _read(out / "results.json")
    controls = [c for c in args.controls.split(",") if c in base["targets"]]
    if wall_s is None:  # --collect-only: keep the timing of the run that made the folders, if any
        timing = old.get("timing") or {"wall_s": None, "workers": None, "threads": None, "partial": True}
        command = old.get("command") or "python benchmarks/quality_cpu/run.py"
    else:
        timing = {"wall_s": round(wall_s, 1), "workers": args.workers, "threads": args.threads, "jobs": jobs,
                  "cpu_count": os.cpu_count(), "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                  "machine": platform.platform()}
        command = "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])])
    res = {"command": command, "fewshot_methods": fewshot, "controls": controls, "timing": timing,
           "results": collect(base, fewshot, controls),
           "config": {**base, "model": {**base["model"], "name": "SmolLM2-135M-Instruct (asset cache)"},
                      "data": {**base["data"], "data_dir": "../shared/data"}}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
