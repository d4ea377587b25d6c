"""GLUE entries (Hub ``glue/<config>``; files in the GLUE download-script layout ``glue/<TASK>/``).

Templates are T5's text-to-text formats ("mnli hypothesis: ... premise: ...")
and label words T5's (GLUE's label names, Hub ``ClassLabel`` order). Tsv label
values (``entailment``, ``0``/``1``) map onto the same indices. STS-B is
regression: the target is the score rounded to the nearest 0.2 ("3.8").
Other text formats (:mod:`.formats`): ``attempt`` (ATTEMPT's ``tasks.py``, cited
per task in docs/fidelity.md) and ``natural`` (instructions for decoder-only models).
"""

from .base import Source, Task, TaskKind
from .formats import Format, attempt, stsb_value_text
from .registry import register_task

C, R = TaskKind.CLASSIFICATION, TaskKind.REGRESSION


def _files(folder: str, **extra: str) -> dict:
    return {"train": f"glue/{folder}/train.tsv", "validation": f"glue/{folder}/dev.tsv",
            "test": f"glue/{folder}/test.tsv", **extra}


# natural templates shared with other modules (paraphrase: MRPC, PAWS; entailment: RTE, SuperGLUE RTE, SciTail)
SAME_MEANING = ("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo the two sentences mean the same thing? "
                "Answer yes or no.\nAnswer:")
IMPLIES = ("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the hypothesis? Answer yes or no."
           "\nAnswer:")


def glue(config: str, folder: str, **kw) -> Source:
    return Source(hub="glue", config=config, files=kw.pop("files", None) or _files(folder), format="tsv", **kw)


MNLI = register_task(Task(
    name="mnli", group="glue", kind=C,
    source=glue("mnli", "MNLI", files={
        "train": "glue/MNLI/train.tsv", "validation_matched": "glue/MNLI/dev_matched.tsv",
        "validation_mismatched": "glue/MNLI/dev_mismatched.tsv",
        "test_matched": "glue/MNLI/test_matched.tsv", "test_mismatched": "glue/MNLI/test_mismatched.tsv"},
        columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}),
    template="mnli hypothesis: {hypothesis} premise: {premise}",
    label_words=("entailment", "neutral", "contradiction"),
    formats={"attempt": attempt("mnli premise: {premise} hypothesis: {hypothesis}", 3),
             "natural": Format("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the "
                               "hypothesis? Answer yes, maybe or no.\nAnswer:", ("yes", "maybe", "no"))},
    split="given", split_map={"train": "train", "dev": "validation_mismatched", "test": "validation_matched"},
    raw_sizes={"train": 392702, "validation_matched": 9815, "validation_mismatched": 9832},
    description="MultiNLI; dev = validation_mismatched, test = validation_matched (as MPT/ATTEMPT)"))

QQP = register_task(Task(
    name="qqp", group="glue", kind=C,
    source=glue("qqp", "QQP", columns={"label": "is_duplicate"}),
    template="qqp question1: {question1} question2: {question2}",
    label_words=("not_duplicate", "duplicate"), metrics=("accuracy", "f1"),
    formats={"attempt": attempt("qqp question1: {question1} question2: {question2}", 2),
             "natural": Format("Question 1: {question1}\nQuestion 2: {question2}\nDo the two questions ask the "
                               "same thing? Answer yes or no.\nAnswer:", ("no", "yes"))},
    split="large", raw_sizes={"train": 363846, "validation": 40430}))

QNLI = register_task(Task(
    name="qnli", group="glue", kind=C,
    source=glue("qnli", "QNLI"),
    template="qnli question: {question} sentence: {sentence}",
    label_words=("entailment", "not_entailment"),
    formats={"attempt": attempt("qnli question: {question} sentence: {sentence}", 2),
             "natural": Format("Question: {question}\nSentence: {sentence}\nDoes the sentence answer the "
                               "question? Answer yes or no.\nAnswer:", ("yes", "no"))},
    split="large", raw_sizes={"train": 104743, "validation": 5463}))

SST2 = register_task(Task(
    name="sst2", group="glue", kind=C,
    source=glue("sst2", "SST-2"),
    template="sst2 sentence: {sentence}",
    label_words=("negative", "positive"),
    formats={"attempt": attempt("sst2 sentence: {sentence}", 2),
             "natural": Format("sentence: {sentence}\nsentiment:")},
    split="large", raw_sizes={"train": 67349, "validation": 872}), aliases=("sst-2",))

STSB = register_task(Task(
    name="stsb", group="glue", kind=R,
    source=glue("stsb", "STS-B", columns={"label": "score"}),
    template="stsb sentence1: {sentence1} sentence2: {sentence2}",
    metrics=("pearson", "spearman"),
    formats={"attempt": attempt("stsb sentence1: {sentence1} sentence2: {sentence2}", value_text=stsb_value_text),
             "natural": Format("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nHow similar are the two sentences "
                               "in meaning, from 0 (unrelated) to 5 (the same)?\nScore:")},
    split="small", raw_sizes={"train": 5749, "validation": 1500}), aliases=("sts-b",))

MRPC = register_task(Task(
    name="mrpc", group="glue", kind=C,
    source=glue("mrpc", "MRPC", columns={"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    template="mrpc sentence1: {sentence1} sentence2: {sentence2}",
    label_words=("not_equivalent", "equivalent"), metrics=("accuracy", "f1"),
    formats={"attempt": attempt("mrpc sentence1: {sentence1} sentence2: {sentence2}", 2),
             "natural": Format(SAME_MEANING, ("no", "yes"))},
    split="small", raw_sizes={"train": 3668, "validation": 408}))

RTE = register_task(Task(
    name="rte", group="glue", kind=C,
    source=glue("rte", "RTE"),
    template="rte sentence1: {sentence1} sentence2: {sentence2}",
    label_words=("entailment", "not_entailment"),
    formats={"attempt": attempt("rte sentence1: {sentence1} sentence2: {sentence2}", 2),
             "natural": Format(IMPLIES.format(premise="{sentence1}", hypothesis="{sentence2}"), ("yes", "no"))},
    split="small", raw_sizes={"train": 2490, "validation": 277}))

COLA = register_task(Task(
    name="cola", group="glue", kind=C,
    # train/dev.tsv have no header row: source, label, original (author's) mark, sentence
    source=glue("cola", "CoLA", fieldnames=("source", "label", "original_label", "sentence"),
                headerless=("train", "validation")),
    template="cola sentence: {sentence}",
    label_words=("unacceptable", "acceptable"), metrics=("matthews",),
    formats={"attempt": attempt("cola sentence: {sentence}", 2),
             "natural": Format("Sentence: {sentence}\nIs this sentence grammatical? Answer yes or no.\nAnswer:",
                               ("no", "yes"))},
    split="small", raw_sizes={"train": 8551, "validation": 1043}))

WNLI = register_task(Task(
    name="wnli", group="glue", kind=C,
    source=glue("wnli", "WNLI"),
    template="wnli sentence1: {sentence1} sentence2: {sentence2}",
    label_words=("not_entailment", "entailment"),
    formats={"attempt": attempt("wnli sentence1: {sentence1} sentence2: {sentence2}", 2)},
    split="small", raw_sizes={"train": 635, "validation": 71},
    description="not one of the paper's 23 datasets; here because its original files are at hand"))
