"""Recipe: the whole MPT pipeline and its baselines in one harness.

    teachers (prompt-tune per source task)
      -> source training (distill: P* + task matrices; ablations)
      -> target adaptation (per target task, seed and few-shot k)
      -> evaluation -> Table-1-style summary (markdown + JSON)

Every stage writes a self-describing folder under output_dir; a rerun skips
stages whose folder is complete (stage.json) and resumes unfinished ones from
their checkpoints. Methods (all with the same data, steps and evaluation):

  pt              vanilla prompt tuning from sampled vocabulary (Lester et al.)
  spot            prompt tuning started from the teachers' average prompt, or one teacher's (SPoT-style)
  mpt             MPT: adapt P* ∘ (u v) from the distilled source prompt
  mpt_multi       MPT*: all targets share one P*, each with its own u, v
  mpt_no_distill  ablation: source training with the task loss only (λ = 0)
  mpt_no_decomp   ablation: one shared distilled source prompt (no u, v in source training)
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ..config import DataConfig, ModelConfig, PromptConfig, PromptInit, TrainConfig, _check
from ..utils import atomic_write_json, atomic_write_text
from . import adapt, common, distill, prompt_tune
from .multitask import SamplingConfig

Method = Literal["pt", "spot", "mpt", "mpt_multi", "mpt_no_distill", "mpt_no_decomp"]
SOURCE_VARIANT = {"mpt": "mpt", "mpt_multi": "mpt", "mpt_no_distill": "no_distill", "mpt_no_decomp": "no_decomp"}


@dataclass
class AdaptOptions:
    """Target adaptation settings for the MPT methods."""

    lr_shared: Optional[float] = None
    """Learning rate of P* (default: target_train.lr)."""
    lr_task: Optional[float] = None
    """Learning rate of u, v (default: target_train.lr)."""
    init: Literal["shared", "shared_times_mean_task"] = "shared"
    """Start at P*, or at P* ∘ (average source task matrix)."""
    freeze_shared: bool = False
    """Train only u, v on the target."""


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
    methods: list[Method] = field(default_factory=lambda: ["pt", "spot", "mpt"])
    """Methods to compare (see the module docs)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Seeds for target training (mean ± std over them)."""
    few_shot_k: list[int] = field(default_factory=list)
    """Also run few-shot targets with k examples per class for each k (empty: full data only)."""
    full_data: bool = True
    """Run full-data targets (set false for a few-shot-only run)."""
    spot_source: Optional[str] = None
    """SPoT baseline: start from this source task's teacher (default: the average of all teachers)."""
    rank: int = 1
    """Rank of the task matrices."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt length and vocabulary init (teachers, pt)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and tokenisation (few_shot_k here is ignored: use few_shot_k above)."""
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

    def __post_init__(self) -> None:
        _check(len(self.sources) >= 1, "sources", "needs at least one source task")
        _check(len(self.targets) >= 1, "targets", "needs at least one target task")
        _check(len(self.methods) >= 1, "methods", "needs at least one method")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(all(k >= 1 for k in self.few_shot_k), "few_shot_k", "values must be >= 1")
        _check(self.full_data or bool(self.few_shot_k), "full_data", "false needs few_shot_k")
        if self.spot_source is not None:
            _check(self.spot_source in self.sources, "spot_source", f"must be one of sources {self.sources}")


@dataclass
class Run:
    method: str
    setting: str  # "full" or "k=16"
    seed: int
    folder: Path


def run(cfg: PipelineConfig) -> dict:
    out = Path(cfg.output_dir)
    # stage folders are named by task name (a task file's `name`); every file is checked before anything is written
    names = {s: t.name for key in ("sources", "targets") for s, t in
             zip(getattr(cfg, key), common.resolve_tasks(getattr(cfg, key), cfg.data, key))}
    common.write_stage(out, "run-started", cfg)
    needs_teachers = any(m != "pt" for m in cfg.methods)
    teachers = out / "teachers"
    if needs_teachers:
        for task in cfg.sources:
            _stage(teachers / names[task], "prompt-tune", prompt_tune.run, prompt_tune.PromptTuneConfig(
                model=cfg.model, task=task, output_dir=str(teachers / names[task]), prompt=cfg.prompt, data=cfg.data,
                train=cfg.teacher_train))
    for variant in sorted({SOURCE_VARIANT[m] for m in cfg.methods if m in SOURCE_VARIANT}):
        folder = out / "source" / variant
        loss = dataclasses.replace(cfg.distill, weight=0.0) if variant == "no_distill" else cfg.distill
        _stage(folder, "distill", distill.run, distill.DistillConfig(
            model=cfg.model, tasks=cfg.sources, output_dir=str(folder), teachers_dir=str(teachers), rank=cfg.rank,
            decompose=variant != "no_decomp", prompt=cfg.prompt, distill=loss, sampling=cfg.sampling,
            data=cfg.data, train=cfg.source_train))

    runs: list[Run] = []
    settings = (["full"] if cfg.full_data else []) + [f"k={k}" for k in cfg.few_shot_k]
    for setting in settings:
        data = cfg.data if setting == "full" else dataclasses.replace(cfg.data, few_shot_k=int(setting[2:]))
        for seed in cfg.seeds:
            train = dataclasses.replace(cfg.target_train, seed=seed)
            for method in cfg.methods:  # splits stay fixed (data.seed); the seed varies init, order, few-shot draw
                runs += _targets(cfg, method, setting, seed, data, train, out, names)
    summary = summarize(cfg, runs, [names[t] for t in cfg.targets])
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary["markdown"])
    common.write_stage(out, "run", cfg)
    print(summary["markdown"])
    return summary


def _stage(folder: Path, stage: str, fn, cfg) -> None:
    if common.stage_done(folder, stage):
        print(f"[skip] {folder} ({stage} already complete)")
        return
    fn(cfg)


def _targets(cfg: PipelineConfig, method: str, setting: str, seed: int, data: DataConfig, train: TrainConfig,
             out: Path, names: dict[str, str]) -> list[Run]:
    base = out / "targets" / setting.replace("=", "") / method / f"seed-{seed}"
    if method in ("pt", "spot"):
        runs = []
        for task in cfg.targets:
            prompt = cfg.prompt
            if method == "spot":
                prompt = dataclasses.replace(cfg.prompt, init=PromptInit.prompts,
                                             init_from=[str(out / "teachers" / names[s])
                                                        for s in ([cfg.spot_source] if cfg.spot_source else cfg.sources)])
            folder = base / names[task]
            _stage(folder, "prompt-tune", prompt_tune.run, prompt_tune.PromptTuneConfig(
                model=cfg.model, task=task, output_dir=str(folder), prompt=prompt, data=data, train=train))
            runs.append(Run(method, setting, seed, folder))
        return runs
    source = out / "source" / SOURCE_VARIANT[method]
    groups = [cfg.targets] if method == "mpt_multi" else [[t] for t in cfg.targets]
    runs = []
    for tasks in groups:
        folder = base / "+".join(names[t] for t in tasks)
        _stage(folder, "adapt", adapt.run, adapt.AdaptConfig(
            tasks=tasks, output_dir=str(folder), source=str(source), model=cfg.model, rank=cfg.rank,
            init=cfg.adapt.init, lr_shared=cfg.adapt.lr_shared, lr_task=cfg.adapt.lr_task,
            freeze_shared=cfg.adapt.freeze_shared, sampling=cfg.sampling, data=data, train=train))
        runs.append(Run(method, setting, seed, folder))
    return runs


# -- summary -----------------------------------------------------------------

def _run_scores(r: Run) -> tuple[dict[str, float], int, int]:
    """(task -> test score, trainable params per task, backbone params) of one run folder."""
    m = json.loads((r.folder / "metrics.json").read_text())
    if "tasks" in m:  # decomposed stages; MPT* shares P* across its group of targets
        scores = {t: v["test"]["score"] for t, v in m["tasks"].items()}
        return scores, m["trainable_params"] // len(scores), m["backbone_params"]
    return {m["task"]: m["test"]["score"]}, m["trainable_params"], m["backbone_params"]


def summarize(cfg: PipelineConfig, runs: list[Run], targets: list[str]) -> dict:
    """Per (setting, method): per-task mean ± std over seeds, task average, params per task (`targets`: names)."""
    table: dict = {}
    for r in runs:
        scores, per_task, backbone = _run_scores(r)
        cell = table.setdefault(r.setting, {}).setdefault(r.method, {"scores": {}, "params_per_task": per_task,
                                                                      "backbone_params": backbone})
        for task, s in scores.items():
            cell["scores"].setdefault(task, {}).setdefault(str(r.seed), s)
    result = {"targets": targets, "seeds": cfg.seeds, "settings": {}}
    lines = []
    for setting, methods in table.items():
        lines += [f"### Target tasks — {'full data' if setting == 'full' else 'few-shot ' + setting} "
                  f"(test score, mean ± std over {len(cfg.seeds)} seed(s))", "",
                  "| method | " + " | ".join(targets) + " | avg | params/task | % of backbone |",
                  "|---" * (len(targets) + 4) + "|"]
        res = result["settings"][setting] = {}
        for method, cell in methods.items():
            per_task = {}
            for task in targets:
                vals = list(cell["scores"].get(task, {}).values())
                per_task[task] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                                  "per_seed": cell["scores"].get(task, {})} if vals else None
            seed_avgs = [statistics.fmean(cell["scores"][t][s] for t in targets)
                         for s in map(str, cfg.seeds) if all(s in cell["scores"].get(t, {}) for t in targets)]
            avg = {"mean": statistics.fmean(seed_avgs), "std": statistics.pstdev(seed_avgs) if len(seed_avgs) > 1 else 0.0}
            pct = 100.0 * cell["params_per_task"] / cell["backbone_params"]
            res[method] = {"tasks": per_task, "average": avg, "params_per_task": cell["params_per_task"],
                           "percent_of_backbone": pct}
            fmt = lambda v: "—" if v is None else (f"{v['mean']:.1f} ± {v['std']:.1f}" if len(cfg.seeds) > 1 else f"{v['mean']:.1f}")
            lines.append(f"| {method} | " + " | ".join(fmt(per_task[t]) for t in targets) +
                         f" | {fmt(avg)} | {cell['params_per_task']:,} | {pct:.4f}% |")
        lines.append("")
    result["markdown"] = "\n".join(lines)
    return result
