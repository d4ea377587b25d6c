"""Losses as small modules. Every loss returns one value per example [B], so a
mixed-task batch can be checked against single-task batches and the Trainer
can average over the global batch. DistillLoss composes MPT's source-training
objective L_PLM + λ (L_logits + L_hidden) from the terms.

`token_reduction` (mean | sum) says how a term reduces over an example's target
tokens (train.token_reduction); HiddenMSE's `d_reduction` how the squared error
reduces over the hidden size d (distill.hidden_reduction). Sums are the paper
preset's (issue #18 quotes L_hidden = Σ (H_s − H_t)²; not checked against the
paper's text, see docs/fidelity.md); means are the default.

`target_loss` (vocab | labels) says what L_PLM is the likelihood of (train.target_loss):
the target tokens over the whole vocabulary, or, for examples whose batch carries label
rows (classification tasks), the gold label among the label strings (:func:`label_nll`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import IGNORE, LabelScores, TargetOutput
from .config import Reduction, TargetLoss


def _mask(labels: torch.Tensor) -> torch.Tensor:
    return (labels != IGNORE).float()


def _per_example(x: torch.Tensor, mask: torch.Tensor, how: Reduction) -> torch.Tensor:
    """x, mask [B, T] -> [B]: sum or mean over each row's target tokens."""
    total = (x * mask).sum(-1)
    return total if how == Reduction.sum else total / mask.sum(-1).clamp(min=1.0)


def label_nll(scores: LabelScores, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the gold label among each example's label strings: -log softmax_c(s_c)[gold],
    s_c = the label's summed token log-prob. Returns the loss [n] and which examples have label rows [n]
    (the loss is 0 where they have none)."""
    s, e, gold = scores.logprob.float(), scores.example, scores.gold.bool()
    has = torch.zeros(n, dtype=torch.bool, device=s.device).index_fill(0, e, True)
    m = s.new_full((n,), float("-inf")).scatter_reduce(0, e, s.detach(), "amax")  # per-example max, for stability
    m = torch.where(has, m, torch.zeros_like(m))
    z = s.new_zeros(n).index_add(0, e, (s - m[e]).exp())
    lse = m + z.clamp(min=torch.finfo(s.dtype).tiny).log()  # logsumexp over each example's rows
    return torch.where(has, lse - s.new_zeros(n).index_add(0, e[gold], s[gold]), torch.zeros_like(lse)), has


class TokenNLL(nn.Module):
    """L_PLM: negative log-likelihood of the target tokens, per example (their mean or sum); under
    target_loss=labels, of the gold label among the label strings for examples with label rows.

    out.logits [B, T, V], out.labels [B, T] (out.label_scores: N label rows) -> [B]
    """

    def __init__(self, token_reduction: Reduction = Reduction.mean, target_loss: TargetLoss = TargetLoss.vocab):
        super().__init__()
        self.reduction, self.target_loss = Reduction(token_reduction), TargetLoss(target_loss)

    @property
    def needs_vocab(self) -> bool:
        """Whether the vocabulary logits are read for examples with label rows (Backbone.forward's `vocab`)."""
        return self.target_loss == TargetLoss.vocab

    def forward(self, out: TargetOutput) -> torch.Tensor:
        labels = out.labels
        restricted = self.target_loss == TargetLoss.labels and out.label_scores is not None
        if out.logits is None:  # Backbone.forward(vocab=False) with label rows for every example
            if not restricted:
                raise ValueError("TokenNLL: no vocabulary logits, and no label scores to use instead")
            return label_nll(out.label_scores, labels.shape[0])[0]
        nll = F.cross_entropy(out.logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")  # [B, T]
        nll = _per_example(nll, _mask(labels), self.reduction)
        if restricted:
            label, has = label_nll(out.label_scores, nll.shape[0])
            nll = torch.where(has, label, nll)
        return nll


def _kl(p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log s_v) over the last dim, from log-probs p (teacher) and s (student)."""
    return (p.exp() * (p - s)).sum(-1)


class LogitKL(nn.Module):
    """L_logits: KL(teacher || student) of the output distributions at target positions,
    with temperature T and the usual T^2 factor (Hinton et al.), per example (mean or sum over tokens).

    student, teacher logits [B, T, V]; labels [B, T] -> [B]
    """

    def __init__(self, temperature: float = 1.0, token_reduction: Reduction = Reduction.mean):
        super().__init__()
        self.temperature, self.reduction = temperature, Reduction(token_reduction)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        s = F.log_softmax(student.float() / t, dim=-1)
        p = F.log_softmax(teacher.float() / t, dim=-1)
        return _per_example(_kl(p, s), _mask(labels), self.reduction) * t * t


class TopKLogitKL(nn.Module):
    """L_logits against a stored teacher (teacher_cache): its log-probs at temperature T, either of
    the whole vocabulary or of its top-k tokens plus the mass outside them. With the top-k, the KL is
    taken between the two distributions coarsened to k + 1 outcomes (those tokens and "the rest"):

        KL_k = sum_{v in topk} p_v (log p_v - log s_v) + p_rest (log p_rest - log s_rest),

    s_rest being the student's mass outside the teacher's top-k. KL_k equals the full KL when the
    teacher puts no mass outside its top-k (k = V in particular) and is never larger (data processing
    inequality): a lower bound, tight for peaked teachers. Full storage gives LogitKL exactly; tokens
    reduce as in LogitKL (`token_reduction`).

    student logits [B, T, V]; logp [B, T, k] (k = V: full); index [B, T, k] token ids of logp, or None
    when logp is the full vocabulary in order; log_rest [B, T] log of the teacher's remaining mass
    (None with index None); labels [B, T] -> [B]
    """

    def __init__(self, temperature: float = 1.0, token_reduction: Reduction = Reduction.mean):
        super().__init__()
        self.temperature, self.reduction = temperature, Reduction(token_reduction)

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
        return _per_example(kl, _mask(labels), self.reduction) * t * t


class HiddenMSE(nn.Module):
    """L_hidden: squared error between student and teacher hidden states at the target positions,
    per example: reduced over the hidden size d (`d_reduction`), then over the tokens (`token_reduction`).
    mean/mean is the MSE; sum/sum is Σ (H_s − H_t)², d × (tokens) times larger.

    student, teacher [B, T, d]; labels [B, T] -> [B]
    """

    def __init__(self, token_reduction: Reduction = Reduction.mean, d_reduction: Reduction = Reduction.mean):
        super().__init__()
        self.reduction, self.d_reduction = Reduction(token_reduction), Reduction(d_reduction)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        se = (student.float() - teacher.float()).pow(2)  # [B, T, d]
        se = se.sum(-1) if self.d_reduction == Reduction.sum else se.mean(-1)  # [B, T]
        return _per_example(se, _mask(labels), self.reduction)


class DistillLoss(nn.Module):
    """MPT source training (Wang et al., 2023), per example:

        L = L_PLM + λ (L_logits + L_hidden)

    L_PLM is TokenNLL of the student (train.target_loss); L_logits is LogitKL against a live teacher pass (a
    TargetOutput) or TopKLogitKL against stored teacher log-probs (anything with logp, index,
    log_rest: teacher_cache.CachedTeacher); L_hidden is HiddenMSE at the target positions, or at the
    source positions when `source_mask` [B, S] (1 = text token) is given. Returns the loss [B] and
    each term [B] ("plm", "kl", "hidden") for logging. Every term reduces over tokens by
    `token_reduction`; L_hidden over d by `hidden_reduction`.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, logits: bool = True, hidden: bool = True,
                 token_reduction: Reduction = Reduction.mean, hidden_reduction: Reduction = Reduction.mean,
                 target_loss: TargetLoss = TargetLoss.vocab):
        super().__init__()
        self.weight, self.logits, self.hidden = weight, logits, hidden
        tr = token_reduction
        self.nll = TokenNLL(tr, target_loss)
        self.kl, self.stored_kl = LogitKL(temperature, tr), TopKLogitKL(temperature, tr)
        self.mse = HiddenMSE(tr, hidden_reduction)

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
