"""Registry, every entry on Hub-shaped rows, scoring, choices, few-shot, Hub path on local files."""

import json

import pytest

from mptune.tasks import (BENCHMARKS, PAPER_TASKS, SOURCE_TASKS, DataError, Example, Source, Task, TaskKind,
                          few_shot, get_task, list_tasks, register_task)
from mptune.tasks.superglue import mark_wsc

# One Hub-shaped row per built-in entry (column names as on the Hub), labelled.
ROWS = {
    "mnli": {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0, "idx": 0},
    "qqp": {"question1": "How to cook?", "question2": "How do I cook?", "label": 1, "idx": 0},
    "qnli": {"question": "Who?", "sentence": "Bob did.", "label": 0, "idx": 0},
    "sst2": {"sentence": "great fun", "label": 1, "idx": 0},
    "stsb": {"sentence1": "A cat.", "sentence2": "A dog.", "label": 1.35, "idx": 0},
    "mrpc": {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
    "rte": {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
    "cola": {"sentence": "Him went.", "label": 0, "idx": 0},
    "wnli": {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
    "multirc": {"paragraph": "P <b>bold</b>", "question": "Q?", "answer": "A", "label": 1,
                "idx": {"paragraph": 3, "question": 7, "answer": 0}},
    "boolq": {"question": "is it", "passage": "it is", "label": 1, "idx": 0},
    "wic": {"word": "bank", "sentence1": "river bank", "sentence2": "bank loan", "start1": 6, "end1": 10,
            "start2": 0, "end2": 4, "label": 0, "idx": 0},
    "wsc": {"text": "Mark told Pete he lied .", "span1_index": 0, "span1_text": "Mark", "span2_index": 3,
            "span2_text": "he", "label": 1, "idx": 0},
    "cb": {"premise": "p", "hypothesis": "h", "label": 2, "idx": 0},
    "record": {"passage": "Obama met Merkel.\n@highlight\nTalks in Berlin", "query": "@placeholder met Merkel",
               "entities": ["Obama", "Merkel", "Berlin", "Obama"], "entity_spans": {},
               "answers": ["Obama"], "idx": {"passage": 0, "query": 0}},
    "copa": {"premise": "It rained.", "choice1": "Sun.", "choice2": "Wet.", "question": "effect", "label": 1, "idx": 0},
    "superglue_rte": {"premise": "p", "hypothesis": "h", "label": 0, "idx": 0},
    "squad": {"id": "x", "title": "t", "context": "Paris is in France.", "question": "Where is Paris?",
              "answers": {"text": ["France", "in France"], "answer_start": [12, 9]}},
    **{n: {"subset": s, "context": "c d", "qid": "q", "question": "q?", "answers": ["d", "c d"]}
       for n, s in [("nq", "NaturalQuestionsShort"), ("hotpotqa", "HotpotQA"), ("searchqa", "SearchQA"),
                    ("newsqa", "NewsQA")]},
    "winogrande": {"sentence": "The trophy didn't fit because _ was big.", "option1": "trophy",
                   "option2": "case", "answer": "1"},
    "yelp_polarity": {"text": "awful", "label": 0},
    "scitail": {"sentence1": "p", "sentence2": "h", "gold_label": "neutral"},
    "paws": {"id": 1, "sentence1": "a", "sentence2": "b", "label": 1},
}


def test_registry_has_the_papers_23_datasets():
    assert len(PAPER_TASKS) == 23 and len(SOURCE_TASKS) == 6
    assert sum(len(v) for v in BENCHMARKS.values()) == 21  # MNLI, QNLI, QQP, SST-2 are source and GLUE target
    from mptune.tasks import ASSET_TASKS as QUICKSTART_TASKS  # file-only sets, tested in test_asset_tasks.py

    names = [t.name for t in list_tasks() if t.name not in QUICKSTART_TASKS]
    assert set(PAPER_TASKS) <= set(names) and len(names) == len(set(names))
    assert set(ROWS) == set(names)  # every entry is exercised below
    for t in (get_task(n) for n in names):
        assert t.source.hub, t.name
        assert t.template.startswith(t.name + " ")


@pytest.mark.parametrize("hub_id", [("mnli", "glue", "mnli"), ("multirc", "super_glue", "multirc"),
                                    ("wsc", "super_glue", "wsc.fixed"), ("nq", "mrqa", None),
                                    ("winogrande", "winogrande", "winogrande_xl"),
                                    ("yelp_polarity", "yelp_polarity", None), ("scitail", "scitail", "snli_format"),
                                    ("paws", "paws", "labeled_final"), ("record", "super_glue", "record")])
def test_hub_ids(hub_id):
    name, hub, config = hub_id
    assert (get_task(name).source.hub, get_task(name).source.config) == (hub, config)


def test_get_task_aliases_and_errors():
    assert get_task("SST-2") is get_task("sst2") is get_task(" sst2 ")
    assert get_task("superglue-boolq").name == "boolq" and get_task("yelp-2").name == "yelp_polarity"
    with pytest.raises(KeyError, match=r"unknown task 'sst3'.*Did you mean.*sst2.*Valid tasks: .*boolq"):
        get_task("sst3")
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("rte"))


def test_task_validation():
    src = Source(hub="x")
    with pytest.raises(ValueError, match="unknown metric"):
        Task(name="a", group="g", kind="classification", source=src, template="{x}", label_words=("a",),
             metrics=("acc",))
    with pytest.raises(ValueError, match="do not apply"):
        Task(name="a", group="g", kind="generation", source=src, template="{x}", metrics=("pearson",))
    with pytest.raises(ValueError, match="needs label_words"):
        Task(name="a", group="g", kind="classification", source=src, template="{x}")
    with pytest.raises(ValueError, match="split_map"):
        Task(name="a", group="g", kind="generation", source=src, template="{x}", metrics=("squad_f1",),
             split="given")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_entry_on_a_hub_row(name):
    task = get_task(name)
    ex = task.to_example(ROWS[name], uid="hub:train:0", where="hub:train:0")
    assert ex.source.startswith(name + " ") and "{" not in ex.source and ex.task == name
    if task.kind == TaskKind.CLASSIFICATION:
        choices = task.choices(ex)
        assert ex.target == choices[ex.label]
        if "matthews" in task.metrics:  # undefined on a single class
            assert task.score([ex], [ex.label])["score"] == 0.0
            return
        assert task.score([ex], [ex.label])["score"] == 100.0
        assert task.score([ex], [ex.target])["score"] == 100.0  # generated text is matched to the choices
        wrong = (ex.label + 1) % len(choices)
        assert task.score([ex], [wrong])["score"] < 100.0
    elif task.kind == TaskKind.GENERATION:
        assert ex.target == ex.answers[0]
        assert task.score([ex], [ex.answers[-1]])["score"] == 100.0
    else:
        other = task.to_example({**ROWS[name], "label": 4.0})
        assert task.score([ex, other], [ex.target, other.target])["score"] == pytest.approx(100.0)
    # unlabeled rows (released test sets: missing or -1 label) are fine when not required ...
    unlabeled = {k: v for k, v in ROWS[name].items() if k not in ("label", "answers", "answer", "gold_label")}
    if name not in ("multirc",):
        assert task.to_example(unlabeled, labeled=False).label is None
    # ... and an error naming the row when required
    with pytest.raises(DataError, match="hub:train:0"):
        task.to_example(unlabeled if name != "multirc" else {**ROWS[name], "label": None}, where="hub:train:0")


def test_specific_structure():
    ex = get_task("wsc").to_example(ROWS["wsc"])
    assert ex.source == "wsc text: * Mark * told Pete # he # lied ."
    ex = get_task("wic").to_example(ROWS["wic"])
    assert ex.source.endswith("word: bank") and ex.target == "False"
    ex = get_task("multirc").to_example(ROWS["multirc"])
    assert ex.group == "3-7" and "<b>" not in ex.source and ex.target == "True"
    ex = get_task("record").to_example(ROWS["record"])
    assert ex.choices == ["Obama", "Merkel", "Berlin"] and ex.answers == ["Obama"] and ex.label == 0
    assert "entities: Obama, Merkel, Berlin passage: Obama met Merkel. Talks in Berlin" in ex.source
    ex = get_task("stsb").to_example(ROWS["stsb"])
    assert ex.target == "1.4" and ex.label == 1.35  # nearest 0.2
    ex = get_task("winogrande").to_example({**ROWS["winogrande"], "answer": "2"})
    assert ex.choices == ["trophy", "case"] and ex.label == 1 and ex.target == "case"
    assert get_task("mnli").to_example({**ROWS["mnli"], "label": 2}).target == "contradiction"


def test_wsc_marking_falls_back_when_the_index_is_off():
    assert mark_wsc("Emma's cat saw her .", "Emma", 0, "her", 3) == "* Emma *'s cat saw # her # ."
    # span not at its index: nearest word where it starts
    assert mark_wsc("a b it c use it", "b", 1, "it", 4) == "a * b * it c use # it #"
    # span nowhere: the words at the index
    assert mark_wsc("x y z w", "The q.", 1, "w", 3) == "x * y z * # w #"


def test_score_details():
    sst2 = get_task("sst2")
    exs = [sst2.to_example({"sentence": s, "label": y}) for s, y in [("a", 1), ("b", 0), ("c", 1), ("d", 0)]]
    out = sst2.score(exs, [1, 1, "positive", "garbage"])
    assert out == {"accuracy": 50.0, "score": 50.0, "invalid_rate": 25.0}  # "garbage" matches no label
    with pytest.raises(ValueError, match="predictions"):
        sst2.score(exs, [1])
    with pytest.raises(ValueError, match="unlabeled"):
        sst2.score([sst2.to_example({"sentence": "x", "label": -1}, labeled=False)], [0])
    mrpc = get_task("mrpc")
    exs = [mrpc.to_example({"sentence1": "a", "sentence2": "b", "label": y}) for y in (1, 1, 0, 0)]
    out = mrpc.score(exs, [1, 0, 1, 0])
    assert out["accuracy"] == 50.0 and out["f1"] == 50.0 and out["score"] == 50.0
    stsb = get_task("stsb")
    exs = [stsb.to_example({"sentence1": "a", "sentence2": "b", "label": v}) for v in (1.0, 2.0, 3.0)]
    assert stsb.score(exs, ["1.0", "2.2", 3])["pearson"] == pytest.approx(100 * 0.9933992677987827)
    assert stsb.score(exs, ["oops", "2.0", "3.0"])["spearman"] == pytest.approx(100.0)  # oops -> -1


def test_multirc_and_record_scores():
    mr = get_task("multirc")
    rows = [(1, 1, 1), (1, 2, 0), (2, 3, 1), (2, 4, 1)]  # (question, answer, label)
    exs = [mr.to_example({**ROWS["multirc"], "idx": {"paragraph": 0, "question": q, "answer": a}, "label": y})
           for q, a, y in rows]
    out = mr.score(exs, [1, 0, 1, 0])  # q1 all right, q2 one wrong; TP 2, FN 1
    assert out["multirc_em"] == 50.0 and out["multirc_f1a"] == pytest.approx(80.0) and out["score"] == out["multirc_f1a"]
    rc = get_task("record")
    ex = rc.to_example({**ROWS["record"], "answers": ["Merkel", "Berlin"]})
    assert ex.label == 1
    assert rc.score([ex], [2])["record_em"] == 100.0  # max over answers
    assert rc.score([ex], [0])["record_f1"] == 0.0
    assert rc.score([ex], ["in Berlin"])["record_f1"] == pytest.approx(100 * 2 / 3)  # free text allowed


def test_record_answers_must_be_entities():
    with pytest.raises(DataError, match="among the entities"):
        get_task("record").to_example({**ROWS["record"], "answers": ["Paris"]})


def test_choices():
    assert get_task("cb").choices(Example("s", "t")) == ["entailment", "contradiction", "neutral"]
    assert get_task("copa").choices(Example("s", "t", choices=["x", "y"])) == ["x", "y"]
    assert get_task("squad").choices(Example("s", "t")) is None
    assert get_task("stsb").choices(Example("s", "t")) is None


# --- few-shot ------------------------------------------------------------------------------

def _exs(labels, **kw):
    return [Example(source=f"s{i}", target="", label=y, uid=str(i), **kw) for i, y in enumerate(labels)]


def test_few_shot_k_per_class_deterministic():
    exs = _exs([0] * 50 + [1] * 30 + [2] * 2)
    a = few_shot(exs, 4, seed=0)
    assert sorted(e.label for e in a) == [0] * 4 + [1] * 4 + [2] * 2
    assert [e.uid for e in a] == [e.uid for e in few_shot(exs, 4, seed=0)]
    assert {e.uid for e in a} != {e.uid for e in few_shot(exs, 4, seed=1)}


def test_few_shot_k_total_otherwise():
    assert len(few_shot(_exs([0.5 * i for i in range(20)]), 5, 0)) == 5  # regression
    assert len(few_shot(_exs([None] * 20), 3, 0)) == 3  # generation
    assert len(few_shot(_exs([0, 1] * 10, choices=["a", "b"]), 3, 0)) == 3  # per-example choices
    with pytest.raises(ValueError):
        few_shot(_exs([0]), 0, 0)


# --- Hub path (datasets.load_dataset) ---------------------------------------------------------

def test_hub_path_on_local_files(tmp_path):
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(12)]
    for split, part in (("train", rows[:8]), ("validation", rows[8:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    src = Source(hub="json", hub_kwargs={"data_files": {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation")},
                                         "cache_dir": str(tmp_path / "cache")})
    task = Task(name="hubtest", group="t", kind="classification", source=src, template="hubtest: {sentence}",
                label_words=("no", "yes"), split="small")
    train, dev, test = (task.load(s) for s in ("train", "dev", "test"))
    assert len(train) == 8 and len(dev) == 2 and len(test) == 2
    assert train[0].uid == "json:train:0" and train[1].target == "yes"
    assert {e.source for e in dev + test} == {"hubtest: s8", "hubtest: s9", "hubtest: s10", "hubtest: s11"}


def test_hub_filter_on_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"subset": ["SearchQA", "NewsQA", "NewsQA"], "question": ["a", "b", "c"],
                             "context": ["x", "y", "z"], "answers": [["x"], ["y"], ["z"]]}), tmp_path / "v.parquet")
    src = Source(hub="parquet", hub_filter=("subset", "NewsQA"),
                 hub_kwargs={"data_files": {"validation": str(tmp_path / "v.parquet")}, "cache_dir": str(tmp_path / "c")})
    task = Task(name="mini", group="t", kind="generation", source=src, template="q: {question}",
                metrics=("squad_f1",), split="large")
    exs = task.load("test")
    assert [e.source for e in exs] == ["q: b", "q: c"] and exs[1].answers == ["z"]


def test_builtin_entries_call_the_hub_with_their_ids(monkeypatch):
    import datasets

    calls = []

    def fake(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([ROWS["mnli"]] if path == "glue" else [ROWS["yelp_polarity"]])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert get_task("mnli").load("test")[0].target == "entailment"
    get_task("mnli").load("dev")
    get_task("yelp_polarity").load("test")
    assert calls == [("glue", "mnli", "validation_matched"), ("glue", "mnli", "validation_mismatched"),
                     ("yelp_polarity", None, "test")]
