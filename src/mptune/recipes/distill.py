"""Recipe: MPT source training — distil per-task teacher prompts into a shared
prompt P* and rank-r task matrices (Wang et al., 2023).

    L = L_PLM + λ (L_logits + L_hidden)

L_PLM is the task loss on the student's prompt P_k = P* ∘ (u_k v_k); L_logits is
KL(teacher ‖ student) of the output distributions at the target positions with
temperature T (T² scaled); L_hidden is the squared error (mean or sum over d:
distill.hidden_reduction) between final-layer hidden states at the target positions (decoder for T5, the LM for causal models) — or, with
distill.hidden_at=source, at the input text positions (the T5 encoder). Teachers
are just another prompt table through the same frozen backbone, run without grad
and in eval mode (no dropout, also under model.dropout=keep).
Batches mix tasks (stochastic task sampling).

Ablations in the same recipe: distill.weight=0 (no distillation, task loss only);
decompose=false (one shared prompt for all sources: u, v frozen at 1).

Where each default and the paper preset's values come from: docs/fidelity.md.

Reads: teachers_dir/<task>/ (prompt-tune stage folders). Writes: config.yaml,
stage.json, prompt.safetensors (decomposed), metrics.json, predictions, log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from ..config import (ConfigError, DataConfig, EvalConfig, ModelConfig, PromptConfig, PromptInit, Reduction,
                      TrainConfig, _check)
from ..data import collate
from ..engine import Trainer
from ..losses import DistillLoss, LogitKL
from ..prompts.decomposed import DecomposedPrompt, TaskInit
from ..prompts.init import init_prompt_vectors
from ..utils import seed_everything
from . import common
from .multitask import MultiTaskData, SamplingConfig, dev_average, save_decomposed, teacher_table


class SharedInit(str, Enum):
    """Where P* starts in source training."""

    random = "random"  # N(0, std of the embedding table) (prompt.init=random)
    vocab = "vocab"  # embeddings of distinct ids among the first prompt.init_vocab_size (prompt.init=vocab)
    teachers = "teachers"  # the teachers' average prompt (also where the SPoT baseline starts)


@dataclass
class DistillLossConfig:
    """Distillation: the student's start, the loss terms and the teacher cache."""

    shared_init: SharedInit = SharedInit.teachers
    """P* at the start: teachers (their average: also SPoT's start, so MPT vs SPoT shares it), random
    (N(0, embedding std); the paper preset's, after issue #18's quote "randomly initialise a corresponding
    student prompt") or vocab (sampled token embeddings). random and vocab need no teachers when weight=0."""
    task_init: TaskInit = TaskInit.ones
    """u_k, v_k at the start: ones (u v = 1, P_k = P*) or normal (N(0, 0.02) as PEFT, P_k ≈ 0). The
    no-decomposition ablation always keeps u v = 1."""
    weight: float = 1.0
    """λ in L_PLM + λ (L_logits + L_hidden); 0 = no distillation (ablation)."""
    temperature: float = 1.0
    """Softmax temperature T of L_logits (scaled by T²)."""
    logits: bool = True
    """Use L_logits (KL to the teacher's output distribution)."""
    hidden: bool = True
    """Use L_hidden (squared error to the teacher's hidden states)."""
    hidden_at: Literal["target", "source"] = "target"
    """Hidden states compared at the target positions (decoder/LM) or the input text positions (encoder)."""
    hidden_reduction: Reduction = Reduction.mean
    """L_hidden over the hidden size d: mean (the MSE; 1/d of the sum) or sum (Σ (H_s − H_t)²). Over tokens,
    every term follows train.token_reduction."""
    teacher_cache: bool = True
    """Compute the teachers' target-position outputs once per example and keep them memory-mapped in
    <output_dir>/teacher_cache (not recomputed each epoch); false = run the teachers live every step.
    Not used with hidden_at=source."""
    teacher_topk: int = 64
    """Teacher log-probs cached per target token: the top-k plus the remaining mass (0 or >= vocab: all).
    The (k+1)-bucket KL is a lower bound of the full KL; its gap on the batch is logged as kl_topk_gap."""

    def __post_init__(self) -> None:
        self.shared_init = SharedInit(self.shared_init)
        self.task_init = TaskInit(self.task_init)
        self.hidden_reduction = Reduction(self.hidden_reduction)
        _check(self.weight >= 0, "distill.weight", "must be >= 0")
        _check(self.temperature > 0, "distill.temperature", "must be > 0")
        _check(self.teacher_topk >= 0, "distill.teacher_topk", "must be >= 0 (0 = the whole vocabulary)")


@dataclass
class DistillConfig:
    """MPT source training: distil teacher prompts into a shared prompt P* and per-task rank-r matrices."""

    model: ModelConfig
    """The frozen backbone (the teachers' backbone)."""
    tasks: list[str]
    """Source tasks, registry names or task files (the paper preset: ATTEMPT's six source prompts
    mnli, qnli, qqp, sst2, squad, record)."""
    output_dir: str
    """Stage folder to write."""
    teachers_dir: Optional[str] = None
    """Folder holding one prompt-tune folder per source task, named by task (needed when distill.weight > 0 or
    distill.shared_init=teachers)."""
    rank: int = 1
    """Rank r of each task matrix u_k v_k."""
    decompose: bool = True
    """False = ablation: one shared prompt for all sources (u, v frozen at 1)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt length and vocab init size (distill.shared_init=vocab/random)."""
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)
    """Distillation: start, loss terms, teacher cache."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Task sampling."""
    lr_task: Optional[float] = None
    """Learning rate of u, v (default: train.lr)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and tokenisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How label tasks are evaluated (rank or generate)."""
    resume: bool = True
    """Resume from the newest good checkpoint."""

    def __post_init__(self) -> None:
        _check(len(self.tasks) >= 1, "tasks", "needs at least one source task")
        _check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        _check(self.teachers_dir is not None or not needs_teachers(self.distill), "teachers_dir",
               "is required when distill.weight > 0 or distill.shared_init=teachers")
        if self.lr_task is not None:
            _check(self.lr_task > 0, "lr_task", "must be > 0")


def needs_teachers(dc: DistillLossConfig) -> bool:
    return dc.weight > 0 or dc.shared_init == SharedInit.teachers


def initial_prompt(cfg: DistillConfig, backbone, teachers: Optional[torch.Tensor],
                   names: Sequence[str]) -> DecomposedPrompt:
    """The student at step 0: P* by distill.shared_init, u, v by distill.task_init (seeded by train.seed)."""
    dc, g = cfg.distill, torch.Generator().manual_seed(cfg.train.seed)
    if dc.shared_init == SharedInit.teachers:
        shared = teachers.mean(0).cpu()
    else:
        init = PromptInit.random if dc.shared_init == SharedInit.random else PromptInit.vocab
        shared = init_prompt_vectors(dataclasses.replace(cfg.prompt, init=init), backbone.model.get_input_embeddings(),
                                     backbone.tokenizer, g)
    if cfg.rank > min(shared.shape[0], backbone.hidden_size):
        raise ConfigError(f"rank: {cfg.rank} exceeds min(l, d) = {min(shared.shape[0], backbone.hidden_size)}")
    task_init = dc.task_init if cfg.decompose else TaskInit.ones  # the ablation's u v stays 1
    return DecomposedPrompt(shared, names, cfg.rank, task_init=task_init, generator=g)


def run(cfg: DistillConfig) -> dict:
    # -- setup -------------------------------------------------------------
    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    acc = common.make_accelerator(cfg.train.mixed_precision)
    backbone = common.setup_backbone(cfg.model, acc)
    encoder = common.encoder_for(backbone, cfg.data)
    data = MultiTaskData.load(cfg.tasks, cfg.data, encoder, cfg.train)
    teachers = None
    if cfg.teachers_dir is not None and needs_teachers(cfg.distill):
        teachers = teacher_table(Path(cfg.teachers_dir), data.names, backbone).to(acc.device)
    prompt = initial_prompt(cfg, backbone, teachers, data.names).to(acc.device)
    groups = prompt.param_groups(cfg.train.lr, cfg.lr_task or cfg.train.lr)
    for g in groups:  # the setting behind each lr: a resume that finds it changed is refused, naming it
        g["name"] = "train.lr" if g["params"][0] is prompt.shared else "lr_task"
    if not cfg.decompose:  # ablation: a single shared prompt
        prompt.task_u.requires_grad_(False)
        prompt.task_v.requires_grad_(False)
        groups = [g for g in groups if g["params"][0] is prompt.shared]

    dc = cfg.distill
    distilling = teachers is not None and dc.weight > 0 and (dc.logits or dc.hidden)
    at_source = dc.hidden and dc.hidden_at == "source"
    loss = DistillLoss(dc.weight, dc.temperature, dc.logits, dc.hidden, cfg.train.token_reduction,
                       dc.hidden_reduction, cfg.train.target_loss)

    tcache = None
    if distilling and dc.teacher_cache and not at_source:
        from ..teacher_cache import open_for_distillation

        tcache = open_for_distillation(out / "teacher_cache", list(data.features), teachers, backbone,
                                       topk=dc.teacher_topk, temperature=dc.temperature, logits=dc.logits,
                                       hidden=dc.hidden, accelerator=acc)

    def make_batch(idx: list[int]) -> dict:
        b = collate([data.features[i] for i in idx], backbone.kind, backbone.pad_id)
        return {**{k: v.to(acc.device) for k, v in b.items()}, "example_index": idx}

    def run_teacher(batch: dict):  # live, cache fill and the top-k gap: always eval mode (model.dropout)
        with backbone.frozen_eval():  # label rows (train.target_loss=labels) are the student's loss only
            return backbone(teachers, batch, hidden=dc.hidden, with_labels=False)

    def teacher(batch: dict):
        with torch.no_grad():  # cached: computed once per example, then read from disk
            if tcache is None:
                return run_teacher(batch)
            return tcache.lookup(batch["example_index"], batch, run_teacher)

    full_kl = LogitKL(dc.temperature, cfg.train.token_reduction)
    gap_measured = tcache is not None and dc.logits and not tcache.full

    def topk_gap(s, batch: dict, bucket_kl: torch.Tensor) -> float:
        """Mean over the batch of full KL − (k+1)-bucket KL (>= 0), against a live teacher pass."""
        with torch.no_grad():
            return (full_kl(s.logits.detach(), run_teacher(batch).logits, s.labels) - bucket_kl.detach()).mean().item()

    def loss_fn(batch: dict):
        s = backbone(trainer.module(), batch, hidden=distilling and dc.hidden, vocab=distilling or loss.nll.needs_vocab)
        total, terms = loss(s, teacher(batch) if distilling else None,
                            batch["attention_mask"] if at_source else None)
        logs = {k: v.mean().item() for k, v in terms.items()}
        step = trainer.step + 1  # the step this batch belongs to; the engine logs every log_every
        if gap_measured and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
            logs["kl_topk_gap"] = topk_gap(s, batch, terms["kl"])
        return total, logs

    def dev_score():
        return dev_average(backbone, trainer.module, data, encoder, cfg.train.eval_batch_size, acc,
                           cfg.train.eval_limit, cfg.eval)

    # -- train -------------------------------------------------------------
    trainer = Trainer(accelerator=acc, module=prompt, param_groups=groups, cfg=cfg.train,
                      plan=data.plan(cfg.train.batch_size, cfg.train.seed, cfg.sampling), make_batch=make_batch,
                      loss_fn=loss_fn, evaluate=dev_score, out_dir=out, resume=cfg.resume, desc="distill",
                      backbone=backbone, settings=common.run_settings(cfg))
    result = trainer.fit()
    if tcache is not None:
        tcache.flush()

    # -- save --------------------------------------------------------------
    return save_decomposed("distill", cfg, result, data.names, cfg.rank, groups, backbone, data, encoder, acc, out)
