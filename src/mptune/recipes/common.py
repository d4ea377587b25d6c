"""Setup and output helpers shared by the recipes, and the stage folder's files.

Every training stage (prompt-tune, distill, adapt; one task or several) ends with
:func:`finish`, which writes the same files: the prompt, predictions per task and
split, ``stage.json`` and ``metrics.json`` in one schema::

    {"tasks": {task: {"dev": {metric: value, "score": ..., "invalid_rate": ...}, "test": {...},
                      "n_dev": 48, "n_test": 250, "train_examples": 2932,
                      "train_per_class": {"negative": 1200, ...},   # classification tasks
                      "train_uids": [...],                          # few-shot: the drawn examples
                      "predictions": {"dev": "predictions_<task>_dev.jsonl", "test": ...}}},
     "best_step": 24, "dev_history": [{"step": 8, "dev_score": ...}, ...],
     "trainable_params": ...,             # all tasks of the stage together
     "trainable_params_per_task": ...,    # the paper's per-task count
     "backbone_params": ...}

:func:`read_metrics` reads it back (and upgrades folders written before the schema
was shared); :func:`predictions` gives a split's examples and predictions in order.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .. import __version__
from ..backbone import Backbone, load_backbone
from ..config import (ConfigError, DataConfig, FewShotDev, ModelConfig, TrainConfig, load_yaml, parse, save_yaml,
                      to_dict)
from ..data import LazyFeatures, TextEncoder
from ..tasks import Example, Task, TaskKind, few_shot
from ..tasks.loading import per_answer
from ..tasks.resolve import resolve_task, save_definitions
from ..utils import atomic_write_json, atomic_write_jsonl, environment

STAGE_FILE = "stage.json"
METRICS_FILE = "metrics.json"


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


def draw_seed(seed: int, draw: int) -> int:
    """The sample seed of few-shot draw `draw` of a run with seed `seed`: the seed itself for draw 0 (as
    before draws existed), else 32 bits of sha256("<seed>/<draw>")."""
    return seed if draw == 0 else int.from_bytes(hashlib.sha256(f"{seed}/{draw}".encode()).digest()[:4], "big")


def train_examples(task: Task, data: DataConfig, sample_seed: int) -> list[Example]:
    """The paper's train split (cut with data.seed), optionally few-shot (k per class, draw
    data.few_shot_draw of `sample_seed`, the run's seed) or subsampled with `sample_seed`; then one
    example per gold answer where the task's format says so (ATTEMPT's ReCoRD)."""
    examples = task.load("train", data_dir=data.resolved_data_dir(), seed=data.seed)
    if data.few_shot_k:
        examples = few_shot(examples, data.few_shot_k, draw_seed(sample_seed, data.few_shot_draw))
    if data.train_limit and len(examples) > data.train_limit:
        examples = random.Random(sample_seed).sample(examples, data.train_limit)
    return per_answer(examples) if task.per_answer else examples


def eval_examples(task: Task, split: str, data: DataConfig, limit: Optional[int] = None) -> list[Example]:
    """A paper split for evaluation, at most `limit` (else data.eval_limit) examples."""
    limit = limit or data.eval_limit
    return task.load(split, data_dir=data.resolved_data_dir(), seed=data.seed, limit=limit)


def dev_examples(task: Task, data: DataConfig, sample_seed: int, train: Sequence[Example]) -> list[Example]:
    """The dev examples a run selects its best step on (and reports as "dev"): the paper dev split (at most
    data.eval_limit); few-shot, by data.few_shot_dev: k = k per class of the whole split, none of them among
    `train` (the run's training examples), drawn with the draw's seed; none = [] (no selection)."""
    if not data.few_shot_k or data.few_shot_dev == FewShotDev.full:
        return eval_examples(task, "dev", data)
    if data.few_shot_dev == FewShotDev.none:
        return []
    taken = {e.uid for e in train}
    pool = [e for e in task.load("dev", data_dir=data.resolved_data_dir(), seed=data.seed) if e.uid not in taken]
    return few_shot(pool, data.few_shot_k, draw_seed(sample_seed, data.few_shot_draw)) if pool else []


def test_examples(task: Task, data: DataConfig, limit: Optional[int]) -> list[Example]:
    """The test split a stage reports: at most `limit` (train.test_limit), else data.eval_limit examples."""
    return eval_examples(task, "test", data, limit)


def feature_items(task: Task, examples: Sequence[Example], task_index: int, label_rows: bool) -> list[tuple]:
    """(example, task_index, its label strings) for LazyFeatures; the label strings (the choices rank
    evaluation scores) only for classification examples when the loss needs them (train.target_loss)."""
    labels = label_rows and task.kind == TaskKind.CLASSIFICATION
    return [(e, task_index, task.choices(e) if labels else None) for e in examples]


def features(task: Task, examples: Sequence[Example], encoder: TextEncoder, task_index: int = 0,
             label_rows: bool = False) -> LazyFeatures:
    """Training features, tokenised when a batch first needs them."""
    return LazyFeatures(feature_items(task, examples, task_index, label_rows), encoder)


def run_settings(cfg) -> dict:
    """Settings outside `train` that change what a stage computes, for the Trainer's resume check
    (a checkpoint written under another value is refused, naming the key)."""
    return {"data.format": str(getattr(cfg.data.format, "value", cfg.data.format)),
            "model.dropout": str(getattr(cfg.model.dropout, "value", cfg.model.dropout))}


def backbone_params(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.model.parameters())


def resolve_tasks(specs: Sequence[str], data: DataConfig, key: str = "tasks", folder: Optional[Path] = None,
                  check_data: bool = True) -> list[Task]:
    """Registry names or task files -> tasks, before anything is written (a file's problems all at
    once, see mptune.tasks.resolve); `folder`: a stage folder whose saved definitions come first."""
    tasks = [resolve_task(s, data.resolved_data_dir(), folder, check_data, key, data.format.value) for s in specs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: duplicate task names {names} (from {list(specs)})")
    return tasks


def write_stage(out_dir: Path, stage: str, cfg, extra: Optional[dict] = None, tasks: Sequence[Task] = ()) -> None:
    """Resolved config + a stage marker (with the versions and device it ran on) + the definitions of
    the user tasks (tasks/<name>.yaml): the folder describes itself."""
    save_definitions(out_dir, tasks)
    save_yaml(to_dict(cfg), out_dir / "config.yaml")
    atomic_write_json(out_dir / STAGE_FILE, {"stage": stage, "mptune_version": __version__,
                                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "environment": environment(), **(extra or {})})


def read_stage(out_dir: Path) -> dict:
    """A finished stage's marker (stage.json: stage, version, time, environment ...); {} if none."""
    try:
        return json.loads((Path(out_dir) / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def environments(folders) -> list[dict]:
    """The distinct environments (`mptune.utils.environment`: versions, device) that the finished stages
    in `folders` recorded in their stage.json, most stages first, each with its count; stages made before
    stage.json kept one count under None. Results of two environments are not exact replicas."""
    count: Counter = Counter()
    for f in sorted({Path(f) for f in folders}):
        if stage := read_stage(f):
            count[json.dumps(stage.get("environment"), sort_keys=True)] += 1
    return [{"environment": json.loads(k), "stages": n} for k, n in count.most_common()]


def stage_done(out_dir: Path, stage: str) -> bool:
    return read_stage(out_dir).get("stage") == stage


UNCHANGING_KEYS = frozenset({"resume"})  # settings that do not change what a finished stage computed


def stage_changes(out_dir: Path, cfg) -> list[str]:
    """How `cfg` differs from the config a finished stage ran with (its config.yaml): one
    "key: saved -> now" per setting, so a rerun never passes off an old result as a new setting's.
    Paths compare by their last part (a run folder, the data or the model cache may move); a key
    the saved config lacks (an option newer than the run) or one inert here (DataConfig.inert: the
    few-shot keys of a full-data stage) is not a change."""
    f = Path(out_dir) / "config.yaml"
    if not f.is_file():
        return []
    saved, now = _flat(load_yaml(f)), _flat(to_dict(cfg))  # to_dict: the plain values config.yaml holds
    data = getattr(cfg, "data", None)
    inert = {f"data.{k}" for k in data.inert()} if isinstance(data, DataConfig) else set()
    return [f"{k}: {saved[k]!r} -> {v!r}" for k, v in now.items() if k in saved and k not in inert
            and k.split(".")[-1] not in UNCHANGING_KEYS and _where(saved[k]) != _where(v)]


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _where(v: Any) -> Any:
    """A value with every path reduced to its last part."""
    if isinstance(v, list):
        return [_where(x) for x in v]
    return Path(v).name if isinstance(v, str) and "/" in v else v


# -- the end of a training stage: metrics.json and predictions -------------------------------

def predictions_file(task: str, split: str) -> str:
    return f"predictions_{task}_{split}.jsonl"


def train_counts(task: Task, examples: Sequence[Example]) -> dict:
    """How many training examples, and per class for classification with fixed labels (few-shot: k each)."""
    out: dict[str, Any] = {"train_examples": len(examples)}
    if task.kind == TaskKind.CLASSIFICATION and task.label_words and all(isinstance(e.label, int) for e in examples):
        counts = Counter(task.label_words[e.label] for e in examples)
        out["train_per_class"] = {w: counts[w] for w in task.label_words}
    return out


def finish(stage: str, cfg, out: Path, accelerator, backbone: Backbone, encoder: TextEncoder, best,
           tasks: Sequence[Task], train: Sequence[Sequence[Example]], dev: Sequence[Sequence[Example]], result,
           trainable_params: int, trainable_per_task: int) -> dict:
    """Test the best prompt module `best` on every task (dev and test), write the predictions, the
    prompt file, metrics.json, stage.json and the user tasks' definitions. `cfg` needs .data, .train, .eval."""
    from ..evaluation import evaluate
    from ..prompts.io import save_module

    per_task: dict[str, dict] = {}
    for k, task in enumerate(tasks):
        entry: dict[str, Any] = {}
        files = {}
        splits = (("dev", dev[k]),) if cfg.train.final_dev else ()
        entry.update({} if cfg.train.final_dev else {"dev": {}, "n_dev": 0})
        for split, ex in (*splits, ("test", test_examples(task, cfg.data, cfg.train.test_limit))):
            r = evaluate(backbone, best, task, ex, encoder, cfg.train.eval_batch_size, task_index=k,
                         accelerator=accelerator, how=cfg.eval)
            entry[split], entry[f"n_{split}"] = r.metrics, len(ex)
            files[split] = predictions_file(task.name, split)
            if accelerator.is_main_process:
                atomic_write_jsonl(out / files[split], r.rows)
        drawn = {"train_uids": [e.uid for e in train[k]]} if cfg.data.few_shot_k else {}  # few-shot: which ones
        per_task[task.name] = {**entry, **train_counts(task, train[k]), **drawn, "predictions": files}
    metrics = {"tasks": per_task, "best_step": result.best_step, "dev_history": result.history,
               "trainable_params": trainable_params, "trainable_params_per_task": trainable_per_task,
               "backbone_params": backbone_params(backbone)}
    if accelerator.is_main_process:
        save_module(out / "prompt.safetensors", best, backbone.name)
        atomic_write_json(out / METRICS_FILE, metrics)
        write_stage(out, stage, cfg, tasks=tasks)
    accelerator.wait_for_everyone()
    return metrics


def read_metrics(folder: Path) -> dict:
    """A stage folder's metrics.json in the schema above ({} when missing or unreadable). A folder
    written before single-task stages used it ({"task": t, "dev": ..., "test": ...}) is upgraded."""
    try:
        m = json.loads((Path(folder) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if "tasks" not in m and "task" in m:
        task = m.pop("task")
        entry = {"dev": m.pop("dev", {}), "test": m.pop("test", {}), "predictions":
                 {s: f"predictions_{s}.jsonl" for s in ("dev", "test")}}
        if "train_examples" in m:
            entry["train_examples"] = m.pop("train_examples")
        m = {"tasks": {task: entry}, **m}
    for task, entry in m.get("tasks", {}).items():
        entry.setdefault("predictions", {s: predictions_file(task, s) for s in ("dev", "test")})
    return m


def predictions(folder: Path, task_name: str, split: str = "test") -> tuple[Task, list[Example], list]:
    """(task, examples, predictions) of one split of a finished stage folder, in evaluation order:
    the examples reloaded as the stage's config.yaml loaded them, the predictions from its file."""
    folder = Path(folder)
    entry = read_metrics(folder).get("tasks", {}).get(task_name)
    if entry is None:
        raise ConfigError(f"{folder / METRICS_FILE}: no task {task_name!r}")
    cfg = load_yaml(folder / "config.yaml")
    data = parse(DataConfig, cfg.get("data") or {}, source=str(folder / "config.yaml"))
    train = cfg.get("train") or {}
    task = resolve_task(task_name, data.resolved_data_dir(), folder, False, fmt=data.format.value)  # saved ones first
    if split == "dev":  # the run's own dev set (few-shot: its k-shot draw)
        seed = train.get("seed", TrainConfig.seed)
        examples = dev_examples(task, data, seed, train_examples(task, data, seed))
    else:
        examples = eval_examples(task, split, data, train.get("test_limit") if split == "test" else None)
    if split not in entry["predictions"]:
        raise ConfigError(f"{folder / METRICS_FILE}: no {split} predictions for {task_name!r} (a run with "
                          f"train.final_dev=false does not evaluate dev at the end)")
    path = folder / entry["predictions"][split]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if [r["uid"] for r in rows] != [e.uid for e in examples]:
        raise ConfigError(f"{path}: its {len(rows)} rows are not the {len(examples)} {split} examples that "
                          f"{folder / 'config.yaml'} selects (data files changed since the run?)")
    # a classification row keeps the chosen option's index; other rows the predicted text / number
    return task, examples, [r.get("prediction_index", r["prediction"]) for r in rows]


def example_record(folder: Path, task_name: str, split: str = "test") -> dict:
    """One split of a finished stage as text-free numbers: the examples' uids and what rescores any subset
    of them (`tasks.metrics.example_record`), for paired intervals without the run folder."""
    from ..tasks import metrics as M

    task, examples, preds = predictions(folder, task_name, split)
    return {"uids": [e.uid for e in examples], **M.example_record(task, examples, preds)}
