"""Setup and output helpers shared by the recipes."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import __version__
from ..backbone import Backbone, load_backbone
from ..config import ConfigError, DataConfig, ModelConfig, save_yaml, to_dict
from ..data import LazyFeatures, TextEncoder
from ..tasks import Example, Task, few_shot
from ..tasks.resolve import resolve_task, save_definitions
from ..utils import atomic_write_json

STAGE_FILE = "stage.json"


def make_accelerator(mixed_precision: str = "no"):
    from accelerate import Accelerator

    # fp16/bf16 autocast only where a GPU is present; on CPU the run stays in float32.
    mp = mixed_precision if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp)


def setup_backbone(cfg: ModelConfig, accelerator) -> Backbone:
    backbone = load_backbone(cfg)
    backbone.model.to(accelerator.device)
    from ..sharding import shard_frozen_backbone, sharding_requested

    if sharding_requested(accelerator):  # FSDP config: frozen blocks sharded, prompt replicated
        shard_frozen_backbone(backbone.model, accelerator)
        backbone.fast_prefix = False  # its prompt-only pass and own decode loop bypass FSDP's hooks and sync
    return backbone


def encoder_for(backbone: Backbone, data: DataConfig) -> TextEncoder:
    return TextEncoder(backbone.tokenizer, backbone.kind, data.max_source_length, data.max_target_length)


def train_examples(task: Task, data: DataConfig, sample_seed: int) -> list[Example]:
    """The paper's train split (cut with data.seed), optionally few-shot (k per class) or
    subsampled with `sample_seed` (the run's seed: few-shot results vary over it)."""
    examples = task.load("train", data_dir=data.resolved_data_dir(), seed=data.seed)
    if data.few_shot_k:
        examples = few_shot(examples, data.few_shot_k, sample_seed)
    if data.train_limit and len(examples) > data.train_limit:
        examples = random.Random(sample_seed).sample(examples, data.train_limit)
    return examples


def eval_examples(task: Task, split: str, data: DataConfig, limit: Optional[int] = None) -> list[Example]:
    """A paper split for evaluation, at most `limit` (else data.eval_limit) examples."""
    limit = limit or data.eval_limit
    return task.load(split, data_dir=data.resolved_data_dir(), seed=data.seed, limit=limit)


def features(examples: Sequence[Example], encoder: TextEncoder, task_index: int = 0) -> LazyFeatures:
    """Training features, tokenised when a batch first needs them."""
    return LazyFeatures([(e, task_index) for e in examples], encoder)


def backbone_params(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.model.parameters())


def resolve_tasks(specs: Sequence[str], data: DataConfig, key: str = "tasks", folder: Optional[Path] = None,
                  check_data: bool = True) -> list[Task]:
    """Registry names or task files -> tasks, before anything is written (a file's problems all at
    once, see mptune.tasks.resolve); `folder`: a stage folder whose saved definitions come first."""
    tasks = [resolve_task(s, data.resolved_data_dir(), folder, check_data, key) for s in specs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: duplicate task names {names} (from {list(specs)})")
    return tasks


def write_stage(out_dir: Path, stage: str, cfg, extra: Optional[dict] = None, tasks: Sequence[Task] = ()) -> None:
    """Resolved config + a stage marker + the definitions of the user tasks (tasks/<name>.yaml):
    the folder describes itself."""
    save_definitions(out_dir, tasks)
    save_yaml(to_dict(cfg), out_dir / "config.yaml")
    atomic_write_json(out_dir / STAGE_FILE, {"stage": stage, "mptune_version": __version__,
                                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})})


def stage_done(out_dir: Path, stage: str) -> bool:
    import json

    f = Path(out_dir) / STAGE_FILE
    try:
        return json.loads(f.read_text()).get("stage") == stage
    except (OSError, ValueError):
        return False
