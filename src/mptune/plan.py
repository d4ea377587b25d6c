"""The run layout: one table of methods, one plan of stages.

``plan(cfg)`` turns a pipeline config (:class:`mptune.recipes.pipeline.PipelineConfig`)
into the stages that ``mptune run``, ``mptune quickstart`` and the quality benchmark
execute (with :func:`mptune.runner.run_plan`), each an ordinary recipe writing its
own self-describing folder under ``output_dir``::

    teachers/<task>/                                  prompt-tune, one per source task
    source/<variant>/                                 distill, one per source variant (SOURCES)
    targets/full/<method>/seed-<s>/<task>/            one target run; MPT* writes <task1>+<task2>...
    targets/k<k>/<method>/seed-<s>/draw-<i>/<task>/   few-shot (k per class): draw i of few_shot_draws

``setting`` is ``full`` or ``k<k>``. A few-shot draw i samples its k-shot training
(and, with data.few_shot_dev=k, dev) examples with a seed derived from (seed, i); the
training seed stays the seed. A target stage depends
on the stages it starts from (SPoT: the teachers; MPT: its source variant, which
depends on the teachers); teachers and source variants are planned only when a
target needs them. Adding a method = one row of METHODS.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from .config import DataConfig, PromptConfig, PromptInit, TrainConfig
from .recipes import adapt, common, distill, prompt_tune

if TYPE_CHECKING:
    from .recipes.pipeline import PipelineConfig


@dataclass(frozen=True)
class Stage:
    """One recipe run: its folder, its config, and the stages that must finish first."""

    name: str  # "teacher vader_amazon", "distill (mpt)", "mpt vader_tweets k=16 seed 1"
    folder: Path
    kind: str  # the recipe (its CLI command and stage.json marker): prompt-tune | distill | adapt
    run: Callable[[Any], dict]  # the recipe's run(config)
    config: Any  # the recipe's config dataclass
    needs: tuple[str, ...] = ()  # names of stages this one starts from
    method: Optional[str] = None  # target stages: which cell of the results table they fill
    setting: Optional[str] = None  # "full" | "k=16"
    seed: Optional[int] = None
    tasks: tuple[str, ...] = ()
    draw: Optional[int] = None  # few-shot settings: which draw of k examples
    legacy: Optional[Path] = None  # draw 0: its folder in runs made before draws (read when `folder` has none)

    def done(self) -> bool:
        return common.stage_done(self.folder, self.kind)

    def changes(self) -> list[str]:
        """A finished stage: how this plan's config differs from the one it ran with (empty: none)."""
        return common.stage_changes(self.folder, self.config)


@dataclass(frozen=True)
class Cell:
    """One (setting, seed) of the target matrix: the data and optimisation every method gets there."""

    setting: str
    seed: int
    data: DataConfig
    train: TrainConfig
    draw: Optional[int] = None  # few-shot: the draw of k examples (data.few_shot_draw)


@dataclass
class MethodSettings:
    """One method's own target-run settings (PipelineConfig.method_settings), so that each method runs at
    its best, chosen on dev, in one pipeline (issue #18); unset = the pipeline's. Which fields a method
    takes is its row of METHODS (Method.settings)."""

    lr: Optional[float] = None
    """Its target runs' learning rate (else target_train.lr)."""
    prompt_length: Optional[int] = None
    """pt only: its prompt length (else prompt.length; the other methods start from a teacher or P*)."""
    lr_shared: Optional[float] = None
    """MPT methods: the learning rate of P* (else adapt.lr_shared)."""
    lr_task: Optional[float] = None
    """MPT methods: the learning rate of u, v (else adapt.lr_task)."""
    max_steps: Optional[int] = None
    """Its target runs' optimizer steps (else target_train.max_steps). MPT* shares its steps among its
    targets: at two, twice the steps give each as many examples as one MPT run (at more, the task
    sampler's mix decides each target's share)."""

    def given(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


TRAIN_SETTINGS = ("lr", "max_steps")  # MethodSettings fields that replace the cell's TrainConfig field of that name


class Layout:
    """Where each stage of a pipeline config lives, what it runs and what it needs. Stage folders are
    named by task name (a task file's ``name``); every task file is checked when the layout is made."""

    def __init__(self, cfg: PipelineConfig, check_data: bool = True):
        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.names = {spec: t.name for key in ("sources", "targets") for spec, t in
                      zip(getattr(cfg, key), common.resolve_tasks(getattr(cfg, key), cfg.data, key,
                                                                  check_data=check_data))}
        adapt.init_source(cfg.adapt.init, "adapt.init", [self.names[s] for s in cfg.sources])

    def teacher(self, spec: str) -> Stage:
        cfg, name = self.cfg, self.names[spec]
        folder = self.out / "teachers" / name
        return Stage(f"teacher {name}", folder, "prompt-tune", prompt_tune.run, prompt_tune.PromptTuneConfig(
            model=cfg.model, task=spec, output_dir=str(folder), prompt=cfg.prompt, data=cfg.data,
            train=cfg.teacher_train, eval=cfg.eval), tasks=(name,))

    def source(self, variant: str) -> Stage:
        cfg = self.cfg
        folder = self.out / "source" / variant
        config = SOURCES[variant](distill.DistillConfig(
            model=cfg.model, tasks=cfg.sources, output_dir=str(folder), teachers_dir=str(self.out / "teachers"),
            rank=cfg.rank, prompt=cfg.prompt, distill=cfg.distill, sampling=cfg.sampling, data=cfg.data,
            train=cfg.source_train, eval=cfg.eval))
        needs = tuple(self.teacher(t).name for t in cfg.sources)
        return Stage(f"distill ({variant})", folder, "distill", distill.run, config, needs,
                     tasks=tuple(self.names[t] for t in cfg.sources))

    def cells(self) -> list[Cell]:
        """Every (setting, seed[, draw]): splits stay fixed (data.seed); the seed varies init and order, and
        with the draw the few-shot sample."""
        cfg = self.cfg
        out = []
        for setting in settings(cfg):
            for seed in cfg.seeds:
                train = dataclasses.replace(cfg.target_train, seed=seed)
                if setting == "full":
                    out.append(Cell(setting, seed, cfg.data, train))
                    continue
                out += [Cell(setting, seed, dataclasses.replace(cfg.data, few_shot_k=int(setting[2:]), few_shot_draw=i),
                             train, i) for i in range(cfg.few_shot_draws)]
        return out

    def target(self, c: Cell, method: str, specs: list[str], kind: str, run: Callable,
               make_config: Callable[[str], Any], needs: tuple[str, ...] = ()) -> Stage:
        """One target run: targets/<setting>/<method>/seed-<s>[/draw-<i>]/<task>[+<task>...]; make_config(folder)."""
        names = [self.names[t] for t in specs]
        group = "+".join(names)
        seed = self.out / "targets" / c.setting.replace("=", "") / method / f"seed-{c.seed}"
        folder = seed / group if c.draw is None else seed / f"draw-{c.draw}" / group
        tag = ("" if c.setting == "full" else f" {c.setting}") + f" seed {c.seed}" + (
            "" if c.draw is None else f" draw {c.draw}")
        return Stage(f"{method} {group}{tag}", folder, kind, run, make_config(str(folder)), needs, method, c.setting,
                     c.seed, tuple(names), c.draw, seed / group if c.draw == 0 else None)

    def stages(self) -> list[Stage]:
        """Every stage, in an order that runs one after another (dependencies first): the teachers and
        source variants the targets need, then per (setting, seed) each method's target runs."""
        cfg = self.cfg
        targets = [s for c in self.cells() for m in cfg.methods for s in METHODS[m].build(self, METHODS[m], c)]
        needed = {n for s in targets for n in s.needs}
        sources = [s for s in (self.source(v) for v in SOURCES) if s.name in needed]
        needed |= {n for s in sources for n in s.needs}
        return [s for s in (self.teacher(t) for t in cfg.sources) if s.name in needed] + sources + targets

    def target_names(self) -> list[str]:
        return [self.names[t] for t in self.cfg.targets]

    def settings_of(self, m: "Method") -> MethodSettings:
        return self.cfg.method_settings.get(m.name) or MethodSettings()

    def train_of(self, m: "Method", c: Cell) -> TrainConfig:
        """The cell's optimisation with the method's own learning rate and steps, where it has them."""
        own = self.settings_of(m)
        changed = {k: getattr(own, k) for k in TRAIN_SETTINGS if getattr(own, k) is not None}
        return dataclasses.replace(c.train, **changed) if changed else c.train


# -- the methods ---------------------------------------------------------------------------

def _prompt_tune(lay: Layout, m: Method, c: Cell, prompt: PromptConfig, needs: tuple[str, ...] = ()) -> list[Stage]:
    cfg = lay.cfg
    train = lay.train_of(m, c)
    return [lay.target(c, m.name, [t], "prompt-tune", prompt_tune.run, lambda f, t=t: prompt_tune.PromptTuneConfig(
        model=cfg.model, task=t, output_dir=f, prompt=prompt, data=c.data, train=train, eval=cfg.eval),
        needs) for t in cfg.targets]


def _pt(lay: Layout, m: Method, c: Cell) -> list[Stage]:
    """Prompt tuning per target, from sampled vocabulary (Lester et al.)."""
    length = lay.settings_of(m).prompt_length
    prompt = lay.cfg.prompt if length is None else dataclasses.replace(lay.cfg.prompt, length=length)
    return _prompt_tune(lay, m, c, prompt)


def _from_teachers(lay: Layout, m: Method, c: Cell, init: PromptInit, sources: list[str]) -> list[Stage]:
    teachers = [lay.teacher(s) for s in sources]
    prompt = dataclasses.replace(lay.cfg.prompt, init=init, init_from=[str(t.folder) for t in teachers])
    return _prompt_tune(lay, m, c, prompt, tuple(t.name for t in teachers))


def _spot(lay: Layout, m: Method, c: Cell) -> list[Stage]:
    """Prompt tuning per target from the teacher prompt that scores best on the target's dev set before
    training (SPoT, Vu et al.; spot_choice.json), or from spot_source's teacher."""
    cfg = lay.cfg
    return _from_teachers(lay, m, c, PromptInit.best_prompt, [cfg.spot_source] if cfg.spot_source else cfg.sources)


def _spot_avg(lay: Layout, m: Method, c: Cell) -> list[Stage]:
    """Prompt tuning per target from the teachers' average prompt."""
    return _from_teachers(lay, m, c, PromptInit.prompts, lay.cfg.sources)


def _adapt(lay: Layout, m: Method, c: Cell, specs: list[str]) -> Stage:
    cfg, source, own = lay.cfg, lay.source(m.source), lay.settings_of(m)
    lr_shared = cfg.adapt.lr_shared if own.lr_shared is None else own.lr_shared
    lr_task = cfg.adapt.lr_task if own.lr_task is None else own.lr_task
    return lay.target(c, m.name, specs, "adapt", adapt.run, lambda f: adapt.AdaptConfig(
        tasks=specs, output_dir=f, source=str(source.folder), model=cfg.model, rank=cfg.rank, init=cfg.adapt.init,
        lr_shared=lr_shared, lr_task=lr_task, freeze_shared=cfg.adapt.freeze_shared,
        sampling=cfg.sampling, data=c.data, train=lay.train_of(m, c), eval=cfg.eval), (source.name,))


def _adapt_each(lay: Layout, m: Method, c: Cell) -> list[Stage]:
    """MPT adaptation per target from the source variant's P*."""
    return [_adapt(lay, m, c, [t]) for t in lay.cfg.targets]


def _adapt_together(lay: Layout, m: Method, c: Cell) -> list[Stage]:
    """All targets share one P*, each with its own u, v (MPT*)."""
    return [_adapt(lay, m, c, list(lay.cfg.targets))]


Role = Literal["main", "baseline", "ablation", "variant"]


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # row label in results tables
    colour: str  # line colour in plots (matplotlib)
    role: Role  # main comparison, baseline, ablation of MPT, variant of MPT
    source: Optional[str]  # the source-training variant (SOURCES) it adapts from; None: no source stage
    build: Callable[[Layout, "Method", Cell], list[Stage]]  # its target stages in one Cell
    about: str
    settings: tuple[str, ...] = TRAIN_SETTINGS  # the MethodSettings fields it takes


ADAPT_SETTINGS = TRAIN_SETTINGS + ("lr_shared", "lr_task")  # the MPT methods' (adapt) own settings
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("pt", "PT", "tab:gray", "main", None, _pt, "vanilla prompt tuning from sampled vocabulary",
           TRAIN_SETTINGS + ("prompt_length",)),
    Method("spot", "SPoT (best source)", "tab:blue", "baseline", None, _spot,
           "prompt tuning from the teacher prompt best on the target's dev set at step 0 (or spot_source's)"),
    Method("spot_avg", "SPoT-style (teachers' avg)", "tab:cyan", "baseline", None, _spot_avg,
           "prompt tuning started from the teachers' average prompt"),
    Method("mpt", "MPT", "tab:red", "main", "mpt", _adapt_each, "MPT: adapt P* ∘ (u v) from the distilled source",
           ADAPT_SETTINGS),
    Method("mpt_multi", "MPT*", "tab:orange", "variant", "mpt", _adapt_together,
           "MPT*: all targets share one P*, each with its own u, v", ADAPT_SETTINGS),
    Method("mpt_no_distill", "MPT w/o distillation", "tab:purple", "ablation", "no_distill", _adapt_each,
           "ablation: source training with the task loss only (λ = 0)", ADAPT_SETTINGS),
    Method("mpt_no_decomp", "MPT w/o decomposition", "tab:green", "ablation", "no_decomp", _adapt_each,
           "ablation: one shared distilled source prompt (no u, v in source training)", ADAPT_SETTINGS),
]}
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the config's choices come from the table
ROLES: tuple[Role, ...] = ("main", "baseline", "ablation", "variant")

# Source-training variant -> how its distill config differs from the pipeline's.
SOURCES: dict[str, Callable[[distill.DistillConfig], distill.DistillConfig]] = {
    "mpt": lambda d: d,
    "no_distill": lambda d: dataclasses.replace(d, distill=dataclasses.replace(d.distill, weight=0.0)),
    "no_decomp": lambda d: dataclasses.replace(d, decompose=False),  # u, v frozen at 1
}


# -- the plan ------------------------------------------------------------------------------

def settings(cfg: PipelineConfig) -> list[str]:
    """"full" (unless full_data=false), then "k=<k>" per few-shot k."""
    return (["full"] if cfg.full_data else []) + [f"k={k}" for k in cfg.few_shot_k]


def setting_title(setting: str, per_class: bool | None = True) -> str:
    """A setting as results tables head it: "full training data" | "few-shot, k=16 per class" (`per_class`
    False: "in all", as `tasks.few_shot` draws for tasks without classes; None: the targets are of both)."""
    if setting == "full":
        return "full training data"
    return f"few-shot, {setting} " + {True: "per class", False: "in all"}.get(
        per_class, "per class (in all for a target without classes)")


def plan(cfg: PipelineConfig) -> list[Stage]:
    """Every stage of the run, dependencies first (see Layout.stages)."""
    return Layout(cfg).stages()


def targets_of(stages: list[Stage]) -> list[Stage]:
    return [s for s in stages if s.method is not None]


# -- results: one reader for every consumer ----------------------------------------------

@dataclass
class TaskRun:
    """One target task of one target stage: its metrics.json entry and the stage-wide fields."""

    stage: Stage
    task: str
    entry: dict  # metrics.json "tasks"[task]: dev, test, n_test, predictions, ...
    best_step: Optional[int]
    dev_history: Optional[list[dict]]  # None when several tasks shared the selection (MPT*)
    params_per_task: int
    backbone_params: int
    folder: Path  # where it was read: stage.folder, or stage.legacy for a run made before draws


Runs = dict[str, dict[str, dict[str, dict[int, dict[int, TaskRun]]]]]


def task_runs(stages: list[Stage]) -> Runs:
    """setting -> method -> task -> seed -> draw -> TaskRun, for the finished target stages (in plan order);
    full data has one draw, 0. A draw-0 stage without results is read from its pre-draw folder, if any."""
    table: dict = {}
    for s in targets_of(stages):
        folder = s.folder
        m = common.read_metrics(folder)
        if not m and s.legacy is not None:
            folder, m = s.legacy, common.read_metrics(s.legacy)
        if not m:
            continue
        tasks = m["tasks"]
        for task, entry in tasks.items():
            run = TaskRun(s, task, entry, m.get("best_step"), m.get("dev_history") if len(tasks) == 1 else None,
                          m["trainable_params"] // len(tasks), m["backbone_params"], folder)
            by_seed = table.setdefault(s.setting, {}).setdefault(s.method, {}).setdefault(task, {})
            by_seed.setdefault(s.seed, {})[s.draw or 0] = run
    return table


def per_seed(by_seed: dict[int, dict[int, TaskRun]], value: Callable[[TaskRun], Optional[float]]) -> dict[int, float]:
    """seed -> the mean of `value` over the seed's draws (skipping None; full data: its one run)."""
    out = {}
    for seed, draws in by_seed.items():
        vals = [v for r in draws.values() if (v := value(r)) is not None]
        if vals:
            out[seed] = statistics.fmean(vals)
    return out


def replicates(by_seed: dict[int, dict[int, TaskRun]]) -> dict[str, TaskRun]:
    """seed -> draw -> run as one level, keyed "<seed>" (full data) or "<seed>/draw-<i>" (few-shot)."""
    return {str(s) if r.stage.draw is None else f"{s}/draw-{d}": r for s, ds in by_seed.items() for d, r in ds.items()}


def task_metric(run: TaskRun) -> str:
    """The metric name(s) behind a task's score, e.g. "accuracy" or "f1/accuracy" (a user task's
    definition is read from its stage folder)."""
    from .tasks.resolve import resolve_task

    t = resolve_task(run.task, folder=run.folder, check_data=False)
    return "/".join(t.score_metrics or t.metrics)


__all__ = ["Cell", "Layout", "METHODS", "Method", "MethodName", "MethodSettings", "ROLES", "SOURCES", "Stage",
           "TaskRun", "per_seed", "plan", "replicates", "settings", "targets_of", "task_metric", "task_runs"]
