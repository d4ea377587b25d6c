"""Vanilla soft prompt (Lester et al., 2021): l trainable vectors of the model's width."""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
import torch.nn as nn

from .base import PromptMeta


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
