"""Text formats: how a task's rows become (source, target) text, chosen by name (``data.format``).

* ``t5``: the task record's own ``template`` / ``label_words`` / ``prepare`` (T5's text-to-text formats
  for the paper tasks).
* ``attempt``: ATTEMPT's ``attempt/data/tasks.py`` (Asai et al., 2022), line by line in docs/fidelity.md:
  ``"<ATTEMPT task name> field: value ..."`` and the class index as the label string.
* ``natural``: plain instructions for decoder-only (instruct) models, e.g. ``sentence: {sentence}\\nsentiment:``.
  Label words carry no leading space: a causal backbone's target already continues the source after
  one (``kinds.KindSpec.target_prefix``), so ``positive`` is scored as the tokens of `` positive``.

A task lists its other formats in ``Task.formats`` (name -> :class:`Format`); :meth:`Task.with_format`
applies one when a run resolves its tasks, so training, evaluation, predict, export and serve read one
record. A task without the chosen format keeps t5 (logged once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import regex

from ..config import TextFormat
from .records import TaskKind

NAMES = tuple(f.value for f in TextFormat)
DEFAULT = TextFormat.t5.value  # the record's own fields


@dataclass(frozen=True)
class Format:
    """One text format of a task; ``None`` fields keep the task record's value.

    ``prepare``: ``row -> row`` replacing the task's (``no_prepare`` drops it); ``kind``: a different
    task kind (ATTEMPT's ReCoRD is generation); ``value_text``: a regression value -> its target text;
    ``per_answer``: train on one example per gold answer (ATTEMPT's ReCoRD).
    """

    template: str
    label_words: tuple[str, ...] | None = None
    prepare: Callable[[dict], dict] | None = None
    kind: TaskKind | None = None
    value_text: Callable[[float], str] | None = None
    per_answer: bool = False

    def __post_init__(self):
        if self.label_words is not None:
            object.__setattr__(self, "label_words", tuple(str(w) for w in self.label_words))


def no_prepare(row: dict) -> dict:
    """A format's prepare that leaves the row as it is (drops the task's own hook)."""
    return row


def attempt(template: str, n_labels: int = 0, **kw) -> Format:
    """An ATTEMPT format: its source template, and labels "0" .. "n-1" (``str(example['label'])``)."""
    return Format(template, tuple(str(i) for i in range(n_labels)) or None, **kw)


def pad_punctuation(text: str) -> str:
    """T5's ``_pad_punctuation`` as ATTEMPT re-implements it (``utils/utils.py:188-198``): a space either
    side of every character that is not ``_``, whitespace, a number, letter or mark; whitespace runs -> one space."""
    return regex.sub(r"\s+", " ", regex.sub(r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ", str(text)))


def stsb_value_text(value: float) -> str:
    """ATTEMPT's STS-B target (``data/utils.py:4-17``): ``np.round((label * 5) / 5, decimals=1)``, i.e. to
    0.1 (its docstring says 0.2; T5 rounds to 0.2)."""
    return str(np.round((value * 5) / 5, decimals=1))
