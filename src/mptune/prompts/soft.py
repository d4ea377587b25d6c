"""Vanilla soft prompt (Lester et al., 2021): l trainable vectors of the model's width."""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
import torch.nn as nn

from ..config import PromptConfig, PromptInit
from .base import PromptMeta


def init_prompt_vectors(cfg: PromptConfig, embeddings: nn.Embedding, tokenizer=None,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Starting vectors [l, d] in the space the model's ``inputs_embeds`` live in."""
    table = embeddings.weight.detach().float().cpu()
    l, (vocab, d) = cfg.length, table.shape
    if cfg.init == PromptInit.vocab:
        # The paper: embeddings of tokens sampled from the 5,000 most common ids.
        ids = torch.randint(0, min(cfg.init_vocab_size, vocab), (l,), generator=generator)
    elif cfg.init == PromptInit.text:
        if tokenizer is None:
            raise ValueError("prompt.init=text needs the backbone's tokenizer")
        ids = torch.tensor(tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"prompt.init_text {cfg.init_text!r} tokenises to nothing")
        ids = ids.repeat((l + ids.numel() - 1) // ids.numel())[:l]
    elif cfg.init == PromptInit.prompts:
        from .io import load_prompt

        prompts = [load_prompt(p, dim=d, kind="soft")[0]["prompt"] for p in cfg.init_from]
        if any(p.shape[0] != l for p in prompts):
            raise ValueError(f"prompt.init_from: prompts have lengths {[p.shape[0] for p in prompts]}, "
                             f"prompt.length is {l}")
        return torch.stack(prompts).mean(0)
    else:
        return torch.randn(l, d, generator=generator) * table.std()
    # Go through the module so embedding-side scaling (Gemma 3) is applied as for real text.
    with torch.no_grad():
        return embeddings(ids.to(embeddings.weight.device)).float().cpu()


class SoftPrompt(nn.Module):
    """One prompt P [l, d] (a PromptModule); forward() returns the prompt table [1, l, d].

    `tasks` names the task it was trained for ([] if unknown); it serves any task (row 0).
    """

    kind: ClassVar[str] = "soft"
    tensor_ranks: ClassVar[dict[str, int]] = {"prompt": 2}

    def __init__(self, length: int, dim: int, init: Optional[torch.Tensor] = None,
                 tasks: Sequence[str] = ()):
        super().__init__()
        w = torch.zeros(length, dim) if init is None else init.detach().clone().float()
        if w.shape != (length, dim):
            raise ValueError(f"prompt init has shape {tuple(w.shape)}, expected ({length}, {dim})")
        self.weight = nn.Parameter(w)
        self.tasks = list(tasks)

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    num_tasks = 1

    def forward(self) -> torch.Tensor:
        return self.weight.unsqueeze(0)

    def task_index(self, name: str) -> int:
        return 0  # one prompt: whatever the task (e.g. a prompt evaluated on a related task)

    # -- files ---------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.weight.detach().cpu().contiguous()}

    def meta(self, backbone: str) -> PromptMeta:
        return PromptMeta(kind=self.kind, backbone=backbone, length=self.length, dim=self.dim, tasks=list(self.tasks))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: PromptMeta) -> "SoftPrompt":
        return cls(meta.length, meta.dim, tensors["prompt"], meta.tasks)

    @classmethod
    def shapes(cls, meta: PromptMeta) -> dict[str, tuple[int, ...]]:
        return {"prompt": (meta.length, meta.dim)}

    @classmethod
    def meta_from_tensors(cls, tensors: dict[str, torch.Tensor], backbone: str) -> PromptMeta:
        l, d = tensors["prompt"].shape
        return PromptMeta(kind=cls.kind, backbone=backbone, length=l, dim=d)
