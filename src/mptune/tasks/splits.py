"""The paper's train / dev / test splits, and few-shot sampling.

MPT (Wang et al., 2023) follows ATTEMPT (Asai et al., 2022): the public test sets
of GLUE / SuperGLUE carry no labels, so every task builds its own splits from the
released ``train`` and ``validation`` sets, shuffled with a fixed seed (42):

* ``"small"`` (fewer than 10k training examples): train = train; the validation
  set is shuffled and split in half, first half dev, second half test.
* ``"large"``: 1,000 shuffled training examples are held out as dev, the rest is
  train; the validation set is the test set.
* ``"given"``: the task maps each paper split to a released split (MNLI: dev =
  validation_mismatched, test = validation_matched; PAWS: its own validation and
  test sets).
* ``"auto"``: ``"small"`` when the training set has fewer than 10,000 examples,
  else ``"large"``.

A set released as one file (VADER, BIG-bench, SQuAD-Shifts) first gets a
``validation`` split from :func:`hold_out`: a fixed seeded hold-out of whole
groups, the rest being ``train``; the policies above then apply.

The shuffle is ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``,
exactly as ATTEMPT's ``shuffled_indices``, so the same rows land in dev / test as
in the reference code (for the same raw row order). Derived splits keep that
shuffled order. Tasks whose examples carry a ``group`` (MultiRC: the answer
options of one question) are split by group, so a question never straddles
dev and test.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .records import Example

PAPER_SPLITS = ("train", "dev", "test")
SMALL_LIMIT = 10_000
LARGE_DEV_SIZE = 1_000
POLICIES = ("auto", "small", "large", "given")
HOLDOUT_SEED = 0  # the hold-out of one-file releases: fixed, independent of the run seed


def permutation(n: int, seed: int) -> list[int]:
    """ATTEMPT's shuffle: ``torch.randperm`` with a seeded generator."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randperm(n, generator=g).tolist()


def units(examples: Sequence["Example"]) -> list[list[int]]:
    """Indices of examples grouped into split units (one per group, else one per example)."""
    if not any(ex.group for ex in examples):
        return [[i] for i in range(len(examples))]
    by_group: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_group.setdefault(ex.group or f"#{i}", []).append(i)
    return list(by_group.values())


def cut(examples: Sequence["Example"], first: int | None, seed: int) -> tuple[list, list]:
    """Shuffle the split units and cut after ``first`` units (None: half of them).

    Returns ``(head, rest)`` as example lists in shuffled order.
    """
    groups = units(examples)
    order = permutation(len(groups), seed)
    k = len(groups) // 2 if first is None else first
    if k > len(groups):
        raise ValueError(f"cannot hold out {k} of {len(groups)} examples")
    pick = lambda idx: [examples[i] for u in idx for i in groups[u]]  # noqa: E731
    return pick(order[:k]), pick(order[k:])


def hold_out(examples: Sequence["Example"], size: int) -> tuple[list, list]:
    """(rest, held): about ``size`` examples in whole split units taken in the order of a fixed
    permutation (:data:`HOLDOUT_SEED`; a fifth of the examples when there are fewer than
    ``2 * size``), and the others; both in the original order. ValueError if nothing would
    be left to train on."""
    want = size if len(examples) >= 2 * size else len(examples) // 5
    groups = units(examples)
    taken, held = 0, set()
    for u in permutation(len(groups), HOLDOUT_SEED):  # whole units until the hold-out is full
        if taken >= max(want, 2):
            break
        held.add(u)
        taken += len(groups[u])
    if taken >= len(examples):
        raise ValueError(f"only {len(examples)} rows in {len(groups)} group(s); too few to hold out a "
                         "validation set")
    pick = lambda keep: [examples[i] for i in sorted(i for u in range(len(groups))  # noqa: E731
                                                     if (u in held) == keep for i in groups[u])]
    return pick(False), pick(True)


def subsample(examples: Sequence["Example"], limit: int, seed: int) -> list:
    """The first ``limit`` examples of a seeded shuffle (ATTEMPT's ``n_obs``)."""
    if limit >= len(examples):
        return list(examples)
    return [examples[i] for i in permutation(len(examples), seed)[:limit]]


def paper_sizes(policy: str, raw: dict[str, int], split_map: dict[str, str] | None = None) -> dict:
    """Paper-split sizes from raw split sizes (None where unknown)."""
    t, v = raw.get("train"), raw.get("validation")
    if policy == "auto" and t is not None:
        policy = "small" if t < SMALL_LIMIT else "large"
    if policy == "given":
        return {s: raw.get(r) for s, r in (split_map or {}).items()}
    if policy == "small":
        return {"train": t, "dev": None if v is None else v // 2, "test": None if v is None else v - v // 2}
    if policy == "large":
        return {"train": None if t is None else t - LARGE_DEV_SIZE, "dev": LARGE_DEV_SIZE, "test": v}
    return {"train": t, "dev": None, "test": None}


def few_shot(examples: Sequence["Example"], k: int, seed: int) -> list["Example"]:
    """Seeded k-shot sample: ``k`` per class for classification, ``k`` in total otherwise.

    Examples count as "classification with classes" when their ``label`` is an
    int and they have no per-example ``choices`` (COPA, WinoGrande and ReCoRD
    have choices, so they get ``k`` in total). A class with fewer than ``k``
    examples contributes all of them. The result is deterministic for a given
    ``seed`` and keeps the shuffled order.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    per_class = all(isinstance(ex.label, int) and not isinstance(ex.label, bool) and ex.choices is None
                    for ex in examples)
    if not per_class:
        return [examples[i] for i in order[:k]]
    taken: dict[int, int] = defaultdict(int)
    out = []
    for i in order:
        label = examples[i].label
        if taken[label] < k:
            taken[label] += 1
            out.append(examples[i])
    return out
