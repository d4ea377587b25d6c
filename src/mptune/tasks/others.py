"""The paper's "Others" targets: WinoGrande, Yelp-2, SciTail, PAWS.

Split policies follow the ATTEMPT/MPT code: SciTail is treated as "small"
(validation split in half) despite its 23k training rows; PAWS keeps its own
validation / test sets; Yelp-2 has no validation set, so its test set plays that
role. Original-file layouts are given where the release is a plain table
(Yelp ``yelp_review_polarity_csv/``, SciTail ``SciTailV1.1/snli_format/``, PAWS
``paws/final/``); WinoGrande loads from the Hub.

Format ``attempt`` follows ATTEMPT's ``tasks.py`` except for one bug: its WinoGrande source shows
``option1`` twice (tasks.py:760-762, "option0: {option1} option1: {option1}"); here option2 is the
second option. Format ``natural``: Yelp, SciTail, PAWS.
"""

from .base import Source, Task, TaskKind
from .formats import Format, attempt, no_prepare
from .glue import IMPLIES, SAME_MEANING
from .registry import register_task

C = TaskKind.CLASSIFICATION


def winogrande_prepare(row: dict) -> dict:
    row["choices"] = [row["option1"], row["option2"]]
    return row


WINOGRANDE = register_task(Task(
    name="winogrande", group="others", kind=C,
    source=Source(hub="winogrande", config="winogrande_xl"),
    template="winogrande sentence: {sentence} option1: {option1} option2: {option2}",
    label_field="answer", label_map={"1": 0, "2": 1}, prepare=winogrande_prepare,
    formats={"attempt": attempt("winogrande sentence: {sentence} option0: {option1} option1: {option2}", 2,
                                prepare=no_prepare)},
    fields=("sentence", "option1", "option2"),
    split="large", raw_sizes={"train": 40398, "validation": 1267, "test": 1767}))

YELP = register_task(Task(
    name="yelp_polarity", group="others", kind=C,
    source=Source(hub="yelp_polarity", hub_splits={"validation": "test"}, format="csv",
                  files={"train": "yelp_review_polarity_csv/train.csv",
                         "validation": "yelp_review_polarity_csv/test.csv"},
                  fieldnames=("label", "text"), headerless=True),
    template="yelp_polarity sentence: {text}",
    formats={"attempt": attempt("yelp_polarity sentence: {text}", 2), "natural": Format("review: {text}\nsentiment:")},
    label_words=("negative", "positive"), label_map={"1": 0, "2": 1},  # csv: 1 = negative, 2 = positive
    split="large", raw_sizes={"train": 560000, "validation": 38000}), aliases=("yelp", "yelp-2", "yelp2"))

SCITAIL = register_task(Task(
    name="scitail", group="others", kind=C,
    source=Source(hub="scitail", config="snli_format", format="jsonl", files={
        s: f"SciTailV1.1/snli_format/scitail_1.0_{f}.txt" for s, f in
        (("train", "train"), ("validation", "dev"), ("test", "test"))}),
    template="scitail premise: {sentence1} hypothesis: {sentence2}",
    label_field="gold_label", label_words=("entailment", "neutral"),
    formats={"attempt": attempt("scitail premise: {sentence1} hypothesis: {sentence2}", 2),
             "natural": Format(IMPLIES.format(premise="{sentence1}", hypothesis="{sentence2}"), ("yes", "no"))},
    split="small", raw_sizes={"train": 23596, "validation": 1304, "test": 2126}))

PAWS = register_task(Task(
    name="paws", group="others", kind=C,
    source=Source(hub="paws", config="labeled_final", format="tsv", files={
        "train": "paws/final/train.tsv", "validation": "paws/final/dev.tsv", "test": "paws/final/test.tsv"}),
    template="paws sentence1: {sentence1} sentence2: {sentence2}",
    label_words=("not_paraphrase", "paraphrase"),
    formats={"attempt": attempt("paws sentence1: {sentence1} sentence2: {sentence2}", 2),
             "natural": Format(SAME_MEANING, ("no", "yes"))},
    split="given", split_map={"train": "train", "dev": "validation", "test": "test"},
    raw_sizes={"train": 49401, "validation": 8000, "test": 8000}))
