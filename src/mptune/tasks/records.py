"""The plain records tasks produce: the kind of task and one text-to-text example.

Below :mod:`.base` and :mod:`.loading`, so both can use them without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class TaskKind(str, Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    GENERATION = "generation"


@dataclass
class Example:
    source: str  # templated model input
    target: str  # gold target text for teacher forcing ("" when unlabeled)
    label: Any = None  # class index (classification), float (regression), None (generation)
    answers: list[str] | None = None  # all gold answers (QA, ReCoRD)
    choices: list[str] | None = None  # per-example options (ReCoRD entities, COPA, WinoGrande)
    group: str | None = None  # metric grouping key (MultiRC question)
    uid: str = ""  # "path:line" for files, "hub/config:split:index" for Hub rows
    task: str = ""
