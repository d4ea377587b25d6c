"""The quickstart's registry-hosted sets (VADER, BIG-bench, SQuAD-Shifts NYT).

Real files: row counts against MANIFEST.tsv (read in place), label sets, the fixed
hold-out (disjoint, whole families, deterministic). Synthetic files: every bad
input names file:line. The real-file tests skip when ../shared/data is absent.
"""

import csv
import json

import pytest

from mptune.tasks import DataError, get_task
from mptune.tasks import ASSET_TASKS as QUICKSTART_TASKS
from mptune.tasks.readers import read_bigbench
from mptune.tasks.vader import NEUTRAL_BAND as VADER_NEUTRAL_BAND

# task -> MANIFEST path of its file
FILES = {
    **{f"vader_{d}{s}": f"vader/{f}_GroundTruth.txt" for d, f in [
        ("movie", "movieReviewSnippets"), ("amazon", "amazonReviewSnippets"),
        ("nyt", "nytEditorialSnippets"), ("tweets", "tweets")] for s in ("", "_rating")},
    "vitaminc": "bigbench/vitaminc_fact_verification/task.json",
    "presuppositions_nli": "bigbench/presuppositions_as_nli/task.json",
    "epistemic_reasoning": "bigbench/epistemic_reasoning/task.json",
    "winowhy": "bigbench/winowhy/task.json",
    "squad_shifts_nyt": "bigbench/squad_shifts/nyt_v1.0.json",
}
LABELS = {"vitaminc": ("True", "False", "Neither"), "presuppositions_nli": ("entailment", "neutral", "contradiction"),
          "epistemic_reasoning": ("entailment", "non-entailment"), "winowhy": ("correct", "incorrect")}


@pytest.fixture(scope="module")
def manifest(shared_data):
    with open(shared_data / "MANIFEST.tsv", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


@pytest.fixture(scope="module")
def loaded(shared_data):
    cache = {}

    def get(name):
        if name not in cache:
            t = get_task(name)
            cache[name] = (t, t.load_raw("train", shared_data), t.load_raw("validation", shared_data))
        return cache[name]

    return get


def test_every_quickstart_task_is_listed():
    assert sorted(FILES) == sorted(QUICKSTART_TASKS)


def _neutral_rows(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(abs(float(line.split("\t")[1])) < VADER_NEUTRAL_BAND for line in lines)


@pytest.mark.parametrize("name", sorted(FILES))
def test_rows_match_manifest(name, shared_data, manifest, loaded):
    task, train, val = loaded(name)
    path = FILES[name]
    rows = int(manifest[path]["rows"])
    if task.group == "vader" and task.kind.value == "classification":
        rows -= _neutral_rows(shared_data / path)  # the documented neutral band is dropped
    assert len(train) + len(val) == rows
    assert all(ex.uid.startswith(path + ":") and ex.task == task.name and ex.source for ex in train + val)
    assert len({ex.uid for ex in train + val}) == rows
    # the hold-out: disjoint, about `holdout` rows, no family on both sides
    assert not {ex.uid for ex in train} & {ex.uid for ex in val}
    assert task.holdout <= len(val) < task.holdout + 60
    if task.grouped:
        assert not {ex.group for ex in train} & {ex.group for ex in val}
    # paper splits: dev + test = the hold-out, train = the rest
    sizes = task.sizes(shared_data)
    assert sizes["train"] == len(train) and sizes["dev"] + sizes["test"] == len(val)
    dev, test = task.load("dev", shared_data), task.load("test", shared_data)
    assert len(dev) == sizes["dev"] and len(test) == sizes["test"]
    assert {ex.uid for ex in dev + test} == {ex.uid for ex in val}


@pytest.mark.parametrize("name", sorted(FILES))
def test_labels(name, loaded):
    task, train, val = loaded(name)
    exs = train + val
    if task.kind.value == "classification":
        n = len(task.label_words)
        assert {ex.label for ex in train} == set(range(n)) and {ex.label for ex in val} == set(range(n))
        assert all(ex.target == task.label_words[ex.label] for ex in exs)
        if name in LABELS:
            assert task.label_words == LABELS[name]
    elif task.kind.value == "regression":
        assert all(-4.0 <= ex.label <= 4.0 for ex in exs)
        assert any(ex.label == -1.0 for ex in exs)  # a real rating, not "missing"
        assert len({ex.label for ex in exs}) > 100
    else:
        assert all(ex.answers and ex.target == ex.answers[0] for ex in exs)


def test_vader_polarity_threshold(shared_data, loaded):
    task, train, val = loaded("vader_tweets")
    rating = {}
    for i, line in enumerate((shared_data / FILES["vader_tweets"]).read_text(encoding="utf-8").splitlines(), 1):
        rating[f"{FILES['vader_tweets']}:{i}"] = float(line.split("\t")[1])
    for ex in train + val:
        r = rating[ex.uid]
        assert abs(r) >= VADER_NEUTRAL_BAND and ex.label == (r > 0)


def test_bigbench_labels_follow_target_scores(shared_data, loaded):
    task, train, _ = loaded("epistemic_reasoning")
    path = shared_data / FILES["epistemic_reasoning"]
    examples = dict(read_bigbench(path))
    for ex in train[:200]:
        line = int(ex.uid.rsplit(":", 1)[1])
        scores = examples[line]["target_scores"]
        assert scores[task.label_words[ex.label]] == 1
        assert examples[line]["input"].split("Hypothesis:")[1].strip() in ex.source


def test_holdout_is_deterministic(shared_data, loaded):
    task, _, val = loaded("winowhy")
    again = get_task("winowhy").load_raw("validation", shared_data)
    assert [e.uid for e in again] == [e.uid for e in val]
    assert task.load("test", shared_data, seed=42)[0].uid == task.load("test", shared_data, seed=42)[0].uid


# --- bad input: file:line ---------------------------------------------------------------

def _vader_dir(tmp_path, text):
    (tmp_path / "vader").mkdir()
    (tmp_path / "vader" / "tweets_GroundTruth.txt").write_bytes(text.encode())
    return tmp_path


def _good_vader(n=40):
    return "\r\n".join(f"{i}\t{(-1) ** i * (1 + i % 3):.2f}\ttext number {i}" for i in range(1, n + 1))


def test_synthetic_vader_loads_and_drops_neutral(tmp_path):
    text = _good_vader() + "\r\n41\t0.2\tmeh"
    d = _vader_dir(tmp_path, text)
    t = get_task("vader_tweets")
    exs = t.load_raw("train", d) + t.load_raw("validation", d)
    assert len(exs) == 40 and all(ex.uid.startswith("vader/tweets_GroundTruth.txt:") for ex in exs)
    r = get_task("vader_tweets_rating")
    assert len(r.load_raw("train", d) + r.load_raw("validation", d)) == 41


@pytest.mark.parametrize("task", ["vader_tweets", "vader_tweets_rating"])
@pytest.mark.parametrize("bad,line,msg", [
    ("7\tnot-a-number\tsome text", 7, "not a number"),
    ("7\t1.5", 7, "expected 3 tab-separated fields"),
    ("7 1.5 some text", 7, "wrong delimiter"),
])
def test_bad_vader_rows_name_file_and_line(tmp_path, task, bad, line, msg):
    lines = _good_vader().split("\r\n")
    lines[line - 1] = bad
    d = _vader_dir(tmp_path, "\r\n".join(lines))
    with pytest.raises(DataError, match=rf"tweets_GroundTruth\.txt:{line}\b.*{msg}"):
        get_task(task).load_raw("train", d)


def _bb_dir(tmp_path, text):
    p = tmp_path / "bigbench" / "epistemic_reasoning"
    tmp_path.mkdir(exist_ok=True)
    p.mkdir(parents=True)
    (p / "task.json").write_text(text)
    return tmp_path


def _bb_doc(examples):
    head = '{\n  "name": "x",\n  "description": "a string with \\"examples\\": [ inside",\n  "examples": [\n'
    return head + ",\n".join("    " + json.dumps(e) for e in examples) + "\n  ]\n}\n"


def _ex(i, label="entailment"):
    other = "non-entailment" if label == "entailment" else "entailment"
    return {"input": f"Premise: p{i}. Hypothesis: h{i}.", "target_scores": {label: 1, other: 0}}


def test_read_bigbench_reports_the_line_each_example_starts_on(tmp_path):
    d = _bb_dir(tmp_path, _bb_doc([_ex(i, "entailment" if i % 2 else "non-entailment") for i in range(10)]))
    rows = read_bigbench(d / "bigbench/epistemic_reasoning/task.json")
    assert [line for line, _ in rows] == list(range(5, 15))
    t = get_task("epistemic_reasoning")  # 10 rows < 2 x hold-out: a fifth is held out
    assert len(t.load_raw("train", d)) == 8 and len(t.load_raw("validation", d)) == 2
    d2 = _bb_dir(tmp_path / "one", _bb_doc([_ex(0)]))
    with pytest.raises(DataError, match="too few"):
        t.load_raw("train", d2)


@pytest.mark.parametrize("mutate,msg", [
    (lambda e: e.pop("target_scores"), "no 'target_scores'"),
    (lambda e: e.update(target_scores={"entailment": 1, "maybe": 0}), "options"),
    (lambda e: e.update(target_scores={"entailment": 1, "non-entailment": 1}), "exactly one"),
    (lambda e: e.update(input="no hypothesis here"), "Hypothesis"),
])
def test_bad_bigbench_examples_name_file_and_line(tmp_path, mutate, msg):
    examples = [_ex(i, "entailment" if i % 2 else "non-entailment") for i in range(900)]
    mutate(examples[7])  # starts on line 5 + 7
    d = _bb_dir(tmp_path, _bb_doc(examples))
    with pytest.raises(DataError, match=rf"task\.json:12\b.*{msg}"):
        get_task("epistemic_reasoning").load_raw("train", d)


@pytest.mark.parametrize("text,line,msg", [
    ('{\n  "examples": [\n    {"input": "a", }\n  ]\n}\n', 3, "invalid JSON"),
    ('{\n  "name": "x"\n}\n', 1, "no 'examples' list"),
    ('{\n  "examples": [\n    "just a string"\n  ]\n}\n', 3, "expected an example object"),
    ('{\n  "examples": [\n    {"input": "a"}\n', 4, "truncated|invalid JSON"),
    ('', None, "empty file"),
])
def test_malformed_task_json(tmp_path, text, line, msg):
    d = _bb_dir(tmp_path, text)
    where = rf"task\.json:{line}\b.*" if line else r"task\.json: "
    with pytest.raises(DataError, match=rf"{where}({msg})"):
        get_task("epistemic_reasoning").load_raw("train", d)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(DataError, match=r"vader/tweets_GroundTruth\.txt"):
        get_task("vader_tweets").load_raw("train", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        get_task("vader_tweets").load_raw("test", tmp_path)
