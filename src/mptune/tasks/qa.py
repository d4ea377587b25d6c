"""Extractive QA entries: SQuAD v1.1 (a source task) and the four MRQA 2019 target tasks.

Generation tasks: the target is the first gold answer, ``answers`` keeps all of
them, and EM / F1 take the max over the answers with SQuAD's normalisation.
The paper reports F1 for MRQA, so ``score`` is F1 there (EM is still reported).

SQuAD's files are the official ``squad/{train,dev}-v1.1.json``; the dev set is
also found as BIG-bench's re-serialised copy (``bigbench/squad_shifts/
squaddev_v1.1.json``: 10,565 of the 10,570 questions) when the official file is
absent. MRQA loads from the Hub (``mrqa``, filtered by its ``subset`` column).

SQuAD-Shifts NYT (Miller et al., 2020; asset ``squad_shifts``) is one file, so its
``validation`` is a fixed hold-out of whole articles (``Task.holdout``), halved
into dev / test; its template is an instruction for a small causal LM.

Format ``attempt`` (ATTEMPT's ``Squad`` class, tasks.py:144-158, which ATTEMPT also maps NQ, HotpotQA,
SearchQA and NewsQA to, :810-814): prefix ``squad`` for all five, question, context and answers
punctuation-padded (:func:`.formats.pad_punctuation`). Format ``natural``: context, question, "Answer:".
"""

from .base import Source, Task, TaskKind
from .formats import Format, attempt, pad_punctuation
from .loading import as_answers
from .registry import register_task

G = TaskKind.GENERATION


def _padded(row: dict) -> dict:
    row.update(question=pad_punctuation(row["question"]), context=pad_punctuation(row["context"]),
               answers=[pad_punctuation(a) for a in as_answers(row.get("answers"))])
    return row


QA_FORMATS = {"attempt": attempt("squad question: {question} context: {context}", prepare=_padded),
              "natural": Format("Context: {context}\nQuestion: {question}\nAnswer:")}

SQUAD = register_task(Task(
    name="squad", group="qa", kind=G,
    source=Source(hub="squad", format="squad", files={
        "train": "squad/train-v1.1.json",
        "validation": ("squad/dev-v1.1.json", "bigbench/squad_shifts/squaddev_v1.1.json")}),
    template="squad question: {question} context: {context}",
    metrics=("squad_em", "squad_f1"), formats=QA_FORMATS,
    split="large", raw_sizes={"train": 87599, "validation": 10570}))


def mrqa(name: str, subset: str, sizes: dict, aliases=()) -> Task:
    return register_task(Task(
        name=name, group="mrqa", kind=G,
        source=Source(hub="mrqa", hub_filter=("subset", subset)),
        template=f"{name} question: {{question}} context: {{context}}",
        metrics=("squad_em", "squad_f1"), score_metrics=("squad_f1",), formats=QA_FORMATS,
        split="large", raw_sizes=sizes, description=f"MRQA 2019 subset {subset}"), aliases=aliases)


NQ = mrqa("nq", "NaturalQuestionsShort", {"train": 104071, "validation": 12836},
          aliases=("naturalquestions", "natural_questions"))
HOTPOTQA = mrqa("hotpotqa", "HotpotQA", {"train": 72928, "validation": 5901})
SEARCHQA = mrqa("searchqa", "SearchQA", {"train": 117384, "validation": 16980})
NEWSQA = mrqa("newsqa", "NewsQA", {"train": 74160, "validation": 4212})


def _by_article(row: dict) -> dict:
    row["group"] = row.get("title") or row["context"][:80]
    return row


NYT_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer with a short span copied from the context.\nAnswer:"
SQUAD_SHIFTS_NYT = register_task(Task(
    name="squad_shifts_nyt", group="qa", kind=G,
    source=Source(files={"all": "bigbench/squad_shifts/nyt_v1.0.json"}, format="squad"),
    template=NYT_TEMPLATE, formats={"natural": Format(NYT_TEMPLATE)},  # already an instruction
    metrics=("squad_em", "squad_f1"), score_metrics=("squad_f1",), prepare=_by_article, grouped=True,
    split="small", holdout=1000, asset="squad_shifts",
    description="SQuAD-Shifts (Miller et al., 2020) New York Times articles, SQuAD v1.1 format via BIG-bench; "
                "held out by article"), aliases=("squadshifts_nyt", "nyt_qa"))
