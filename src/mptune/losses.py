"""Losses as small modules. Every loss returns one value per example [B], so a
mixed-task batch can be checked against single-task batches and the Trainer
can average over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import IGNORE, TargetOutput


def _mask(labels: torch.Tensor) -> torch.Tensor:
    return (labels != IGNORE).float()


def _per_example_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x, mask [B, T] -> [B]: mean over each row's target tokens."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


class TokenNLL(nn.Module):
    """L_PLM: mean negative log-likelihood of the target tokens, per example.

    out.logits [B, T, V], out.labels [B, T] -> [B]
    """

    def forward(self, out: TargetOutput) -> torch.Tensor:
        logits, labels = out.logits.float(), out.labels
        nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")  # [B, T]
        return _per_example_mean(nll, _mask(labels))


class LogitKL(nn.Module):
    """L_logits: KL(teacher || student) of the output distributions at target positions,
    with temperature T and the usual T^2 factor (Hinton et al.), per example.

    student, teacher logits [B, T, V]; labels [B, T] -> [B]
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        s = F.log_softmax(student.float() / t, dim=-1)
        p = F.log_softmax(teacher.float() / t, dim=-1)
        kl = (p.exp() * (p - s)).sum(-1)  # [B, T]
        return _per_example_mean(kl, _mask(labels)) * t * t


class HiddenMSE(nn.Module):
    """L_hidden: mean squared error between student and teacher hidden states at the
    target positions, averaged over the hidden size, per example.

    student, teacher [B, T, d]; labels [B, T] -> [B]
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        se = (student.float() - teacher.float()).pow(2).mean(-1)  # [B, T]
        return _per_example_mean(se, _mask(labels))
