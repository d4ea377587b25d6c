"""Training-step closures for every method compared (shared by train_step.py, scaling.py,
mixed_tasks.py and gpu/bench.py). Each closure runs one full step: forward, loss,
backward, AdamW step on the trainable prompt.

* mptune fast / plain: the Backbone with the MPT prompt (shared prompt x rank-1 task
  matrices, as in the paper), target-position logits only (logits_to_keep).
* floor: the backbone alone on the same input tokens (inputs_embeds requiring grad so
  the backward runs through every layer), the same target-position loss.
* PEFT prompt tuning / PEFT MPT: peft's PromptTuningConfig / MultitaskPromptTuningConfig
  on the same frozen model, called as users call it (labels=, logits at every
  position); "PEFT MPT (logits_to_keep)" passes logits_to_keep and takes the same
  loss as mptune, isolating the prompt-position cost from the lm-head cost.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mptune.losses import TokenNLL
from mptune.prompts.decomposed import DecomposedPrompt

import common


def mpt_prompt(l: int, d: int, tasks: int, std: float, device="cpu") -> DecomposedPrompt:
    torch.manual_seed(1)
    return DecomposedPrompt(torch.randn(l, d) * std, [f"task{k}" for k in range(tasks)], rank=1).to(device)


def step_fn(loss_of: Callable[[], torch.Tensor], params) -> Callable[[], None]:
    params = list(params)
    opt = torch.optim.AdamW(params, lr=1e-3)

    def f():
        loss_of().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return f


def mptune_step(model, batch: dict, l: int, tasks: int, fast: bool, gc: bool = False) -> Callable[[], None]:
    bb = common.backbone(model, fast=fast, gc=gc)
    d = bb.hidden_size
    std = float(model.get_input_embeddings().weight.float().std())
    prompt = mpt_prompt(l, d, tasks, std, bb.device)
    if fast and bb.kind.value == "causal" and not bb.uses_fast_prefix:
        raise RuntimeError("fast prefix path unavailable for this model")

    def loss():
        bb.train(gc)  # several closures share one model: set its mode (HF checkpoints only in train mode)
        return TokenNLL()(bb(prompt(), batch)).mean()

    return step_fn(loss, prompt.parameters())


def floor_step(model, batch: dict, gc: bool = False) -> Callable[[], None]:
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    T = labels.shape[1]
    seq2seq = model.config.is_encoder_decoder
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def loss():
        if gc:
            model.train()
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        if seq2seq:
            out = model(inputs_embeds=emb, attention_mask=am, labels=labels).loss
        else:
            logits = model(inputs_embeds=emb, attention_mask=am, logits_to_keep=T + 1).logits[:, :-1]
            out = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        if gc:
            model.eval()
        return out

    return step_fn(loss, [torch.zeros(1, requires_grad=True)])


def peft_steps(model, batch: dict, l: int, tasks: int) -> dict[str, Callable[[], None]]:
    from peft import MultitaskPromptTuningConfig, PromptTuningConfig, get_peft_model

    seq2seq = model.config.is_encoder_decoder
    d = model.get_input_embeddings().embedding_dim
    task = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    common_kw = dict(task_type=task, num_virtual_tokens=l, token_dim=d, num_transformer_submodules=1)
    pt = get_peft_model(model, PromptTuningConfig(**common_kw))
    mpt = get_peft_model(model, MultitaskPromptTuningConfig(**common_kw, num_tasks=tasks, num_ranks=1,
                                                            prompt_tuning_init="RANDOM"))
    ids, am, labels, ti = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["task_index"]
    T = labels.shape[1]
    if seq2seq:
        full = labels
    else:
        full = torch.full_like(ids, -100)
        full[:, -T:] = labels
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    fns = {"PEFT prompt tuning": step_fn(lambda: pt(input_ids=ids, attention_mask=am, labels=full).loss,
                                         trainable(pt)),
           "PEFT MPT": step_fn(lambda: mpt(input_ids=ids, attention_mask=am, labels=full, task_ids=ti).loss,
                               trainable(mpt))}
    if not seq2seq:
        def ltk():
            logits = mpt(input_ids=ids, attention_mask=am, task_ids=ti, logits_to_keep=T + 1).logits[:, :-1]
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

        fns["PEFT MPT (logits_to_keep)"] = step_fn(ltk, trainable(mpt))
    return fns
