"""One spec per backbone kind: how its batches are laid out (read by data.py and backbone.py).

* seq2seq (T5, Flan-T5): encoder input = [prompt ; source], right-padded; the decoder
  predicts the target (labels [B, T], right-padded with IGNORE).
* causal (Llama, SmolLM2, Gemma, Qwen, GPT-2): one row = [prompt ; pad* ; source ; target],
  *left*-padded, so the prompt sits at positions 0..l-1, the targets are the last tokens of
  every row (labels [B, T] left-padded with IGNORE, aligned with the row's end) and position
  ids (cumsum of the mask) continue from l. Under causal attention the prompt's keys/values
  then do not depend on the input: the shared-prefix fast path (fastpath.py) rests on that.

Rank classification has one layout for both kinds: the sources once per example
(input_ids/attention_mask [B, S], padded like any source, task_index [B]) and one label row
per (example, choice): labels [N, T] right-padded with IGNORE, row_example [N].

The label-restricted loss (train.target_loss=labels) adds to a teacher-forcing batch one
teacher-forcing row per (example, label string), under "choice_" keys (:func:`label_rows`),
with choice_example [N] (the row's example) and choice_gold [N] (1 on the gold label's row).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .data import Feature

IGNORE = -100  # label id of positions without a target
CHOICE = "choice_"  # key prefix of a teacher-forcing batch's label rows


class ModelKind(str, Enum):
    SEQ2SEQ = "seq2seq"
    CAUSAL = "causal"


def pad(seqs: Sequence[list[int]], value: int, left: bool) -> torch.Tensor:
    """[len(seqs), longest] long tensor, each row padded with `value` on the left or right."""
    n = max((len(s) for s in seqs), default=0)
    rows = [([value] * (n - len(s)) + list(s)) if left else (list(s) + [value] * (n - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long).reshape(len(seqs), n)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded [prompt ; text] mask [B, P]: cumsum of the mask, as transformers'
    generate() computes them (pads get a dummy position)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of log p(label): logits [N, T, V], labels [N, T] -> [N]."""
    lp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    tok = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1)


@dataclass(frozen=True)
class KindSpec:
    """The layout of one model kind. Every kind-dependent layout decision reads one of these fields."""

    kind: ModelKind
    left_pad: bool
    """Pad rows (and teacher-forcing labels) on the left: targets end every row, the prompt keeps offset 0."""
    target_in_row: bool
    """The target continues the source in the same row (decoder-only) instead of feeding a decoder."""
    target_prefix: str
    """Text put before a target when tokenising it (causal: the answer continues the source after a space)."""
    source_tail: int
    """Closing special tokens kept when a long source is cut (T5 keeps its EOS)."""
    prompt_independent_of_input: bool
    """Causal attention: the prompt's states do not depend on the input, so its keys/values can be computed
    once and reused (fastpath.py). False for encoders, which are bidirectional."""

    def _sources(self, rows: Sequence[list[int]], task_index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        return {"input_ids": pad(rows, pad_id, self.left_pad),
                "attention_mask": pad([[1] * len(r) for r in rows], 0, self.left_pad),
                "task_index": torch.tensor(list(task_index), dtype=torch.long)}

    def collate(self, features: Sequence["Feature"], pad_id: int) -> dict[str, torch.Tensor]:
        """Teacher-forcing batch: input_ids, attention_mask [B, S]; labels [B, T]; task_index [B]; plus the
        label rows of features that carry label strings (module docs)."""
        batch = self._collate([f.source for f in features], [f.target for f in features],
                              [f.task_index for f in features], pad_id)
        rows = [(b, j, f) for b, f in enumerate(features) if f.choices for j in range(len(f.choices))]
        if rows:
            sub = self._collate([f.source for _, _, f in rows], [f.choices[j] for _, j, f in rows],
                                [f.task_index for _, _, f in rows], pad_id)
            batch.update({CHOICE + k: v for k, v in sub.items()})
            batch[CHOICE + "example"] = torch.tensor([b for b, _, _ in rows], dtype=torch.long)
            batch[CHOICE + "gold"] = torch.tensor([int(j == f.label) for _, j, f in rows], dtype=torch.long)
        return batch

    def _collate(self, sources: Sequence[list[int]], targets: Sequence[list[int]], task_index: Sequence[int],
                 pad_id: int) -> dict[str, torch.Tensor]:
        rows = [s + t if self.target_in_row else s for s, t in zip(sources, targets)]
        batch = self._sources(rows, task_index, pad_id)
        batch["labels"] = pad(targets, IGNORE, self.left_pad)
        return batch

    def collate_source(self, features: Sequence["Feature"], pad_id: int) -> dict[str, torch.Tensor]:
        """Generation batch: the sources only, input_ids/attention_mask [B, S], task_index [B]."""
        return self._sources([f.source for f in features], [f.task_index for f in features], pad_id)

    def collate_choices(self, features: Sequence["Feature"], choices: Sequence[Sequence[list[int]]],
                        pad_id: int) -> dict[str, torch.Tensor]:
        """Rank-classification batch: the sources once ([B, S], task_index [B]) and one label row per
        (example, choice): labels [N, T] right-padded with IGNORE, row_example [N]."""
        batch = self.collate_source(features, pad_id)
        batch["labels"] = pad([c for ch in choices for c in ch], IGNORE, left=False)
        batch["row_example"] = torch.tensor([i for i, ch in enumerate(choices) for _ in ch], dtype=torch.long)
        return batch

    def choice_rows(self, batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
        """A choices batch as a teacher-forcing batch of N rows (source of row_example[r] ; choice r)."""
        src = [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
        ex, tasks = batch["row_example"].tolist(), batch["task_index"].tolist()
        return self._collate([src[e] for e in ex], [lab[lab != IGNORE].tolist() for lab in batch["labels"]],
                             [tasks[e] for e in ex], pad_id)


SPECS = {
    ModelKind.SEQ2SEQ: KindSpec(ModelKind.SEQ2SEQ, left_pad=False, target_in_row=False, target_prefix="",
                                source_tail=1, prompt_independent_of_input=False),
    ModelKind.CAUSAL: KindSpec(ModelKind.CAUSAL, left_pad=True, target_in_row=True, target_prefix=" ",
                               source_tail=0, prompt_independent_of_input=True),
}


def label_rows(batch: dict) -> dict | None:
    """The teacher-forcing batch of a batch's label rows (input_ids, attention_mask, labels, task_index
    of every (example, label string) row), or None when it has none."""
    keys = ("input_ids", "attention_mask", "labels", "task_index")
    return {k: batch[CHOICE + k] for k in keys} if CHOICE + "labels" in batch else None


def spec_for(kind: ModelKind | str) -> KindSpec:
    return SPECS[ModelKind(kind)]
