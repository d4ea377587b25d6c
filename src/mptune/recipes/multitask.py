"""Pieces shared by the multi-task stages (distill, adapt): several tasks'
features in one list, a task-mixing batch plan, and per-task evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from ..config import ConfigError, DataConfig, EvalConfig, TargetLoss, TrainConfig, _check
from ..data import Feature, LazyFeatures, ShuffledBatches, TaskMixingBatches, TextEncoder
from ..evaluation import evaluate
from ..tasks import Example, Task
from . import common


@dataclass
class SamplingConfig:
    """How a batch draws on several tasks."""

    mode: Literal["sample", "concat"] = "sample"
    """sample: each step draws K tasks and fills the batch from them (stochastic task sampling, as the README
    describes MPT; not checked against the paper); concat: shuffle all tasks together (ATTEMPT's multi-task mixing)."""
    k_min: int = 2
    """Fewest tasks per batch (capped at the number of tasks)."""
    k_max: Optional[int] = None
    """Most tasks per batch (default: all)."""
    temperature: float = 1.0
    """Task weights n_k^(1/T): 1 = size-proportional, large = uniform."""

    def __post_init__(self) -> None:
        _check(self.k_min >= 1, "sampling.k_min", "must be >= 1")
        if self.k_max is not None:
            _check(self.k_max >= self.k_min, "sampling.k_max", f"must be >= k_min ({self.k_min})")
        _check(self.temperature > 0, "sampling.temperature", "must be > 0")


@dataclass
class MultiTaskData:
    tasks: list[Task]
    train: list[list[Example]]
    dev: list[list[Example]]
    features: Sequence[Feature] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @classmethod
    def load(cls, specs: Sequence[str], data: DataConfig, encoder: TextEncoder,
             train_cfg: TrainConfig) -> "MultiTaskData":
        """The tasks' train / dev examples and training features (seeded by train.seed; label rows
        when train.target_loss=labels)."""
        tasks = common.resolve_tasks(specs, data, "tasks")  # registry names or task files
        train = [common.train_examples(t, data, train_cfg.seed) for t in tasks]
        dev = [common.dev_examples(t, data, train_cfg.seed, tr) for t, tr in zip(tasks, train)]
        rows = train_cfg.target_loss == TargetLoss.labels
        feats = LazyFeatures([i for k, (t, ex) in enumerate(zip(tasks, train))
                              for i in common.feature_items(t, ex, k, rows)], encoder)
        return cls(tasks, train, dev, feats)

    def plan(self, batch_size: int, seed: int, sampling: SamplingConfig):
        if sampling.mode == "concat" or len(self.tasks) == 1:
            return ShuffledBatches(len(self.features), batch_size, seed)
        return TaskMixingBatches([len(t) for t in self.train], batch_size, seed, sampling.k_min,
                                 sampling.k_max, sampling.temperature)


def dev_average(backbone, module, data: MultiTaskData, encoder: TextEncoder, batch_size: int, accelerator,
                limit: Optional[int] = None, how: Optional[EvalConfig] = None) -> Optional[float]:
    """Mean dev score over tasks: the number the best prompt is selected on."""
    scores = []
    for k, (task, dev) in enumerate(zip(data.tasks, data.dev)):
        if dev:
            ex = dev[:limit] if limit else dev
            r = evaluate(backbone, module, task, ex, encoder, batch_size, task_index=k, accelerator=accelerator,
                         progress=False, how=how)
            scores.append(r.metrics["score"])
    return sum(scores) / len(scores) if scores else None


def teacher_table(teachers_dir: Path, names: Sequence[str], backbone) -> torch.Tensor:
    """Stack the teachers' soft prompts [K, l, d] in task order, from teachers_dir/<task>/."""
    from ..prompts import load_prompt

    rows = []
    for name in names:
        folder = Path(teachers_dir) / name
        tensors, meta = load_prompt(folder, backbone=backbone.name, dim=backbone.hidden_size, kind="soft")
        if meta.tasks != [name]:
            raise ConfigError(f"{folder}: teacher prompt is for {meta.tasks}, expected [{name!r}]")
        rows.append(tensors["prompt"])
    lengths = {r.shape[0] for r in rows}
    if len(lengths) != 1:
        raise ConfigError(f"teachers under {teachers_dir} have different prompt lengths {sorted(lengths)}")
    return torch.stack(rows)


def save_decomposed(stage: str, cfg, result, tasks: Sequence[str], rank: int, groups: list[dict], backbone,
                    data: MultiTaskData, encoder: TextEncoder, accelerator, out: Path) -> dict:
    """Shared end of distill and adapt: rebuild the best prompt, then test it and write the folder."""
    from ..prompts.decomposed import DecomposedPrompt

    t = result.best_tensors
    best = DecomposedPrompt(t["shared"], tasks, rank, t["task_u"], t["task_v"]).to(accelerator.device)
    return common.finish(stage, cfg, out, accelerator, backbone, encoder, best, data.tasks, data.train, data.dev,
                         result, sum(p.numel() for g in groups for p in g["params"]), best.trainable_per_task())
