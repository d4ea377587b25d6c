"""Recipe: MPT target adaptation (Wang et al., 2023, §3.3).

A target prompt starts from the source stage's shared prompt P* and learns its
own multiplicative low-rank update: P_t = P* ∘ (u_t v_t), with P*, u_t, v_t all
trained (separate learning rates; P* optionally frozen). One task = single
target; several tasks = "MPT*": the group shares one P*, each task has its own
u, v, trained together with task sampling. Few-shot runs set data.few_shot_k.

Initialisation (`init`, the table INITS): P* with u v = 1 (shared); P* ∘ mean_k(u_k v_k)
folded into P* with u v = 1 (shared_times_mean_task: the mean of the source products);
or PEFT's two starts from source task matrices, which keep P* and set u_t, v_t
(peft/tuners/multitask_prompt_tuning/model.py @ 5d602fd): peft_average, u_t = mean_k u_k
and v_t = mean_k v_k, so P* ∘ (mean u)(mean v) — the product of the means, which differs
from the mean of the products (and, unlike it, depends on how each u_k v_k is split
between u_k and v_k) — (AVERAGE_SOURCE_TASKS, model.py:87-89); and source:<task>, u_t, v_t
= that source's, so P* ∘ (u_s v_s) (EXACT_SOURCE_TASK, model.py:90-92). Without a source
folder, P* comes from vocabulary embeddings (the "decomposed prompt without transfer"
baseline) and only init=shared applies.

Reads: the distill stage folder (prompt.safetensors, config.yaml). Writes the
same layout as distill: config.yaml, stage.json, prompt.safetensors, metrics.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import ConfigError, DataConfig, EvalConfig, ModelConfig, PromptConfig, TrainConfig, _check, load_yaml
from ..data import collate
from ..engine import Trainer
from ..losses import TokenNLL
from ..prompts import load_prompt
from ..prompts.decomposed import DecomposedPrompt
from ..prompts.init import init_prompt_vectors
from ..utils import seed_everything
from . import common
from .multitask import MultiTaskData, SamplingConfig, dev_average, save_decomposed


@dataclass
class AdaptConfig:
    """MPT target adaptation: start from P* and learn a multiplicative low-rank update per target task."""

    tasks: list[str]
    """Target task(s): registry names or task files; several = one shared P* with per-task u, v (MPT*)."""
    output_dir: str
    """Stage folder to write."""
    source: Optional[str] = None
    """Distill stage folder (its prompt.safetensors gives P*); None = P* from vocabulary (no transfer)."""
    model: Optional[ModelConfig] = None
    """Backbone (default: the source folder's)."""
    rank: Optional[int] = None
    """Rank of u_t v_t (default: the source's rank, else 1)."""
    init: str = "shared"
    """The target prompt at step 0: shared (P*), shared_times_mean_task (P* ∘ mean_k u_k v_k), peft_average
    (P* ∘ (mean u)(mean v)) or source:<task> (P* ∘ u_s v_s of that source task); see INITS."""
    lr_shared: Optional[float] = None
    """Learning rate of P* (default: train.lr)."""
    lr_task: Optional[float] = None
    """Learning rate of u, v (default: train.lr)."""
    freeze_shared: bool = False
    """Keep P* fixed and train only u, v."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Used when there is no source: prompt length and vocab init."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Task sampling for multi-target training."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source, tokenisation, few-shot k."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How label tasks are evaluated (rank or generate)."""
    resume: bool = True
    """Resume from the newest good checkpoint."""

    def __post_init__(self) -> None:
        _check(len(self.tasks) >= 1, "tasks", "needs at least one target task")
        for key in ("lr_shared", "lr_task"):
            v = getattr(self, key)
            _check(v is None or v > 0, key, f"must be > 0, got {v}")
        if self.rank is not None:
            _check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        if self.model is None and self.source is None:
            raise ConfigError("model: required when there is no source folder")
        init_source(self.init)
        _check(self.init == "shared" or self.source is not None, "init", f"{self.init} needs a source folder")


INITS = {  # init -> the target start P_t = P* ∘ (u_t v_t) at step 0; one home for the list
    "shared": "P*; u v = 1",
    "shared_times_mean_task": "P* ∘ mean_k(u_k v_k), folded into P*; u v = 1",
    "peft_average": "P*; u = mean_k u_k, v = mean_k v_k (PEFT AVERAGE_SOURCE_TASKS)",
    "source:<task>": "P*; u, v = that source task's (PEFT EXACT_SOURCE_TASK)",
}
SOURCE_PREFIX = "source:"


def init_source(init: str, key: str = "init", sources: Optional[Sequence[str]] = None) -> Optional[str]:
    """The source task that init=source:<task> names (None for the other values). ConfigError naming
    `key` for an unknown value or, when `sources` are given, a task that is not one of them."""
    if not init.startswith(SOURCE_PREFIX):
        _check(init in INITS, key, f"must be one of {', '.join(INITS)}, got {init!r}")
        return None
    task = init[len(SOURCE_PREFIX):]
    valid = ", ".join(SOURCE_PREFIX + t for t in sources or [])
    _check(bool(task) and (sources is None or task in sources), key,
           f"{init!r} names no source task" + (f"; the source tasks are {valid}" if sources else ""))
    return task


def source_model(cfg: AdaptConfig) -> ModelConfig:
    if cfg.model is not None:
        return cfg.model
    f = Path(cfg.source) / "config.yaml"
    model = load_yaml(f).get("model") if f.is_file() else None
    if not isinstance(model, dict):
        raise ConfigError(f"model: not given and {f} names no model")
    return ModelConfig(**model)


def initial_prompt(cfg: AdaptConfig, backbone, names: list[str]) -> DecomposedPrompt:
    if cfg.source is None:
        g = torch.Generator().manual_seed(cfg.train.seed)
        shared = init_prompt_vectors(cfg.prompt, backbone.model.get_input_embeddings(), backbone.tokenizer, g)
        if (cfg.rank or 1) > min(shared.shape):
            raise ConfigError(f"rank: {cfg.rank} exceeds min(l, d) = {min(shared.shape)}")
        return DecomposedPrompt(shared, names, cfg.rank or 1)
    tensors, meta = load_prompt(cfg.source, backbone=backbone.name, dim=backbone.hidden_size)
    u = v = None  # PEFT's starts: u_t [l, r], v_t [r, d] from the source tasks; None: u v = 1
    if meta.kind == "decomposed":
        src = DecomposedPrompt.from_tensors(tensors, meta)
        shared, rank = src.shared.detach(), cfg.rank or meta.rank
        picked = init_source(cfg.init, "init", src.tasks)
        if cfg.init == "shared_times_mean_task":
            shared = shared * src.task_matrices().detach().mean(0)
        elif cfg.init == "peft_average":  # [K, l, r] -> [l, r], [K, r, d] -> [r, d]
            u, v = src.task_u.detach().mean(0), src.task_v.detach().mean(0)
        elif picked is not None:
            k = src.task_index(picked)
            u, v = src.task_u.detach()[k], src.task_v.detach()[k]
        if u is not None and rank != meta.rank:
            raise ConfigError(f"rank: {rank} differs from the source's rank {meta.rank}, which init={cfg.init} keeps")
    else:  # a soft prompt as P* (e.g. the no-decomposition ablation exported as soft)
        _check(cfg.init == "shared", "init", f"{cfg.init} needs a decomposed source prompt; {cfg.source} holds "
                                             "a soft prompt (only init=shared applies)")
        shared, rank = tensors["prompt"], cfg.rank or 1
    if rank > min(shared.shape):
        raise ConfigError(f"rank: {rank} exceeds min(l, d) = {min(shared.shape)}")
    K = len(names)  # every target task starts from the same u, v (MPT*: each then trains its own)
    return DecomposedPrompt(shared, names, rank, None if u is None else u.repeat(K, 1, 1),
                            None if v is None else v.repeat(K, 1, 1))


def run(cfg: AdaptConfig) -> dict:
    # -- setup -------------------------------------------------------------
    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    acc = common.make_accelerator(cfg.train.mixed_precision)
    cfg = dataclasses.replace(cfg, model=source_model(cfg))  # the folder records the backbone it used
    backbone = common.setup_backbone(cfg.model, acc)
    encoder = common.encoder_for(backbone, cfg.data)
    data = MultiTaskData.load(cfg.tasks, cfg.data, encoder, cfg.train)
    prompt = initial_prompt(cfg, backbone, data.names).to(acc.device)
    groups = prompt.param_groups(cfg.lr_shared or cfg.train.lr, cfg.lr_task or cfg.train.lr, cfg.freeze_shared)
    for g in groups:  # the setting behind each lr: a resume that finds it changed is refused, naming it
        g["name"] = "lr_shared" if g["params"][0] is prompt.shared else "lr_task"
    nll = TokenNLL(cfg.train.token_reduction, cfg.train.target_loss)

    def make_batch(idx: list[int]) -> dict:
        b = collate([data.features[i] for i in idx], backbone.kind, backbone.pad_id)
        return {k: v.to(acc.device) for k, v in b.items()}

    def loss_fn(batch: dict):
        return nll(backbone(trainer.module(), batch, vocab=nll.needs_vocab)), {}

    def dev_score():
        return dev_average(backbone, trainer.module, data, encoder, cfg.train.eval_batch_size, acc,
                           cfg.train.eval_limit, cfg.eval)

    # -- train -------------------------------------------------------------
    trainer = Trainer(accelerator=acc, module=prompt, param_groups=groups, cfg=cfg.train,
                      plan=data.plan(cfg.train.batch_size, cfg.train.seed, cfg.sampling), make_batch=make_batch,
                      loss_fn=loss_fn, evaluate=dev_score if any(data.dev) else None, out_dir=out,
                      resume=cfg.resume, desc=f"adapt {'+'.join(data.names)}", backbone=backbone,
                      settings=common.run_settings(cfg))
    result = trainer.fit()

    # -- save --------------------------------------------------------------
    return save_decomposed("adapt", cfg, result, data.names, prompt.rank, groups, backbone, data, encoder, acc, out)
