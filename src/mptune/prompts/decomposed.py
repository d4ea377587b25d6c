"""MPT's decomposed prompt: P_k = P* ∘ (u_k v_k)  (Wang et al., 2023).

shared P* [l, d] is common to all tasks; each task k owns u_k [l, r] and
v_k [r, d] (rank r; 1 by default, as PEFT's num_ranks), so a task costs
r·(l + d) parameters. forward() returns the whole table [K, l, d]; the
backbone gathers each row's task, so a batch mixing tasks is one pass.

Initialisation of u, v (`task_init`; the paper's could not be checked, see docs/fidelity.md):
* ones (default): u = 1 and v = 1/r, so u_k v_k is exactly the all-ones matrix
  and a fresh prompt starts exactly at P*;
* normal: u, v ~ N(0, 0.02) as PEFT's MultitaskPromptEmbedding
  (peft/tuners/multitask_prompt_tuning/model.py), so P_k starts near 0.
`noise` overrides the std of the normal part (ones: N(0, noise) added to 1 and 1/r).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import UnknownNameError
from .base import PromptMeta

PEFT_TASK_STD = 0.02  # PEFT: torch.normal(mean=0, std=0.02) for prefix_task_cols and prefix_task_rows


class TaskInit(str, Enum):
    """How each task's u_k, v_k start."""

    ones = "ones"  # u_k v_k = 1: P_k = P* exactly
    normal = "normal"  # u, v ~ N(0, 0.02) (PEFT): P_k ≈ 0


class DecomposedPrompt(nn.Module):
    """A PromptModule: shared P* [l, d], task_u [K, l, r], task_v [K, r, d]."""

    kind: ClassVar[str] = "decomposed"
    tensor_ranks: ClassVar[dict[str, int]] = {"shared": 2, "task_u": 3, "task_v": 3}

    def __init__(self, shared: torch.Tensor, tasks: Sequence[str], rank: int = 1,
                 task_u: Optional[torch.Tensor] = None, task_v: Optional[torch.Tensor] = None,
                 task_init: TaskInit = TaskInit.ones, noise: Optional[float] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        l, d = shared.shape
        K = len(tasks)
        if K < 1:
            raise ValueError("a decomposed prompt needs at least one task")
        if len(set(tasks)) != K:
            raise ValueError(f"duplicate task names: {list(tasks)}")
        if not 1 <= rank <= min(l, d):
            raise ValueError(f"rank must be in [1, min(l, d)] = [1, {min(l, d)}], got {rank}")
        self.tasks = list(tasks)
        self.rank = rank
        self.shared = nn.Parameter(shared.detach().clone().float())
        ones = TaskInit(task_init) == TaskInit.ones
        std = (0.0 if ones else PEFT_TASK_STD) if noise is None else noise
        if task_u is None:  # mean (1 or 0) plus N(0, std)
            task_u = torch.full((K, l, rank), 1.0 if ones else 0.0)
            if std:
                task_u = task_u + std * torch.randn(K, l, rank, generator=generator)
        if task_v is None:
            task_v = torch.full((K, rank, d), 1.0 / rank if ones else 0.0)
            if std:
                task_v = task_v + std * torch.randn(K, rank, d, generator=generator)
        if tuple(task_u.shape) != (K, l, rank) or tuple(task_v.shape) != (K, rank, d):
            raise ValueError(f"task_u {tuple(task_u.shape)} / task_v {tuple(task_v.shape)} do not fit "
                             f"K={K}, l={l}, r={rank}, d={d}")
        self.task_u = nn.Parameter(task_u.detach().clone().float())
        self.task_v = nn.Parameter(task_v.detach().clone().float())

    @property
    def length(self) -> int:
        return self.shared.shape[0]

    @property
    def dim(self) -> int:
        return self.shared.shape[1]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_matrices(self) -> torch.Tensor:
        """u_k v_k for every task: [K, l, d]."""
        return torch.bmm(self.task_u, self.task_v)

    def forward(self) -> torch.Tensor:
        """The prompt table [K, l, d]."""
        return self.shared.unsqueeze(0) * self.task_matrices()

    def task_index(self, name: str) -> int:
        try:
            return self.tasks.index(name)
        except ValueError:
            raise UnknownNameError(f"task {name!r} is not in this prompt; it holds {self.tasks}") from None

    def param_groups(self, lr_shared: float, lr_task: float, freeze_shared: bool = False) -> list[dict]:
        """Separate learning rates for P* and for (u, v); P* optionally frozen."""
        self.shared.requires_grad_(not freeze_shared)
        groups = [{"params": [self.task_u, self.task_v], "lr": lr_task}]
        if not freeze_shared:
            groups.insert(0, {"params": [self.shared], "lr": lr_shared})
        return groups

    def trainable_per_task(self) -> int:
        """l·d + r·(l + d): the parameters one task trains (P* and its own u, v)."""
        return self.length * self.dim + self.rank * (self.length + self.dim)

    # -- files ---------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"shared": self.shared.detach().cpu().contiguous(), "task_u": self.task_u.detach().cpu().contiguous(),
                "task_v": self.task_v.detach().cpu().contiguous()}

    def meta(self, backbone: str) -> PromptMeta:
        return PromptMeta(kind=self.kind, backbone=backbone, length=self.length, dim=self.dim,
                          tasks=list(self.tasks), rank=self.rank)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: PromptMeta) -> "DecomposedPrompt":
        return cls(tensors["shared"], meta.tasks, meta.rank, tensors["task_u"], tensors["task_v"])

    @classmethod
    def shapes(cls, meta: PromptMeta) -> Optional[dict[str, tuple[int, ...]]]:
        if meta.rank is None:
            return None
        (l, d), K, r = (meta.length, meta.dim), len(meta.tasks), meta.rank
        return {"shared": (l, d), "task_u": (K, l, r), "task_v": (K, r, d)}

    @classmethod
    def meta_from_tensors(cls, tensors: dict[str, torch.Tensor], backbone: str) -> PromptMeta:
        (l, d), (K, _, r) = tensors["shared"].shape, tensors["task_u"].shape
        return PromptMeta(kind=cls.kind, backbone=backbone, length=l, dim=d, tasks=[f"task{k}" for k in range(K)],
                          rank=r)
