"""SuperGLUE entries (Hub ``super_glue/<config>``; files in the v2 zip layout ``superglue/<Task>/{train,val,test}.jsonl``).

Task-specific structure, all done by small ``prepare`` / ``explode`` functions:

* MultiRC: one example per answer option (label False/True), ``group`` = the
  question, so EM counts a question right only when all its options are; F1a is
  binary F1 over all options. The paper reports F1a, so ``score`` is F1a.
* ReCoRD: one example per query; ``choices`` are the passage's entities
  (rank classification), ``answers`` all gold entities; EM / F1 take the max over
  answers. The passage's ``@highlight`` markers are rewritten as T5 does.
* WSC: the candidate noun is wrapped in ``*`` and the pronoun in ``#`` as T5 does
  ("wsc text: # He # told * Mark * ..."), located by word index; a span that does
  not sit at its index (a few rows of the original release) is looked for at the
  nearest word position where it starts, else the words at the index are marked.
* WiC: the target word is part of the input ("... word: {word}").

Other text formats (:mod:`.formats`): ``attempt`` (ATTEMPT's ``tasks.py``: ``superglue-<task>``
prefixes, labels "0"/"1"/"2", premise first for CB, its own WSC marking, ReCoRD as generation with one
training example per answer; docs/fidelity.md) and ``natural`` (BoolQ, CB, RTE).
"""

from __future__ import annotations

import re

from .base import Source, Task, TaskKind
from .formats import Format, attempt, no_prepare
from .glue import IMPLIES
from .registry import register_task

C = TaskKind.CLASSIFICATION
BOOL = ("False", "True")


def superglue(config: str, folder: str, **kw) -> Source:
    files = {s: f"superglue/{folder}/{f}.jsonl" for s, f in
             (("train", "train"), ("validation", "val"), ("test", "test"))}
    return Source(hub="super_glue", config=config, files=files, format="jsonl", **kw)


# --- MultiRC ---------------------------------------------------------------------------

def multirc_rows(rec: dict) -> list[dict]:
    """A file record (a paragraph with its questions and answer options) -> Hub rows."""
    rows, p = [], rec["passage"]
    for q in p["questions"]:
        for a in q["answers"]:
            row = {"paragraph": p["text"], "question": q["question"], "answer": a["text"],
                   "idx": {"paragraph": rec["idx"], "question": q["idx"], "answer": a["idx"]}}
            if "label" in a:
                row["label"] = a["label"]
            rows.append(row)
    return rows


def _remove_markup(text: str) -> str:
    return re.sub(r"<(/)?b>", "", re.sub(r"<br>", " ", text))


def multirc_prepare(row: dict) -> dict:
    row.update({k: _remove_markup(row[k]) for k in ("paragraph", "question", "answer")})
    row["group"] = f"{row['idx']['paragraph']}-{row['idx']['question']}"
    return row


# --- ReCoRD ----------------------------------------------------------------------------

def record_rows(rec: dict) -> list[dict]:
    """A file record (a passage with entity spans and its queries) -> Hub rows (one per query)."""
    text = rec["passage"]["text"]
    entities = [text[e["start"]:e["end"] + 1] for e in rec["passage"]["entities"]]  # end is inclusive
    return [{"passage": text, "query": qa["query"], "entities": entities,
             "answers": [a["text"] for a in qa.get("answers", [])],
             "idx": {"passage": rec["idx"], "query": qa["idx"]}} for qa in rec["qas"]]


def _highlights(passage: str) -> str:
    """T5's (and ATTEMPT's, tasks.py:725-727) rewrite of the passage's ``@highlight`` markers."""
    return re.sub(r"\n@highlight\n", ". ", re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage))


def record_prepare(row: dict) -> dict:
    row["passage"] = _highlights(row["passage"])
    choices = list(dict.fromkeys(row["entities"]))
    answers = list(dict.fromkeys(row.get("answers") or []))
    row.update(choices=choices, entities=", ".join(choices), answers=answers)
    hits = [choices.index(a) for a in answers if a in choices]
    if answers and not hits:
        raise ValueError(f"no gold answer {answers} is among the entities")
    row["label"] = hits[0] if hits else None
    return row


def record_attempt_prepare(row: dict) -> dict:
    """ATTEMPT's ReCoRD (tasks.py:718-740): entities joined by ", " and the gold answers, both as the Hub's
    super_glue script gives them (sorted, without duplicates; file rows are brought to that form)."""
    row["passage"] = _highlights(row["passage"])
    row.update(entities=", ".join(sorted(set(row["entities"]))), answers=sorted(set(row.get("answers") or [])))
    return row


# --- WSC -------------------------------------------------------------------------------

def _span(text: str, span: str, index: int) -> tuple[int, int]:
    words = list(re.finditer(r"\S+", text))
    index = min(max(index, 0), len(words) - 1)
    for i in sorted(range(len(words)), key=lambda i: (abs(i - index), i)):
        start = words[i].start()
        if text[start:start + len(span)].lower() == span.lower():
            return start, start + len(span)
    last = words[min(index + len(span.split()), len(words)) - 1]
    return words[index].start(), last.end()


def mark_wsc(text: str, span1: str, index1: int, span2: str, index2: int) -> str:
    """T5's WSC marking: ``* noun *`` and ``# pronoun #`` around the spans."""
    marks = sorted([(*_span(text, span1, index1), "*"), (*_span(text, span2, index2), "#")], reverse=True)
    for start, end, m in marks:
        text = f"{text[:start]}{m} {text[start:end]} {m}{text[end:]}"
    return text


def wsc_prepare(row: dict) -> dict:
    row["text"] = mark_wsc(row["text"], row["span1_text"], int(row["span1_index"]),
                           row["span2_text"], int(row["span2_index"]))
    return row


def _hub_span(text: str, span: str, index: int) -> str:
    """The Hub's ``super_glue/wsc.fixed`` span fix (``_fix_wst``), which ATTEMPT's rows went through: a span
    that is not in the text takes the case of the word at its index, loses a final "." and line breaks."""
    if span in text:
        return span
    span = (span[0].lower() if text.split()[index][0].islower() else span[0].upper()) + span[1:]
    return span.rstrip(".").replace("\n", " ")


def wsc_attempt_prepare(row: dict) -> dict:
    """ATTEMPT's WSC marking (tasks.py:662-676) of the Hub's spans: each span is marked only where it starts
    at its word index (ATTEMPT puts the span into the pattern unescaped; here it is escaped), the pronoun's
    index shifted by the 2 marks the noun added before it."""
    def mark(text: str, span: str, index: int, m: str) -> str:
        return re.sub(rf"^((?:\S+\s){{{index}}})({re.escape(span)})", lambda g: f"{g[1]}{m} {g[2]} {m}", text)

    text, i1, i2 = row["text"], int(row["span1_index"]), int(row["span2_index"])
    s1, s2 = _hub_span(text, row["span1_text"], i1), _hub_span(text, row["span2_text"], i2)
    row["text"] = mark(mark(text, s1, i1, "*"), s2, i2 + 2 * int(i1 < i2), "#")
    return row


_WSC_COLS = {k: f"target.{k}" for k in ("span1_index", "span2_index", "span1_text", "span2_text")}


# --- COPA ------------------------------------------------------------------------------

def copa_prepare(row: dict) -> dict:
    row["choices"] = [row["choice1"], row["choice2"]]
    return row


# --- entries ---------------------------------------------------------------------------

MULTIRC = register_task(Task(
    name="multirc", group="superglue", kind=C,
    source=superglue("multirc", "MultiRC", explode=multirc_rows),
    template="multirc question: {question} answer: {answer} paragraph: {paragraph}",
    label_words=BOOL, metrics=("multirc_f1a", "multirc_em"), score_metrics=("multirc_f1a",),
    prepare=multirc_prepare, grouped=True,
    formats={"attempt": attempt("superglue-multirc question: {question} answer: {answer} paragraph: {paragraph}", 2)},
    # ATTEMPT/MPT treat MultiRC as a "small" dataset (validation split in half) despite 27k train rows
    split="small", raw_sizes={"train": 27243, "validation": 4848, "test": 9693},
    description="sizes count answer options; dev/test halves are cut by question"), aliases=("superglue-multirc",))

BOOLQ = register_task(Task(
    name="boolq", group="superglue", kind=C,
    source=superglue("boolq", "BoolQ"),
    template="boolq question: {question} passage: {passage}",
    formats={"attempt": attempt("superglue-boolq question: {question} passage: {passage}", 2),
             "natural": Format("Passage: {passage}\nQuestion: {question}?\nAnswer yes or no.\nAnswer:", ("no", "yes"))},
    label_words=BOOL, split="small", raw_sizes={"train": 9427, "validation": 3270, "test": 3245}),
    aliases=("superglue-boolq",))

WIC = register_task(Task(
    name="wic", group="superglue", kind=C,
    source=superglue("wic", "WiC"),
    template="wic sentence1: {sentence1} sentence2: {sentence2} word: {word}",
    formats={"attempt": attempt("superglue-wic sentence1: {sentence1} sentence2: {sentence2} word: {word}", 2)},
    label_words=BOOL, split="small", raw_sizes={"train": 5428, "validation": 638, "test": 1400}),
    aliases=("superglue-wic",))

WSC = register_task(Task(
    name="wsc", group="superglue", kind=C,
    source=superglue("wsc.fixed", "WSC", columns=_WSC_COLS),
    template="wsc text: {text}",
    label_words=BOOL, prepare=wsc_prepare,
    formats={"attempt": attempt("superglue-wsc.fixed text: {text}", 2, prepare=wsc_attempt_prepare)},
    fields=("text", "span1_index", "span2_index", "span1_text", "span2_text"),
    split="small", raw_sizes={"train": 554, "validation": 104, "test": 146}),
    aliases=("superglue-wsc", "superglue-wsc.fixed", "wsc.fixed"))

CB = register_task(Task(
    name="cb", group="superglue", kind=C,
    source=superglue("cb", "CB"),
    template="cb hypothesis: {hypothesis} premise: {premise}",
    label_words=("entailment", "contradiction", "neutral"), metrics=("accuracy", "macro_f1"),
    formats={"attempt": attempt("superglue-cb premise: {premise} hypothesis: {hypothesis}", 3),
             "natural": Format("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the "
                               "hypothesis? Answer yes, no or maybe.\nAnswer:", ("yes", "no", "maybe"))},
    split="small", raw_sizes={"train": 250, "validation": 56, "test": 250}), aliases=("superglue-cb",))

RECORD = register_task(Task(
    name="record", group="superglue", kind=C,
    source=superglue("record", "ReCoRD", explode=record_rows),
    template="record query: {query} entities: {entities} passage: {passage}",
    metrics=("record_em", "record_f1"), prepare=record_prepare, fields=("passage", "query", "entities"),
    formats={"attempt": attempt("superglue-record record query: {query} entities: {entities} passage: {passage}",
                                kind=TaskKind.GENERATION, prepare=record_attempt_prepare, per_answer=True)},
    split="large", raw_sizes={"train": 100730, "validation": 10000, "test": 10000},
    description="rank classification over the passage entities; one example per query"),
    aliases=("superglue-record",))

COPA = register_task(Task(
    name="copa", group="superglue", kind=C,
    source=superglue("copa", "COPA"),
    template="copa premise: {premise} question: {question} choice1: {choice1} choice2: {choice2}",
    prepare=copa_prepare, fields=("premise", "question", "choice1", "choice2"),
    formats={"attempt": attempt("superglue-copa premise: {premise} choice1: {choice1} choice2: {choice2}", 2,
                                prepare=no_prepare)},
    split="small", raw_sizes={"train": 400, "validation": 100, "test": 500},
    description="not one of the paper's 23 datasets"), aliases=("superglue-copa",))

SUPERGLUE_RTE = register_task(Task(
    name="superglue_rte", group="superglue", kind=C,
    source=superglue("rte", "RTE"),
    template="superglue_rte premise: {premise} hypothesis: {hypothesis}",
    label_words=("entailment", "not_entailment"),
    formats={"attempt": attempt("superglue-rte premise: {premise} hypothesis: {hypothesis}", 2),
             "natural": Format(IMPLIES, ("yes", "no"))},
    split="small", raw_sizes={"train": 2490, "validation": 277, "test": 3000},
    description="SuperGLUE's copy of RTE (not one of the paper's 23 datasets)"),
    aliases=("superglue-rte", "sg-rte"))
