"""Recipe: MPT source training — distil per-task teacher prompts into a shared
prompt P* and rank-r task matrices (Wang et al., 2023, §3.2).

    L = L_PLM + λ (L_logits + L_hidden)

L_PLM is the task loss on the student's prompt P_k = P* ∘ (u_k v_k); L_logits is
KL(teacher ‖ student) of the output distributions at the target positions with
temperature T (T² scaled); L_hidden is the MSE between final-layer hidden states
at the target positions (decoder for T5, the LM for causal models) — or, with
distill.hidden_at=source, at the input text positions (the T5 encoder). Teachers
are just another prompt table through the same frozen backbone, run without grad.
Batches mix tasks (stochastic task sampling).

Ablations in the same recipe: distill.weight=0 (no distillation, task loss only);
decompose=false (one shared prompt for all sources: u, v frozen at 1).

Reads: teachers_dir/<task>/ (prompt-tune stage folders). Writes: config.yaml,
stage.json, prompt.safetensors (decomposed), metrics.json, predictions, log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import ConfigError, DataConfig, ModelConfig, PromptConfig, TrainConfig, _check
from ..data import collate
from ..engine import Trainer
from ..losses import DistillLoss
from ..prompts.decomposed import DecomposedPrompt
from ..prompts.soft import init_prompt_vectors
from ..utils import seed_everything
from . import common
from .multitask import MultiTaskData, SamplingConfig, dev_average, save_decomposed, teacher_table


@dataclass
class DistillLossConfig:
    """The distillation terms."""

    weight: float = 1.0
    """λ in L_PLM + λ (L_logits + L_hidden); 0 = no distillation (ablation)."""
    temperature: float = 1.0
    """Softmax temperature T of L_logits (scaled by T²)."""
    logits: bool = True
    """Use L_logits (KL to the teacher's output distribution)."""
    hidden: bool = True
    """Use L_hidden (MSE to the teacher's hidden states)."""
    hidden_at: Literal["target", "source"] = "target"
    """Hidden states compared at the target positions (decoder/LM) or the input text positions (encoder)."""
    teacher_cache: bool = True
    """Compute the teachers' target-position outputs once per example and keep them memory-mapped in
    <output_dir>/teacher_cache (not recomputed each epoch); false = run the teachers live every step.
    Not used with hidden_at=source."""
    teacher_topk: int = 64
    """Teacher log-probs cached per target token: the top-k plus the remaining mass (0 or >= vocab: all)."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "distill.weight", "must be >= 0")
        _check(self.temperature > 0, "distill.temperature", "must be > 0")
        _check(self.teacher_topk >= 0, "distill.teacher_topk", "must be >= 0 (0 = the whole vocabulary)")


@dataclass
class DistillConfig:
    """MPT source training: distil teacher prompts into a shared prompt P* and per-task rank-r matrices."""

    model: ModelConfig
    """The frozen backbone (the teachers' backbone)."""
    tasks: list[str]
    """Source tasks (the paper: mnli, qnli, qqp, sst2, squad, record)."""
    output_dir: str
    """Stage folder to write."""
    teachers_dir: Optional[str] = None
    """Folder holding one prompt-tune folder per source task, named by task (needed unless distill.weight=0)."""
    rank: int = 1
    """Rank r of each task matrix u_k v_k."""
    shared_init: Literal["teachers", "vocab"] = "teachers"
    """P* starts as the teachers' average prompt, or from sampled vocabulary embeddings."""
    decompose: bool = True
    """False = ablation: one shared prompt for all sources (u, v frozen at 1)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt length and vocab init (when not initialised from teachers)."""
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)
    """Distillation loss."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Task sampling."""
    lr_task: Optional[float] = None
    """Learning rate of u, v (default: train.lr)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and tokenisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    resume: bool = True
    """Resume from the newest good checkpoint."""

    def __post_init__(self) -> None:
        _check(len(self.tasks) >= 1, "tasks", "needs at least one source task")
        _check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        needs_teachers = self.distill.weight > 0 or self.shared_init == "teachers"
        _check(self.teachers_dir is not None or not needs_teachers, "teachers_dir",
               "is required when distill.weight > 0 or shared_init=teachers")
        if self.lr_task is not None:
            _check(self.lr_task > 0, "lr_task", "must be > 0")


def run(cfg: DistillConfig) -> dict:
    # -- setup -------------------------------------------------------------
    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    acc = common.make_accelerator(cfg.train.mixed_precision)
    backbone = common.setup_backbone(cfg.model, acc)
    encoder = common.encoder_for(backbone, cfg.data)
    data = MultiTaskData.load(cfg.tasks, cfg.data, encoder, cfg.train.seed)
    teachers = None
    if cfg.teachers_dir is not None and (cfg.distill.weight > 0 or cfg.shared_init == "teachers"):
        teachers = teacher_table(Path(cfg.teachers_dir), cfg.tasks, backbone).to(acc.device)
    if cfg.shared_init == "teachers":
        shared = teachers.mean(0).cpu()
    else:
        g = torch.Generator().manual_seed(cfg.train.seed)
        shared = init_prompt_vectors(cfg.prompt, backbone.model.get_input_embeddings(), backbone.tokenizer, g)
    l = shared.shape[0]
    if cfg.rank > min(l, backbone.hidden_size):
        raise ConfigError(f"rank: {cfg.rank} exceeds min(l, d) = {min(l, backbone.hidden_size)}")
    prompt = DecomposedPrompt(shared, cfg.tasks, cfg.rank).to(acc.device)
    groups = prompt.param_groups(cfg.train.lr, cfg.lr_task or cfg.train.lr)
    if not cfg.decompose:  # ablation: a single shared prompt
        prompt.task_u.requires_grad_(False)
        prompt.task_v.requires_grad_(False)
        groups = [g for g in groups if g["params"][0] is prompt.shared]

    dc = cfg.distill
    distilling = teachers is not None and dc.weight > 0 and (dc.logits or dc.hidden)
    at_source = dc.hidden and dc.hidden_at == "source"
    loss = DistillLoss(dc.weight, dc.temperature, dc.logits, dc.hidden)

    tcache = None
    if distilling and dc.teacher_cache and not at_source:
        from ..teacher_cache import open_for_distillation

        tcache = open_for_distillation(out / "teacher_cache", list(data.features), teachers, backbone,
                                       topk=dc.teacher_topk, temperature=dc.temperature, logits=dc.logits,
                                       hidden=dc.hidden, accelerator=acc)

    def make_batch(idx: list[int]) -> dict:
        b = collate([data.features[i] for i in idx], backbone.kind, backbone.pad_id)
        return {**{k: v.to(acc.device) for k, v in b.items()}, "example_index": idx}

    def run_teacher(batch: dict):
        return backbone(teachers, batch, hidden=dc.hidden)

    def teacher(batch: dict):
        with torch.no_grad():  # cached: computed once per example, then read from disk
            if tcache is None:
                return run_teacher(batch)
            return tcache.lookup(batch["example_index"], batch, run_teacher)

    def loss_fn(batch: dict):
        s = backbone(trainer.module(), batch, hidden=distilling and dc.hidden)
        total, terms = loss(s, teacher(batch) if distilling else None,
                            batch["attention_mask"] if at_source else None)
        return total, {k: v.mean().item() for k, v in terms.items()}

    def dev_score():
        return dev_average(backbone, trainer.module, data, encoder, cfg.train.eval_batch_size, acc,
                           cfg.train.eval_limit)

    # -- train -------------------------------------------------------------
    trainer = Trainer(accelerator=acc, module=prompt, param_groups=groups, cfg=cfg.train,
                      plan=data.plan(cfg.train.batch_size, cfg.train.seed, cfg.sampling), make_batch=make_batch,
                      loss_fn=loss_fn, evaluate=dev_score, out_dir=out, resume=cfg.resume, desc="distill")
    result = trainer.fit()
    if tcache is not None:
        tcache.flush()

    # -- save --------------------------------------------------------------
    return save_decomposed("distill", cfg, result, cfg.tasks, cfg.rank, groups, backbone, data, encoder, acc, out)
