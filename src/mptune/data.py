"""Tokenisation, collation and resumable batch order.

Feature = one tokenised example: source ids, target ids and the index of its
task's prompt row; with train.target_loss=labels also the ids of its label
strings and the gold one's index (collated as extra "choice_*" rows, kinds.py).
Tokenising and collating follow the backbone kind's spec (kinds.py: padding side,
where the target goes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch

from .kinds import ModelKind, spec_for


@dataclass
class Feature:
    source: list[int]
    target: list[int]
    task_index: int = 0
    choices: Optional[list[list[int]]] = None  # every label string's target ids (labels loss only)
    label: Optional[int] = None  # the gold one among them


class TextEncoder:
    """Turns source/target text into token ids for one backbone kind."""

    def __init__(self, tokenizer, kind: ModelKind, max_source_length: int = 256, max_target_length: int = 128):
        self.tok, self.kind, self.spec = tokenizer, ModelKind(kind), spec_for(kind)
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def source(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) > self.max_source_length:  # keep the start (task prefix) and the closing special token(s)
            tail = ids[len(ids) - self.spec.source_tail:]
            ids = ids[: self.max_source_length - len(tail)] + tail
        return ids

    def target(self, text: str) -> list[int]:
        ids = self.tok(self.spec.target_prefix + text, add_special_tokens=False)["input_ids"]
        eos = self.tok.eos_token_id  # EOS ends the answer
        return ids[: self.max_target_length - 1] + [eos]

    def feature(self, source: str, target: str, task_index: int = 0, choices: Optional[Sequence[str]] = None,
                label: Optional[int] = None) -> Feature:
        ids = [self.target(c) for c in choices] if choices is not None else None
        return Feature(self.source(source), self.target(target), task_index, ids, label if ids else None)


class LazyFeatures(Sequence[Feature]):
    """The features of (example, task_index[, label strings]) items, each tokenised on first access and kept.

    A short run over a large train split (SST-2: 67k sentences, 16 steps x 8 used) tokenises
    only the rows its batches touch; iterating tokenises everything (e.g. the teacher cache's
    fingerprint). The result is the same as TextEncoder.feature for every row.
    """

    def __init__(self, items: Sequence[tuple], encoder: TextEncoder):
        self._items, self._enc = list(items), encoder
        self._done: list[Optional[Feature]] = [None] * len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        f = self._done[i]
        if f is None:
            ex, k, *choices = self._items[i]
            choices = choices[0] if choices else None
            f = self._done[i] = self._enc.feature(ex.source, ex.target, k, choices, ex.label if choices else None)
        return f


def collate(features: Sequence[Feature], kind: ModelKind, pad_id: int) -> dict[str, torch.Tensor]:
    """Teacher-forcing batch: input_ids, attention_mask [B, S]; labels [B, T]; task_index [B]."""
    return spec_for(kind).collate(features, pad_id)


def collate_source(features: Sequence[Feature], kind: ModelKind, pad_id: int) -> dict[str, torch.Tensor]:
    """Generation batch: the sources only (padded on the kind's side)."""
    return spec_for(kind).collate_source(features, pad_id)


def collate_choices(features: Sequence[Feature], choices: Sequence[Sequence[list[int]]], kind: ModelKind,
                    pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rank-classification batch: each source once, one label row per (example, choice).
    Returns (batch, row_example [N]); see kinds.KindSpec.collate_choices."""
    batch = spec_for(kind).collate_choices(features, choices, pad_id)
    return batch, batch["row_example"]


# -- batch order ------------------------------------------------------------

class BatchPlan(Protocol):
    """Yields the global batch (indices into the feature list) for every step; resumable."""

    def next(self) -> list[int]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ShuffledBatches:
    """Epochs of a seeded permutation; the order depends only on (seed, epoch, cursor)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("no training examples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._perm: Optional[list[int]] = None

    def _order(self) -> list[int]:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
        return self._perm

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order()
            take = order[self.cursor: self.cursor + self.batch_size - len(out)]
            out += take
            self.cursor += len(take)
            if self.cursor >= self.n:
                self.epoch, self.cursor, self._perm = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._perm = int(state["epoch"]), int(state["cursor"]), None


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (strided, so shares differ by at most one)."""
    return indices[rank::world]


class TaskMixingBatches:
    """Stochastic task sampling (MPT): each step draws K tasks, K uniform in
    [k_min, k_max] (default [2, #tasks]), without replacement by task weight,
    and fills the batch from them in near-equal shares. Weights: n_k^(1/T)
    (T=1: size-proportional; larger T flattens towards uniform).

    Each task walks its own seeded epoch order, so the plan is a pure function
    of (seed, step) and resumes exactly. Indices are global: offsets[k] + local.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, k_min: int = 2,
                 k_max: Optional[int] = None, temperature: float = 1.0):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every task needs examples, got sizes {list(sizes)}")
        K = len(sizes)
        self.k_min = min(max(1, k_min), K)
        self.k_max = min(k_max or K, K)
        if self.k_min > self.k_max:
            raise ValueError(f"sampling.k_min={k_min} > k_max={k_max}")
        self.batch_size, self.seed, self.step = batch_size, seed, 0
        self.offsets = [sum(sizes[:k]) for k in range(K)]
        w = torch.tensor([float(n) for n in sizes]) ** (1.0 / temperature)
        self.weights = w / w.sum()
        self.streams = [ShuffledBatches(n, 1, seed + 7919 * (k + 1)) for k, n in enumerate(sizes)]

    def next(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        self.step += 1
        k = int(torch.randint(self.k_min, self.k_max + 1, (1,), generator=g))
        chosen = sorted(torch.multinomial(self.weights, k, replacement=False, generator=g).tolist())
        out: list[int] = []
        for j, t in enumerate(chosen):
            share = self.batch_size // k + (1 if j < self.batch_size % k else 0)
            out += [self.offsets[t] + self.streams[t].next()[0] for _ in range(share)]
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)
