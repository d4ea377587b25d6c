"""Original-file layouts of entries without files in shared/data (tiny synthetic files), and user tasks."""

import json

import pytest

from mptune.tasks import DataError, TaskDefinitionError, get_task, task_from_dict


def put(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def jl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


MNLI_HEAD = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"


def test_mnli_tsv_layout(tmp_path):
    put(tmp_path, "glue/MNLI/dev_matched.tsv", MNLI_HEAD + "0\t1\t1e\tfic\tA man.\tA person.\tentailment\tentailment\n")
    put(tmp_path, "glue/MNLI/dev_mismatched.tsv", MNLI_HEAD + "0\t1\t1c\tfic\tA.\tB.\tneutral\tcontradiction\n")
    mnli = get_task("mnli")
    [ex] = mnli.load("test", tmp_path)
    assert ex.source == "mnli hypothesis: A person. premise: A man." and ex.label == 0
    assert mnli.load("dev", tmp_path)[0].target == "contradiction"
    with pytest.raises(DataError, match=r"train file not found"):
        mnli.load("train", tmp_path)


def test_qqp_tsv_layout(tmp_path):
    put(tmp_path, "glue/QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tA?\tB?\t1\n")
    [ex] = get_task("qqp").load_raw("validation", tmp_path)
    assert ex.source == "qqp question1: A? question2: B?" and ex.target == "duplicate"


def test_superglue_jsonl_layouts(tmp_path):
    put(tmp_path, "superglue/BoolQ/val.jsonl", jl({"question": "q", "passage": "p", "idx": 0, "label": True}))
    put(tmp_path, "superglue/CB/val.jsonl", jl({"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}))
    put(tmp_path, "superglue/WiC/val.jsonl", jl({"word": "w", "sentence1": "a w", "sentence2": "w b", "idx": 0,
                                                 "label": False, "start1": 2, "end1": 3, "start2": 0, "end2": 1}))
    assert get_task("boolq").load_raw("validation", tmp_path)[0].target == "True"
    assert get_task("cb").load_raw("validation", tmp_path)[0].label == 2
    assert get_task("wic").load_raw("validation", tmp_path)[0].source == "wic sentence1: a w sentence2: w b word: w"
    put(tmp_path, "superglue/CB/train.jsonl", jl({"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}))
    with pytest.raises(DataError, match=r"CB/train\.jsonl:1: unknown label 'maybe'"):
        get_task("cb").load_raw("train", tmp_path)


def test_record_jsonl_layout(tmp_path):
    text = "Obama met Merkel in Berlin."
    rec = {"idx": 0, "source": "Daily mail", "passage": {"text": text, "entities": [
        {"start": 0, "end": 4}, {"start": 10, "end": 15}, {"start": 20, "end": 25}]},
        "qas": [{"query": "@placeholder met Merkel", "idx": 0, "answers": [{"start": 0, "end": 4, "text": "Obama"}]},
                {"query": "Obama met @placeholder", "idx": 1, "answers": [{"start": 10, "end": 15, "text": "Merkel"}]}]}
    put(tmp_path, "superglue/ReCoRD/val.jsonl", jl(rec))
    exs = get_task("record").load_raw("validation", tmp_path)
    assert [e.uid for e in exs] == ["superglue/ReCoRD/val.jsonl:1#0", "superglue/ReCoRD/val.jsonl:1#1"]
    assert exs[0].choices == ["Obama", "Merkel", "Berlin"] and [e.target for e in exs] == ["Obama", "Merkel"]
    put(tmp_path, "superglue/ReCoRD/train.jsonl", jl({"idx": 0, "passage": {"text": "x"}}))
    with pytest.raises(DataError, match=r"ReCoRD/train\.jsonl:1: malformed record"):
        get_task("record").load_raw("train", tmp_path)


def test_others_layouts(tmp_path):
    put(tmp_path, "paws/final/test.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n")
    put(tmp_path, "yelp_review_polarity_csv/test.csv", '"1","bad, really"\n"2","good"\n')
    put(tmp_path, "SciTailV1.1/snli_format/scitail_1.0_dev.txt",
        jl({"sentence1": "p", "sentence2": "h", "gold_label": "entailment", "sentence1_parse": "(x)"}))
    assert get_task("paws").load("test", tmp_path)[0].target == "paraphrase"  # PAWS' test set keeps labels
    yelp = get_task("yelp_polarity").load("test", tmp_path)
    assert [e.target for e in yelp] == ["negative", "positive"] and yelp[0].source.endswith("bad, really")
    assert get_task("scitail").load_raw("validation", tmp_path)[0].label == 0


def test_squad_train_file(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": f"q{i}", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}
        for i in range(3)]}]}]}
    put(tmp_path, "squad/train-v1.1.json", json.dumps(doc))
    exs = get_task("squad").load_raw("train", tmp_path)
    assert [e.uid for e in exs] == [f"squad/train-v1.1.json:q{i}" for i in range(3)]
    assert exs[0].target == "France"


# --- user tasks ---------------------------------------------------------------------------------

def test_user_task_jsonl_given_splits(tmp_path):
    for s in ("train", "dev", "test"):
        put(tmp_path, f"data/{s}.jsonl", jl({"review": "meh", "stars": "bad"}, {"review": "wow", "stars": "good"}))
    task = task_from_dict({"name": "reviews", "files": {s: f"data/{s}.jsonl" for s in ("train", "dev", "test")},
                           "template": "review: {review}", "label_words": ["bad", "good"],
                           "label_field": "stars", "metrics": ["accuracy", "macro_f1"]}, base_dir=tmp_path)
    assert task.kind.value == "classification" and task.split == "given"
    dev = task.load("dev")
    assert [e.target for e in dev] == ["bad", "good"] and dev[1].uid.endswith("dev.jsonl:2")
    want = {"accuracy": 50.0, "macro_f1": pytest.approx(100 / 3), "score": pytest.approx(125 / 3), "invalid_rate": 0.0}
    assert task.score(dev, [0, 0]) == want


def test_user_task_csv_headerless_auto_split(tmp_path):
    put(tmp_path, "train.csv", "".join(f"{i % 5}.5,text {i}\n" for i in range(30)))
    put(tmp_path, "val.csv", "".join(f"{i % 5}.0,val {i}\n" for i in range(10)))
    task = task_from_dict({"name": "reg", "kind": "regression", "files": {"train": "train.csv", "validation": "val.csv"},
                           "header": False, "fieldnames": ["score", "text"], "columns": {"label": "score"},
                           "template": "rate: {text}"}, base_dir=tmp_path)
    assert task.metrics == ("pearson", "spearman")
    assert [len(task.load(s)) for s in ("train", "dev", "test")] == [30, 5, 5]  # 30 < 10k: validation halved
    assert task.load("train")[1].target == "1.6"  # 1.5 -> nearest 0.2, half to even like tf.round


def test_user_task_generation_tsv(tmp_path):
    put(tmp_path, "qa.tsv", "question\tanswers\nwho?\tme\n")
    task = task_from_dict({"name": "qa", "files": {"train": str(tmp_path / "qa.tsv"), "dev": str(tmp_path / "qa.tsv"),
                                                   "test": str(tmp_path / "qa.tsv")}, "template": "q: {question}"})
    assert task.kind.value == "generation" and task.load("test")[0].answers == ["me"]


def test_user_task_errors(tmp_path):
    base = {"name": "x", "files": {"train": "t.jsonl", "validation": "v.jsonl"}, "template": "{a}"}
    with pytest.raises(TaskDefinitionError, match=r"label_word: unknown key \(did you mean 'label_words'\?\)"):
        task_from_dict({**base, "label_word": ["a"]})
    with pytest.raises(ValueError, match="template: missing"):
        task_from_dict({"name": "x", "files": {"train": "t.jsonl", "validation": "v.jsonl"}})
    with pytest.raises(ValueError, match="files.valid: unknown split 'valid'"):
        task_from_dict({**base, "files": {"train": "t.jsonl", "valid": "v.jsonl"}})
    with pytest.raises(ValueError, match="'files'"):
        task_from_dict({"name": "x", "template": "{a}"})
    with pytest.raises(ValueError, match="fieldnames: missing"):
        task_from_dict({**base, "header": False})
    with pytest.raises(ValueError, match=r"needs files for \['train', 'validation'\]; missing \['validation'\]"):
        task_from_dict({**base, "files": {"train": "t.jsonl"}})
    # all problems at once, each naming its key
    with pytest.raises(TaskDefinitionError) as e:
        task_from_dict({"name": "a b", "files": {"train": "t.jsonl", "validation": "v.jsonl"}, "template": "{}",
                        "label_words": ["no", "yes"], "label_map": {"n": 0, "y": 2}, "kind": "clasification"})
    msg = str(e.value)
    assert "4 problem(s)" in msg and "name: must be letters" in msg and "template: every {} needs a field" in msg
    assert "label_map.y: maps to 2, not an index into label_words (0..1" in msg and "kind: unknown kind" in msg
    task = task_from_dict({**base, "files": {"train": "t.jsonl", "dev": "t.jsonl", "test": "t.jsonl"}}, tmp_path)
    with pytest.raises(DataError, match="train file not found"):
        task.load("train")
    with pytest.raises(TaskDefinitionError, match=r"files.train: data file not found: 't.jsonl'"):
        task_from_dict({**base, "files": {"train": "t.jsonl", "dev": "t.jsonl", "test": "t.jsonl"}}, tmp_path,
                       check_files=True)
