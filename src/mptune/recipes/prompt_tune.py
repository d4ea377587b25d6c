"""Recipe: vanilla prompt tuning (Lester et al., 2021) of one task on a frozen backbone.

setup -> train (dev eval every N steps, best prompt kept) -> save -> test.
Output folder: config.yaml, stage.json, prompt.safetensors, metrics.json,
predictions_<task>_{dev,test}.jsonl, log.jsonl, checkpoints/ (see recipes/common.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import DataConfig, EvalConfig, ModelConfig, PromptConfig, TargetLoss, TrainConfig
from ..data import ShuffledBatches, collate
from ..engine import Trainer
from ..evaluation import evaluate
from ..losses import TokenNLL
from ..prompts.init import init_prompt_vectors
from ..prompts.soft import SoftPrompt
from ..utils import seed_everything
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
    dev = common.eval_examples(task, "dev", cfg.data)
    feats = common.features(task, train, encoder, label_rows=cfg.train.target_loss == TargetLoss.labels)

    g = torch.Generator().manual_seed(cfg.train.seed)
    init = init_prompt_vectors(cfg.prompt, backbone.model.get_input_embeddings(), backbone.tokenizer, g)
    prompt = SoftPrompt(cfg.prompt.length, backbone.hidden_size, init).to(acc.device)
    nll = TokenNLL(cfg.train.token_reduction, cfg.train.target_loss)

    def make_batch(idx: list[int]) -> dict:
        b = collate([feats[i] for i in idx], backbone.kind, backbone.pad_id)
        return {k: v.to(acc.device) for k, v in b.items()}

    def loss_fn(batch: dict):
        return nll(backbone(trainer.module(), batch)), {}

    dev_subset = dev[: cfg.train.eval_limit] if cfg.train.eval_limit else dev

    def dev_score() -> float:
        r = evaluate(backbone, trainer.module, task, dev_subset, encoder, cfg.train.eval_batch_size,
                     accelerator=acc, progress=False, how=cfg.eval)
        return r.metrics["score"]

    # -- train -------------------------------------------------------------
    trainer = Trainer(accelerator=acc, module=prompt, param_groups=[{"params": list(prompt.parameters())}],
                      cfg=cfg.train, plan=ShuffledBatches(len(feats), cfg.train.batch_size, cfg.train.seed),
                      make_batch=make_batch, loss_fn=loss_fn, evaluate=dev_score if dev else None,
                      out_dir=out, resume=cfg.resume, desc=f"prompt-tune {task.name}", backbone=backbone)
    result = trainer.fit()

    # -- save --------------------------------------------------------------
    best = SoftPrompt(cfg.prompt.length, backbone.hidden_size, result.best_tensors["weight"],
                      [task.name]).to(acc.device)
    return common.finish("prompt-tune", cfg, out, acc, backbone, encoder, best, [task], [train], [dev], result,
                         best.weight.numel(), best.weight.numel())
