"""Task metrics, all on the paper's 0..100 scale.

Every metric is registered in :data:`METRICS` under its name together with the
kind of input it takes:

* ``"label"``  ``fn(preds: list[int], golds: list[int])`` -- class indices; an
  invalid prediction is ``-1`` (see :func:`fix_invalid`).
* ``"value"``  ``fn(preds: list[float], golds: list[float])`` -- regression.
* ``"text"``   ``fn(preds: list[str], golds: list[list[str]])`` -- max over the
  gold answers (SQuAD, MRQA, ReCoRD).
* ``"group"``  ``fn(preds: list[int], golds: list[int], groups: list[str])`` --
  MultiRC (answer options grouped by question).

:func:`score` scores a task's predictions with all its metrics: classification
-> ``int`` index into ``task.choices(ex)`` (rank classification) or the generated
``str``, matched against the choices by ``match`` (:func:`choice_index`; no match
is wrong); generation -> the generated ``str``; regression -> the generated ``str``
parsed as T5 does (unparsable -> ``-1.0``) or a number. It adds ``invalid_rate``:
the % of predictions the task cannot read (a label matching no choice, a number
that does not parse; 0 for rank classification and for generation tasks).

scikit-learn / scipy compute accuracy, F1, macro-F1, Matthews correlation,
Pearson and Spearman; the SQuAD normalisation, EM and F1 follow the official
SQuAD v1.1 evaluation script (ReCoRD's official script uses the same ones).
"""

from __future__ import annotations

import math
import numbers
import re
import string
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from ..config import Match

if TYPE_CHECKING:
    from .base import Task
    from .records import Example


def fix_invalid(preds: list[int], golds: list[int]) -> list[int]:
    """Replace invalid predictions (-1: unparsable / unknown label) by a wrong label.

    For binary tasks the wrong label is ``1 - gold`` (as T5 / ATTEMPT's
    ``f1_score_with_invalid``); for more classes ``-1`` is kept, which counts as
    an error for accuracy and as an extra class for Matthews correlation.
    """
    binary = set(golds) <= {0, 1}
    return [(1 - g if binary else -1) if (p is None or p < 0) else int(p) for p, g in zip(preds, golds)]


def _check(preds, golds) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("no examples to score")


def accuracy(preds: list[int], golds: list) -> float:
    _check(preds, golds)
    return 100.0 * float(np.mean([p == g for p, g in zip(preds, golds)]))


def f1(preds: list[int], golds: list[int]) -> float:
    """Binary F1 of the positive class (label 1)."""
    _check(preds, golds)
    return 100.0 * float(skm.f1_score(golds, fix_invalid(preds, golds), pos_label=1,
                                      average="binary", zero_division=0))


def macro_f1(preds: list[int], golds: list[int]) -> float:
    """Unweighted mean of the per-class F1 over the gold classes (CB)."""
    _check(preds, golds)
    labels = sorted(set(golds))
    return 100.0 * float(skm.f1_score(golds, fix_invalid(preds, golds), labels=labels,
                                      average="macro", zero_division=0))


def matthews(preds: list[int], golds: list[int]) -> float:
    _check(preds, golds)
    preds = fix_invalid(preds, golds)
    if len(set(golds) | set(preds)) < 2:
        return 0.0  # undefined for a single class (sklearn's value, without its warning)
    return 100.0 * float(skm.matthews_corrcoef(golds, preds))


def _corr(fn, preds, golds) -> float:
    _check(preds, golds)
    p, g = np.asarray(preds, dtype=float), np.asarray(golds, dtype=float)
    if len(p) < 2 or np.all(p == p[0]) or np.all(g == g[0]):
        return 0.0  # undefined for constant input; 0 keeps "best dev score" comparisons sane
    r = float(fn(p, g)[0])
    return 0.0 if math.isnan(r) else 100.0 * r


def pearson(preds: list[float], golds: list[float]) -> float:
    """Pearson correlation x 100 (0 when either side is constant)."""
    return _corr(stats.pearsonr, preds, golds)


def spearman(preds: list[float], golds: list[float]) -> float:
    """Spearman rank correlation x 100 (0 when either side is constant)."""
    return _corr(stats.spearmanr, preds, golds)


# --- SQuAD (official v1.1 evaluation script semantics) ---------------------------------

def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, articles (a/an/the) and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match_score(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    """Token-level F1 between normalised answers (SQuAD v1.1)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _max_over(fn, preds: list[str], golds: list[list[str]]) -> float:
    _check(preds, golds)
    total = 0.0
    for pred, answers in zip(preds, golds):
        if not answers:
            raise ValueError("an example has no gold answers (unlabeled split?)")
        total += max(fn(pred or "", a) for a in answers)
    return 100.0 * total / len(golds)


def squad_em(preds: list[str], golds: list[list[str]]) -> float:
    """Exact match, max over the gold answers."""
    return _max_over(exact_match_score, preds, golds)


def squad_f1(preds: list[str], golds: list[list[str]]) -> float:
    """Token F1, max over the gold answers."""
    return _max_over(f1_score, preds, golds)


# --- MultiRC ---------------------------------------------------------------------------

def multirc_em(preds: list[int], golds: list[int], groups: list[str]) -> float:
    """Share of questions whose answer options are *all* labelled correctly."""
    _check(preds, golds)
    ok: dict[str, bool] = defaultdict(lambda: True)
    for p, g, q in zip(preds, golds, groups):
        ok[q] = ok[q] and p == g
    return 100.0 * sum(ok.values()) / len(ok)


def multirc_f1a(preds: list[int], golds: list[int], groups: list[str] | None = None) -> float:
    """F1a: binary F1 over all answer options of all questions."""
    return f1(preds, golds)


METRICS: dict[str, tuple[Callable[..., float], str]] = {
    "accuracy": (accuracy, "label"),
    "f1": (f1, "label"),
    "macro_f1": (macro_f1, "label"),
    "matthews": (matthews, "label"),
    "pearson": (pearson, "value"),
    "spearman": (spearman, "value"),
    "squad_em": (squad_em, "text"),
    "squad_f1": (squad_f1, "text"),
    "record_em": (squad_em, "text"),  # ReCoRD's official script = SQuAD normalisation, max over answers
    "record_f1": (squad_f1, "text"),
    "multirc_em": (multirc_em, "group"),
    "multirc_f1a": (multirc_f1a, "group"),
}


# metrics that are a mean over examples: the score of any subset is the mean of its examples' scores
EXAMPLE_MEAN = frozenset({"accuracy", "squad_em", "squad_f1", "record_em", "record_f1"})


def example_scores(task: "Task", examples: list["Example"], predictions: list,
                   match: Match = Match.lenient) -> list[float] | None:
    """Each example's ``score`` on its own, when every metric of ``task`` is a mean over examples (so a
    bootstrap resample's score is the mean of its examples' scores, no recomputation); None otherwise
    (e.g. Matthews correlation, F1 over a label set)."""
    if not set(task.metrics) | set(task.score_metrics or ()) <= EXAMPLE_MEAN:
        return None
    return [score(task, [ex], [p], match)["score"] for ex, p in zip(examples, predictions)]


def string_to_float(s: str, default: float | None = -1.0) -> float | None:
    """Parse a generated number as T5 does: unparsable text -> ``default`` (-1)."""
    try:
        return float(str(s).strip())
    except ValueError:
        return default


def score(task: "Task", examples: list["Example"], predictions: list,
          match: Match = Match.lenient) -> dict[str, float]:
    """Every metric of ``task`` (0..100), ``score`` (the mean of its ``score_metrics``) and ``invalid_rate``."""
    inputs, invalid = _inputs(task, examples, predictions, match)
    out = {m: float(METRICS[m][0](*inputs[METRICS[m][1]])) for m in task.metrics}
    used = task.score_metrics or task.metrics
    out["score"] = sum(out[m] if m in out else METRICS[m][0](*inputs[METRICS[m][1]]) for m in used) / len(used)
    out["invalid_rate"] = 100.0 * sum(invalid) / len(invalid)
    return out


def _inputs(task: "Task", examples: list["Example"], predictions: list, match: Match) -> tuple[dict, list[bool]]:
    """(input kind -> the metric functions' arguments, which predictions are invalid)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{task.name}: {len(predictions)} predictions for {len(examples)} examples")
    kind = task.kind.value
    if kind in ("classification", "regression") and any(ex.label is None for ex in examples):
        raise ValueError(f"{task.name}: cannot score unlabeled examples")
    golds = [ex.label for ex in examples]
    invalid = [False] * len(predictions)
    if kind == "classification":
        idx = [choice_index(task.choices(ex) or [], p, match) for ex, p in zip(examples, predictions)]
        texts = [task.choices(ex)[i] if i >= 0 else (p if isinstance(p, str) else "")
                 for ex, i, p in zip(examples, idx, predictions)]
        invalid = [i < 0 for i in idx]
        inputs = {"label": (idx, golds), "group": (idx, golds, [ex.group for ex in examples]),
                  "text": (texts, [ex.answers or [ex.target] for ex in examples])}
    elif kind == "regression":
        values = [float(p) if isinstance(p, numbers.Number) else string_to_float(p, None) for p in predictions]
        invalid = [v is None for v in values]
        inputs = {"value": ([-1.0 if v is None else v for v in values], golds)}
    else:
        answers = [ex.answers or ([ex.target] if ex.target else []) for ex in examples]
        inputs = {"text": (["" if p is None else str(p) for p in predictions], answers)}
    return inputs, invalid


# --- text-free records: rescore any subset of a run's examples without their texts ------

def example_record(task: "Task", examples: list["Example"], predictions: list,
                   match: Match = Match.lenient) -> dict:
    """A run's predictions as numbers that rescore any subset of its examples (a bootstrap resample),
    with no example text in them: ``{"metrics", "scores"}`` (each example's own ``score``) where every
    metric is a mean over examples, else ``{"metrics", "input", "columns"}``: the metric functions'
    arguments (predicted and gold class indices or values; MultiRC's question keys). :func:`record_score`
    reads either."""
    used = list(task.score_metrics or task.metrics)
    scores = example_scores(task, examples, predictions, match)
    if scores is not None:
        return {"metrics": used, "scores": scores}
    kinds = {METRICS[m][1] for m in used}
    if len(kinds) != 1 or "text" in kinds:
        raise ValueError(f"{task.name}: no text-free record for metrics {used} (text inputs that are not a mean "
                         f"over examples, or inputs of several kinds)")
    (kind,) = kinds
    columns = _inputs(task, examples, predictions, match)[0][kind]
    return {"metrics": used, "input": kind, "columns": [list(c) for c in columns]}


def record_score(record: dict, idx) -> float:
    """The ``score`` that :func:`score` gives on examples ``idx`` (indices, repeats allowed) of the run
    an :func:`example_record` describes."""
    if "scores" in record:
        return float(np.asarray(record["scores"], dtype=float)[np.asarray(idx)].mean())
    cols = [[c[i] for i in idx] for c in record["columns"]]
    return sum(float(METRICS[m][0](*cols)) for m in record["metrics"]) / len(record["metrics"])


def choice_index(options: list[str], p: Any, match: Match = Match.lenient) -> int:
    """A prediction -> index into ``options``: an in-range int, or a generated string equal to an
    option after stripping space (match=exact, as ATTEMPT), else also ignoring case (lenient); -1 otherwise."""
    if isinstance(p, numbers.Integral) and not isinstance(p, bool):
        return int(p) if 0 <= int(p) < len(options) else -1
    if isinstance(p, str):
        s = p.strip()
        hits = [i for i, c in enumerate(options) if c.strip() == s]
        if not hits and Match(match) == Match.lenient:
            hits = [i for i, c in enumerate(options) if c.strip().lower() == s.lower()]
        return hits[0] if hits else -1
    return -1
