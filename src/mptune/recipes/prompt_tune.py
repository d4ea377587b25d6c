"""Recipe: vanilla prompt tuning (Lester et al., 2021) of one task on a frozen backbone.

setup -> train (dev eval every N steps, best prompt kept) -> save -> test.
Output folder: config.yaml, stage.json, prompt.safetensors, metrics.json,
predictions_<task>_{dev,test}.jsonl, log.jsonl, checkpoints/ (see recipes/common.py);
with prompt.init=best_prompt (SPoT) also spot_choice.json: each candidate's dev score
before training and the pick.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import (ConfigError, DataConfig, EvalConfig, ModelConfig, PromptConfig, PromptInit, TargetLoss,
                      TrainConfig)
from ..data import ShuffledBatches, collate
from ..engine import Trainer
from ..evaluation import evaluate
from ..losses import TokenNLL
from ..prompts import load_prompt
from ..prompts.init import init_prompt_vectors
from ..prompts.soft import SoftPrompt
from ..utils import atomic_write_json, seed_everything
from . import common


@dataclass
class PromptTuneConfig:
    """Prompt-tune one task: learn l soft-prompt vectors in front of a frozen model."""

    model: ModelConfig
    """The frozen backbone."""
    task: str
    """Task name in the registry (see `mptune tasks`), or a task file (.yaml/.yml/.json definition)."""
    output_dir: str
    """Folder for prompt, metrics, predictions, log and checkpoints."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """The soft prompt."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and tokenisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How label tasks are evaluated (rank or generate)."""
    resume: bool = True
    """Resume from the newest good checkpoint in output_dir/checkpoints."""


def run(cfg: PromptTuneConfig) -> dict:
    # -- setup -------------------------------------------------------------
    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    acc = common.make_accelerator(cfg.train.mixed_precision)
    task = common.resolve_tasks([cfg.task], cfg.data, "task")[0]
    backbone = common.setup_backbone(cfg.model, acc)
    encoder = common.encoder_for(backbone, cfg.data)
    train = common.train_examples(task, cfg.data, cfg.train.seed)
    dev = common.dev_examples(task, cfg.data, cfg.train.seed, train)
    dev_subset = dev[: cfg.train.eval_limit] if cfg.train.eval_limit else dev
    feats = common.features(task, train, encoder, label_rows=cfg.train.target_loss == TargetLoss.labels)

    def score(module) -> float:
        return evaluate(backbone, module, task, dev_subset, encoder, cfg.train.eval_batch_size, accelerator=acc,
                        progress=False, how=cfg.eval).metrics["score"]

    start = cfg.prompt
    if start.init == PromptInit.best_prompt:  # SPoT: the candidate that scores best on dev before training
        pick = pick_prompt(cfg, backbone, acc.device, score if dev_subset else None, out)
        start = dataclasses.replace(start, init=PromptInit.prompts, init_from=[pick])
    g = torch.Generator().manual_seed(cfg.train.seed)
    init = init_prompt_vectors(start, backbone.model.get_input_embeddings(), backbone.tokenizer, g)
    prompt = SoftPrompt(cfg.prompt.length, backbone.hidden_size, init).to(acc.device)
    nll = TokenNLL(cfg.train.token_reduction, cfg.train.target_loss)

    def make_batch(idx: list[int]) -> dict:
        b = collate([feats[i] for i in idx], backbone.kind, backbone.pad_id)
        return {k: v.to(acc.device) for k, v in b.items()}

    def loss_fn(batch: dict):
        return nll(backbone(trainer.module(), batch, vocab=nll.needs_vocab)), {}

    def dev_score() -> float:
        return score(trainer.module)

    # -- train -------------------------------------------------------------
    trainer = Trainer(accelerator=acc, module=prompt, param_groups=[{"params": list(prompt.parameters())}],
                      cfg=cfg.train, plan=ShuffledBatches(len(feats), cfg.train.batch_size, cfg.train.seed),
                      make_batch=make_batch, loss_fn=loss_fn, evaluate=dev_score if dev else None,
                      out_dir=out, resume=cfg.resume, desc=f"prompt-tune {task.name}", backbone=backbone,
                      settings=common.run_settings(cfg))
    result = trainer.fit()

    # -- save --------------------------------------------------------------
    best = SoftPrompt(cfg.prompt.length, backbone.hidden_size, result.best_tensors["weight"],
                      [task.name]).to(acc.device)
    return common.finish("prompt-tune", cfg, out, acc, backbone, encoder, best, [task], [train], [dev], result,
                         best.weight.numel(), best.weight.numel())


def pick_prompt(cfg: PromptTuneConfig, backbone, device, score: Optional[Callable], out: Path) -> str:
    """The prompt of cfg.prompt.init_from that scores best on dev before training (`score(module)`; the first on
    a tie); every score and the pick go to out/spot_choice.json. Without dev (score None) only one may be given."""
    rows = []
    for path in cfg.prompt.init_from:
        tensors, meta = load_prompt(path, backbone=backbone.name, dim=backbone.hidden_size, kind="soft")
        p = tensors["prompt"]
        module = SoftPrompt(p.shape[0], p.shape[1], p).to(device)
        rows.append({"prompt": path, "tasks": meta.tasks, "dev_score": score(module) if score else None})
    if score is None and len(rows) > 1:
        raise ConfigError(f"prompt.init=best_prompt: no dev examples to choose among {len(rows)} prompts")
    best = max(rows, key=lambda r: r["dev_score"]) if score else rows[0]  # max keeps the first of equals
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "spot_choice.json", {"selected_on": "dev score before training", "candidates": rows,
                                                  "pick": best["prompt"], "pick_tasks": best["tasks"]})
    return best["prompt"]
