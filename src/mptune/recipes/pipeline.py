"""Recipe: the whole MPT pipeline and its baselines in one harness.

    teachers (prompt-tune per source task)
      -> source training (distill: P* + task matrices; ablations)
      -> target adaptation (per target task, seed and few-shot k)
      -> evaluation -> Table-1-style summary (markdown + JSON)

The stages and their folders come from :func:`mptune.plan.plan`, the methods
(all with the same data, steps and evaluation) from its table
:data:`mptune.plan.METHODS`. :func:`mptune.runner.run_plan` runs them: a rerun skips
stages whose folder is complete (stage.json) and resumes unfinished ones from
their checkpoints; ``workers=2 threads=1`` runs two stages at a time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ConfigError, DataConfig, EvalConfig, EvalMode, ModelConfig, PromptConfig, TrainConfig, _check
from ..plan import METHODS, Layout, MethodName, MethodSettings, Stage, per_seed, task_runs
from ..runner import run_plan
from ..utils import atomic_write_json, atomic_write_text
from . import adapt, common, distill
from .multitask import SamplingConfig


@dataclass
class AdaptOptions:
    """Target adaptation settings for the MPT methods."""

    lr_shared: Optional[float] = None
    """Learning rate of P* (default: target_train.lr)."""
    lr_task: Optional[float] = None
    """Learning rate of u, v (default: target_train.lr)."""
    init: str = "shared"
    """The target prompt at step 0: shared (P*), shared_times_mean_task (P* ∘ mean_k u_k v_k), peft_average
    (P* ∘ (mean u)(mean v)) or source:<task> (P* ∘ u_s v_s of that source task); see adapt.INITS."""
    freeze_shared: bool = False
    """Train only u, v on the target."""

    def __post_init__(self) -> None:
        adapt.init_source(self.init, "adapt.init")  # the source task itself is checked against `sources` by Layout


@dataclass
class PipelineConfig:
    """Run MPT end to end (teachers -> distillation -> target adaptation) against baselines; print Table 1."""

    model: ModelConfig
    """The frozen backbone."""
    sources: list[str]
    """Source tasks (teachers + distillation): registry names or task files (.yaml/.yml/.json)."""
    targets: list[str]
    """Target tasks: registry names or task files."""
    output_dir: str
    """Root folder of all stage folders and the summary."""
    methods: list[MethodName] = field(default_factory=lambda: ["pt", "spot", "mpt"])
    """Methods to compare (the rows of mptune.plan.METHODS)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Seeds for target training (mean ± std over them)."""
    few_shot_k: list[int] = field(default_factory=list)
    """Also run few-shot targets with k examples per class for each k (empty: full data only)."""
    few_shot_draws: int = 3
    """Few-shot: draws of k examples per seed (draw i sampled with a seed derived from (seed, i), the training
    seed unchanged); results average the draws, then the seeds. 1 with data.few_shot_dev=full: as before draws."""
    full_data: bool = True
    """Run full-data targets (set false for a few-shot-only run)."""
    method_settings: dict[str, MethodSettings] = field(default_factory=dict)
    """A method's own target settings, e.g. {pt: {prompt_length: 20, lr: 0.3}, mpt: {lr_shared: 0.003}}: each
    method at the setting chosen for it on dev (unset: the pipeline's)."""
    spot_source: Optional[str] = None
    """SPoT (spot): start from this source task's teacher (default: the teacher best on the target's dev set)."""
    rank: int = 1
    """Rank of the task matrices."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt length and vocabulary init (teachers, pt)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source, tokenisation and few_shot_dev (few_shot_k and few_shot_draw are set per run: use few_shot_k
    and few_shot_draws above)."""
    teacher_train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation of the teachers."""
    source_train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation of source training (distillation)."""
    target_train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation of every target run (all methods share it)."""
    distill: distill.DistillLossConfig = field(default_factory=distill.DistillLossConfig)
    """Distillation loss."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Task sampling (source training and MPT*)."""
    adapt: AdaptOptions = field(default_factory=AdaptOptions)
    """Target adaptation options."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How label tasks are evaluated in every stage (rank or generate)."""
    workers: int = 1
    """Stages run at once, each in its own process (1 = one after another, in this process)."""
    threads: Optional[int] = None
    """torch threads per stage (default: torch's choice; with workers > 1 set it, e.g. cores / workers)."""

    def __post_init__(self) -> None:
        _check(len(self.sources) >= 1, "sources", "needs at least one source task")
        _check(len(self.targets) >= 1, "targets", "needs at least one target task")
        _check(len(self.methods) >= 1, "methods", "needs at least one method")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(all(k >= 1 for k in self.few_shot_k), "few_shot_k", "values must be >= 1")
        _check(self.full_data or bool(self.few_shot_k), "full_data", "false needs few_shot_k")
        _check(self.few_shot_draws >= 1, "few_shot_draws", "must be >= 1")
        _check(self.data.few_shot_draw == 0, "data.few_shot_draw", "is set per run: use few_shot_draws")
        if "spot" in self.methods and self.few_shot_k and self.data.few_shot_dev == "none" and not self.spot_source:
            raise ConfigError("methods: spot picks its teacher on the target's dev set, which data.few_shot_dev=none "
                              "leaves empty in the few-shot settings: set spot_source, or use spot_avg")
        for name, own in self.method_settings.items():
            _check(name in METHODS, f"method_settings.{name}", f"unknown method (one of {list(METHODS)})")
            for key in own.given():
                _check(key in METHODS[name].settings, f"method_settings.{name}.{key}",
                       f"not a setting of {name} (it takes {', '.join(METHODS[name].settings)})")
            _check(own.lr is None or own.lr > 0, f"method_settings.{name}.lr", "must be > 0")
            for key in ("prompt_length", "max_steps"):
                _check(getattr(own, key) is None or getattr(own, key) >= 1, f"method_settings.{name}.{key}",
                       "must be >= 1")
        _check(self.workers >= 1, "workers", "must be >= 1")
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        if self.spot_source is not None:
            _check(self.spot_source in self.sources, "spot_source", f"must be one of sources {self.sources}")


def run(cfg: PipelineConfig) -> dict:
    """Run every stage of the plan (skipping finished ones); the summary, with one record per stage."""
    out = Path(cfg.output_dir)
    layout = Layout(cfg)  # checks every task file before anything is written
    stages = layout.stages()
    common.write_stage(out, "run-started", cfg)
    records = run_plan(stages, cfg.workers, cfg.threads)
    summary = {**summarize(cfg, stages, layout.target_names()), "stages": records}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary["markdown"])
    common.write_stage(out, "run", cfg)
    print(summary["markdown"])
    return summary


# -- summary -----------------------------------------------------------------

def summarize(cfg: PipelineConfig, stages: list[Stage], targets: list[str]) -> dict:
    """Per (setting, method): per-task mean ± std over seeds of each seed's mean over its few-shot draws (full
    data: one) and the mean invalid rate, task average, params per task (`targets`: names). Under
    eval.mode=generate the table shows each cell's invalid rate too."""
    result = {"targets": targets, "seeds": cfg.seeds, "few_shot_draws": cfg.few_shot_draws, "settings": {}}
    lines = []
    show_invalid = cfg.eval.mode == EvalMode.generate
    for setting, methods in task_runs(stages).items():
        draws = "" if setting == "full" else f", each the mean of its {cfg.few_shot_draws} draw(s)"
        lines += [f"### Target tasks — {'full data' if setting == 'full' else 'few-shot ' + setting} "
                  f"(test score, mean ± std over {len(cfg.seeds)} seed(s){draws}"
                  f"{'; [% invalid predictions]' if show_invalid else ''})", "",
                  "| method | " + " | ".join(targets) + " | avg | params/task | % of backbone |",
                  "|---" * (len(targets) + 4) + "|"]
        res = result["settings"][setting] = {}
        for method, tasks in methods.items():
            test = lambda r: r.entry["test"]["score"]  # noqa: E731
            scores = {t: {str(seed): v for seed, v in per_seed(tasks.get(t, {}), test).items()} for t in targets}
            any_run = next(r for by_seed in tasks.values() for ds in by_seed.values() for r in ds.values())
            draw_scores = {t: {str(s): {str(d): test(r) for d, r in ds.items()} for s, ds in tasks[t].items()}
                           for t in targets if setting != "full" and t in tasks}
            invalid = {t: [r.entry["test"].get("invalid_rate", 0.0) for ds in tasks.get(t, {}).values()
                           for r in ds.values()] for t in targets}  # folders from before invalid_rate: 0
            per_task = {t: {"mean": statistics.fmean(list(v.values())),
                            "std": statistics.pstdev(list(v.values())) if len(v) > 1 else 0.0, "per_seed": v,
                            "invalid_rate": statistics.fmean(invalid[t]),
                            **({"per_draw": draw_scores[t]} if t in draw_scores else {})}
                        if v else None for t, v in scores.items()}
            seed_avgs = [statistics.fmean(scores[t][s] for t in targets)
                         for s in map(str, cfg.seeds) if all(s in scores[t] for t in targets)]
            avg = {"mean": statistics.fmean(seed_avgs) if seed_avgs else None,
                   "std": statistics.pstdev(seed_avgs) if len(seed_avgs) > 1 else 0.0,
                   "invalid_rate": statistics.fmean(x for v in invalid.values() for x in v)}
            pct = 100.0 * any_run.params_per_task / any_run.backbone_params
            res[method] = {"tasks": per_task, "average": avg, "params_per_task": any_run.params_per_task,
                           "percent_of_backbone": pct, "draws": max(len(ds) for bs in tasks.values()
                                                                    for ds in bs.values())}
            fmt = lambda v: "—" if v is None or v["mean"] is None else (  # noqa: E731
                (f"{v['mean']:.1f} ± {v['std']:.1f}" if len(cfg.seeds) > 1 else f"{v['mean']:.1f}")
                + (f" [{v['invalid_rate']:.1f}]" if show_invalid else ""))
            lines.append(f"| {METHODS[method].label} | " + " | ".join(fmt(per_task[t]) for t in targets) +
                         f" | {fmt(avg)} | {any_run.params_per_task:,} | {pct:.4f}% |")
        lines.append("")
    result["markdown"] = "\n".join(lines)
    return result
