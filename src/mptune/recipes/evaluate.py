"""Recipes: evaluate a saved prompt on a task split; predict on a file.

Both read a stage folder (or a prompt file): the backbone comes from the
folder's config.yaml unless `model` is given, and the prompt file's metadata is
checked against that backbone before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import ConfigError, DataConfig, EvalConfig, EvalMode, ModelConfig, load_yaml, parse
from ..evaluation import evaluate, predict, prediction_rows
from ..prompts import load_prompt_module
from ..tasks import Example, TaskKind
from ..tasks.readers import DataError, read_text
from ..utils import atomic_write_json, atomic_write_jsonl
from . import common


@dataclass
class EvaluateConfig:
    """Evaluate a saved prompt with the task's metrics."""

    prompt: str
    """Stage folder (holding prompt.safetensors and config.yaml) or a .safetensors prompt file."""
    task: Optional[str] = None
    """Task to evaluate (default: the prompt's task; required for multi-task prompts): a name (the folder's
    saved definition tasks/<name>.yaml, else the registry) or a task file."""
    split: Literal["train", "dev", "test"] = "test"
    """Paper split to evaluate."""
    output_dir: Optional[str] = None
    """Where to write metrics and predictions (default: <prompt folder>/eval-<task>-<split>)."""
    model: Optional[ModelConfig] = None
    """Backbone override (default: the one in the prompt folder's config.yaml)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and tokenisation."""
    batch_size: int = 32
    """Examples per batch."""
    limit: Optional[int] = None
    """Evaluate only the first N examples."""
    eval: Optional[EvalConfig] = None
    """How label tasks are evaluated (default: the prompt folder's config.yaml eval section, else rank)."""
    allow_pickle: bool = False
    """Accept a pickle prompt file (.bin/.pt; can run code when loaded, so off by default); it is read with torch.load(weights_only=True)."""


@dataclass
class PredictConfig:
    """Predict with a saved prompt on a JSONL file."""

    prompt: str
    """Stage folder or .safetensors prompt file."""
    input: str
    """JSONL file: each line has "source" (model input text) or the task template's fields."""
    output: str
    """JSONL file to write, one line per input row: uid, task, source, prediction. Label tasks add
    prediction_index (the label's index; -1: the generated text matches no label) and, under eval.mode=rank,
    "scores": {label: {"logprob": the label's summed token log-prob (the score the ranking uses), "prob":
    softmax of those over the labels}}; under generate the prediction is the generated text and there are no
    scores (no label is scored)."""
    task: Optional[str] = None
    """Task whose template/labels to use (default: the prompt's task): a name or a task file, as for evaluate."""
    model: Optional[ModelConfig] = None
    """Backbone override (default: the one in the prompt folder's config.yaml)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Tokenisation limits."""
    eval: Optional[EvalConfig] = None
    """How label tasks are evaluated (default: the prompt folder's config.yaml eval section, else rank)."""
    batch_size: int = 32
    """Examples per batch."""
    allow_pickle: bool = False
    """Accept a pickle prompt file (.bin/.pt; can run code when loaded, so off by default); it is read with torch.load(weights_only=True)."""


def _folder(prompt: str) -> Path:
    return Path(prompt) if Path(prompt).is_dir() else Path(prompt).parent


def _saved(prompt: str, key: str) -> Optional[dict]:
    """A section of the prompt folder's config.yaml (None: no such file or section)."""
    cfg_file = _folder(prompt) / "config.yaml"
    section = load_yaml(cfg_file).get(key) if cfg_file.is_file() else None
    return section if isinstance(section, dict) else None


def _model_for(prompt: str, override: Optional[ModelConfig]) -> ModelConfig:
    if override is not None:
        return override
    model = _saved(prompt, "model")
    if model and model.get("name"):
        return ModelConfig(**model)
    raise ConfigError(f"model: no backbone given and {_folder(prompt) / 'config.yaml'} has none; pass model.name=...")


def saved_eval(prompt: str | Path) -> EvalConfig:
    """How the stage that wrote `prompt` evaluated label tasks (its config.yaml `eval`), else rank
    (e.g. an exported PEFT folder). evaluate, predict and serve all read it here."""
    saved = _saved(str(prompt), "eval") or {}
    return parse(EvalConfig, saved, source=str(_folder(str(prompt)) / "config.yaml"))


def _eval_for(cfg):
    """`cfg` with its eval section resolved: given, else the stage's own (saved_eval)."""
    return cfg if cfg.eval is not None else dataclasses.replace(cfg, eval=saved_eval(cfg.prompt))


def _setup(prompt: str, model: Optional[ModelConfig], task_name: Optional[str], data: DataConfig,
           allow_pickle: bool = False, check_data: bool = True):
    acc = common.make_accelerator()
    backbone = common.setup_backbone(_model_for(prompt, model), acc)
    module, meta = load_prompt_module(prompt, backbone, allow_pickle=allow_pickle)
    name = task_name or (meta.tasks[0] if len(meta.tasks) == 1 else None)
    if name is None:
        raise ConfigError(f"task: the prompt holds tasks {meta.tasks}; choose one with task=...")
    task = common.resolve_tasks([name], data, "task", _folder(prompt), check_data)[0]
    try:
        task_index = module.task_index(task.name)
    except KeyError:
        raise ConfigError(f"task: {task.name!r} is not among the prompt's tasks {meta.tasks}") from None
    return acc, backbone, module.to(acc.device), task, task_index, common.encoder_for(backbone, data)


def run_evaluate(cfg: EvaluateConfig) -> dict:
    cfg = _eval_for(cfg)
    acc, backbone, module, task, ti, encoder = _setup(cfg.prompt, cfg.model, cfg.task, cfg.data, cfg.allow_pickle)
    examples = common.eval_examples(task, cfg.split, cfg.data, cfg.limit)
    r = evaluate(backbone, module, task, examples, encoder, cfg.batch_size, task_index=ti, accelerator=acc,
                 how=cfg.eval)
    out = Path(cfg.output_dir) if cfg.output_dir else _folder(cfg.prompt) / f"eval-{task.name}-{cfg.split}"
    result = {"task": task.name, "split": cfg.split, "examples": len(examples), "metrics": r.metrics}
    if acc.is_main_process:
        atomic_write_jsonl(out / f"predictions_{cfg.split}.jsonl", r.rows)
        atomic_write_json(out / "metrics.json", result)
        common.write_stage(out, "evaluate", cfg, tasks=[task])
    return result


def read_predict_input(path: Path, task) -> list[Example]:
    """Rows with "source", or with the fields of the task's template."""
    examples = []
    text = read_text(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        if "source" in row:
            source = str(row["source"])
        else:
            try:
                source = task.template.format(**row)
            except (KeyError, IndexError) as e:
                raise DataError(f"{where}: missing field {e} needed by the template of task "
                                f"{task.name!r} ({task.template!r}); or give a 'source' field") from None
        examples.append(Example(source=source, target="", uid=str(row.get("id", where)), task=task.name))
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


def label_scores(labels: list[str], logprobs: list[float]) -> dict[str, dict[str, float]]:
    """{label: {"logprob": summed token log-prob, "prob": softmax over the labels}}, in label order."""
    probs = torch.tensor(logprobs, dtype=torch.float64).softmax(0).tolist()
    return {c: {"logprob": lp, "prob": p} for c, lp, p in zip(labels, logprobs, probs)}


def run_predict(cfg: PredictConfig) -> list[dict]:
    cfg = _eval_for(cfg)
    acc, backbone, module, task, ti, encoder = _setup(cfg.prompt, cfg.model, cfg.task, cfg.data, cfg.allow_pickle,
                                                      check_data=False)  # needs the template and labels only
    examples = read_predict_input(Path(cfg.input), task)
    ranked = task.kind == TaskKind.CLASSIFICATION and cfg.eval.mode == EvalMode.rank
    preds = predict(backbone, module, task, examples, encoder, cfg.batch_size, task_index=ti, accelerator=acc,
                    with_scores=ranked, mode=cfg.eval.mode)
    rows = prediction_rows(task, examples, [p for p, _ in preds] if ranked else preds, cfg.eval)
    for r, e, p in zip(rows, examples, preds):
        r.pop("target", None)
        if ranked:
            r["scores"] = label_scores(task.choices(e), p[1])
    if acc.is_main_process:
        atomic_write_jsonl(cfg.output, rows)
    return rows
