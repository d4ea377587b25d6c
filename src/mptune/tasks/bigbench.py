"""BIG-bench entries (``bigbench/<task>/task.json``, one asset per task, see :mod:`mptune.assets`).

A ``task.json`` (read by :func:`.readers.read_bigbench`) holds ``examples`` with
``input`` and ``target_scores``; the label is the option scored 1:

* VitaminC fact verification (True / False / Neither),
* presuppositions as NLI (entailment / neutral / contradiction),
* epistemic reasoning (entailment / non-entailment),
* WinoWhy (is the stated reason for a Winograd pronoun resolution correct?).

Each is one file: ``validation`` is a fixed hold-out (``Task.holdout``,
:func:`.splits.hold_out`), halved into dev / test by the "small" policy. Where rows
come in families that share text (a VitaminC claim with its contrastive evidence,
a WinoWhy sentence with its candidate reasons, a presupposition item with its
negated twin) the hold-out and the dev/test cut take whole families (``group``).
Templates are plain instructions ending in ``Answer:``; the label words are the
datasets' own option names. Bad examples name the file and the line they start on.
"""

from __future__ import annotations

from typing import Callable

from .base import Source, Task, TaskKind
from .formats import Format
from .registry import register_task


def _scored_label(row: dict, options: tuple[str, ...]) -> str:
    scores = row.get("target_scores")
    if not isinstance(scores, dict):
        raise ValueError("no 'target_scores' object")
    if set(scores) != set(options):
        raise ValueError(f"target_scores options {sorted(scores)} != expected {sorted(options)}")
    best = [k for k, v in scores.items() if v == 1]
    if len(best) != 1 or any(v not in (0, 1) for v in scores.values()):
        raise ValueError(f"target_scores {scores} must score exactly one option 1, the rest 0")
    return best[0]


def bigbench_prepare(options: tuple[str, ...], text: Callable[[str], dict], group: Callable[[dict], str] | None = None):
    def prepare(row: dict) -> dict:
        row.update(text(row["input"]))
        row["label"] = _scored_label(row, options)
        if group is not None:
            row["group"] = group(row)
        return row

    return prepare


def _after(s: str, marker: str) -> str:
    i = s.find(marker)
    return s[i + len(marker):] if i >= 0 else s


def _before(s: str, marker: str) -> str:
    i = s.find(marker)
    return s[:i] if i >= 0 else s


def _vitaminc_text(s: str) -> dict:
    if "\nClaim:" not in s:
        raise ValueError("input has no '\\nClaim:' line")
    evidence, claim = s.split("\nClaim:", 1)
    return {"evidence": evidence.strip(), "claim": claim.strip()}


def _presup_text(s: str) -> dict:
    s = _before(s, "The answer is:").strip()
    if "Sentence 2:" not in s:
        raise ValueError("input has no 'Sentence 2:' part")
    s1, s2 = s.split("Sentence 2:", 1)
    return {"sentence1": _after(s1, "Sentence 1:").strip(), "sentence2": s2.strip()}


def _epistemic_text(s: str) -> dict:
    if "Hypothesis:" not in s:
        raise ValueError("input has no 'Hypothesis:' part")
    p, h = s.split("Hypothesis:", 1)
    return {"premise": _after(p, "Premise:").strip(), "hypothesis": h.strip()}


def _winowhy_text(s: str) -> dict:
    return {"text": s.strip()}


def _presup_group(row: dict) -> str:
    c = row.get("comment")
    return str(c["example_id"]) if isinstance(c, dict) and "example_id" in c else row["sentence2"]


def bigbench(name: str, folder: str, template: str, options: tuple[str, ...], text, holdout: int,
             group=None, description: str = "", aliases=()) -> Task:
    """Register the multiple-choice ``bigbench/<folder>/task.json`` (asset ``<folder>``)."""
    return register_task(Task(
        name=name, group="bigbench", kind=TaskKind.CLASSIFICATION,
        source=Source(files={"all": f"bigbench/{folder}/task.json"}, format="bigbench"),
        template=template, label_words=options, prepare=bigbench_prepare(options, text, group),
        formats={"natural": Format(template)},  # already an instruction
        fields=("input", "target_scores"), split="small", holdout=holdout, grouped=group is not None,
        description=description, asset=folder), aliases=aliases)


VITAMINC = bigbench(
    "vitaminc", "vitaminc_fact_verification",
    "Evidence: {evidence}\nClaim: {claim}\nBased only on the evidence, is the claim True, False, or Neither?\n"
    "Answer:", ("True", "False", "Neither"), _vitaminc_text, holdout=1000,
    group=lambda row: row["claim"], aliases=("vitaminc_fact_verification",),
    description="VitaminC fact verification (BIG-bench); families = rows sharing a claim")

PRESUPPOSITIONS = bigbench(
    "presuppositions_nli", "presuppositions_as_nli",
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes sentence 1 entail or contradict sentence 2, or "
    "neither (neutral)?\nAnswer:", ("entailment", "neutral", "contradiction"), _presup_text, holdout=200,
    group=_presup_group, aliases=("presuppositions_as_nli",),
    description="presuppositions as NLI (BIG-bench); families = an item and its negated/adversarial twins")

EPISTEMIC = bigbench(
    "epistemic_reasoning", "epistemic_reasoning",
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer entailment "
    "or non-entailment.\nAnswer:", ("entailment", "non-entailment"), _epistemic_text, holdout=400,
    aliases=("epistemic",), description="epistemic reasoning (BIG-bench): theory-of-mind entailment")

WINOWHY = bigbench(
    "winowhy", "winowhy",
    "{text}\nIs the reasoning above correct or incorrect?\nAnswer:", ("correct", "incorrect"), _winowhy_text,
    holdout=400, group=lambda row: _before(row["text"], " The '"),
    description="WinoWhy (BIG-bench): is the reason given for a Winograd pronoun resolution right; "
                "families = reasons for the same sentence")
