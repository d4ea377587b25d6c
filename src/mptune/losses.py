"""Losses as small modules. Every loss returns one value per example [B], so a
mixed-task batch can be checked against single-task batches and the Trainer
can average over the global batch. DistillLoss composes MPT's source-training
objective L_PLM + λ (L_logits + L_hidden) from the terms.
"""

from __future__ import annotations

from typing import Optional

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


def _kl(p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log s_v) over the last dim, from log-probs p (teacher) and s (student)."""
    return (p.exp() * (p - s)).sum(-1)


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
        return _per_example_mean(_kl(p, s), _mask(labels)) * t * t


class TopKLogitKL(nn.Module):
    """L_logits against a stored teacher (teacher_cache): its log-probs at temperature T, either of
    the whole vocabulary or of its top-k tokens plus the mass outside them. With the top-k, the KL is
    taken between the two distributions coarsened to k + 1 outcomes (those tokens and "the rest"):

        KL_k = sum_{v in topk} p_v (log p_v - log s_v) + p_rest (log p_rest - log s_rest),

    s_rest being the student's mass outside the teacher's top-k. KL_k equals the full KL when the
    teacher puts no mass outside its top-k (k = V in particular) and is never larger (data processing
    inequality): a lower bound, tight for peaked teachers. Full storage gives LogitKL exactly.

    student logits [B, T, V]; logp [B, T, k] (k = V: full); index [B, T, k] token ids of logp, or None
    when logp is the full vocabulary in order; log_rest [B, T] log of the teacher's remaining mass
    (None with index None); labels [B, T] -> [B]
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, logp: torch.Tensor, labels: torch.Tensor,
                index: Optional[torch.Tensor] = None, log_rest: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = self.temperature
        s = F.log_softmax(student.float() / t, dim=-1)
        if index is None:
            kl = _kl(logp, s)  # the same operations as LogitKL
        else:
            kl = _kl(logp, s.gather(-1, index))
            s_rest = s.scatter(-1, index, float("-inf")).logsumexp(-1)
            p_rest = log_rest.exp()
            term = p_rest * (log_rest - s_rest)
            kl = kl + torch.where(p_rest > 0, term, torch.zeros_like(term))  # 0 * log 0 = 0
        return _per_example_mean(kl, _mask(labels)) * t * t


class HiddenMSE(nn.Module):
    """L_hidden: mean squared error between student and teacher hidden states at the
    target positions, averaged over the hidden size, per example.

    student, teacher [B, T, d]; labels [B, T] -> [B]
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        se = (student.float() - teacher.float()).pow(2).mean(-1)  # [B, T]
        return _per_example_mean(se, _mask(labels))


class DistillLoss(nn.Module):
    """MPT source training (Wang et al., 2023, §3.2), per example:

        L = L_PLM + λ (L_logits + L_hidden)

    L_PLM is TokenNLL of the student; L_logits is LogitKL against a live teacher pass (a
    TargetOutput) or TopKLogitKL against stored teacher log-probs (anything with logp, index,
    log_rest: teacher_cache.CachedTeacher); L_hidden is HiddenMSE at the target positions, or at the
    source positions when `source_mask` [B, S] (1 = text token) is given. Returns the loss [B] and
    each term [B] ("plm", "kl", "hidden") for logging.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, logits: bool = True, hidden: bool = True):
        super().__init__()
        self.weight, self.logits, self.hidden = weight, logits, hidden
        self.nll, self.kl, self.stored_kl, self.mse = (TokenNLL(), LogitKL(temperature), TopKLogitKL(temperature),
                                                       HiddenMSE())

    def forward(self, student: TargetOutput, teacher=None,
                source_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        plm = self.nll(student)
        terms = {"plm": plm}
        if teacher is None:  # no distillation: the task loss alone
            return plm, terms
        extra = torch.zeros_like(plm)
        labels = student.labels
        if self.logits:
            if isinstance(teacher, TargetOutput):
                terms["kl"] = self.kl(student.logits, teacher.logits, labels)
            else:
                terms["kl"] = self.stored_kl(student.logits, teacher.logp, labels, teacher.index, teacher.log_rest)
            extra = extra + terms["kl"]
        if self.hidden:
            if source_mask is None:
                terms["hidden"] = self.mse(student.hidden, teacher.hidden, labels)
            else:  # text positions; pads excluded through the mask
                terms["hidden"] = self.mse(student.source_hidden, teacher.source_hidden,
                                           source_mask.masked_fill(source_mask == 0, IGNORE))
            extra = extra + terms["hidden"]
        return plm + self.weight * extra, terms
