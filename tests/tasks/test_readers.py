"""Readers: formats, and bad input failing with file:line and what was expected."""

import re

import pytest

from mptune.tasks import DataError, Source, Task, TaskKind
from mptune.tasks.readers import read_csv, read_jsonl, read_squad, read_tsv


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_tsv_header_bom_crlf_and_no_quoting(tmp_path):
    p = write(tmp_path, "a.tsv", '\ufeffQuality\ts\r\n1\tsays "hi\r\n0\tb\r\n')
    rows = read_tsv(p, required=["Quality"])
    assert rows == [(2, {"Quality": "1", "s": 'says "hi'}), (3, {"Quality": "0", "s": "b"})]


def test_tsv_headerless(tmp_path):
    p = write(tmp_path, "cola.tsv", "gj04\t1\t\tGood.\ngj04\t0\t*\tBad.")  # no final newline
    rows = read_tsv(p, fieldnames=("source", "label", "mark", "sentence"))
    assert [r["sentence"] for _, r in rows] == ["Good.", "Bad."]
    assert rows[1][0] == 2


def test_tsv_missing_column(tmp_path):
    p = write(tmp_path, "train.tsv", "sentence\tscore\nhi\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: missing column\(s\) \['label'\]"):
        read_tsv(p, required=["sentence", "label"])


def test_tsv_wrong_delimiter(tmp_path):
    p = write(tmp_path, "x.tsv", "sentence\tlabel\nhello,1\n")
    with pytest.raises(DataError, match=r"x\.tsv:2: expected 2 tab-separated fields .*got 1 \(wrong delimiter"):
        read_tsv(p)


def test_tsv_truncated_line(tmp_path):
    p = write(tmp_path, "x.tsv", "a\tb\tc\n1\t2\t3\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.tsv:3: expected 3 tab-separated fields \['a', 'b', 'c'\], got 2"):
        read_tsv(p)


def test_tsv_blank_line_inside_is_an_error(tmp_path):
    p = write(tmp_path, "x.tsv", "a\tb\n1\t2\n\n3\t4\n")
    with pytest.raises(DataError, match=r"x\.tsv:3:"):
        read_tsv(p)


@pytest.mark.parametrize("reader", [read_tsv, read_csv, read_jsonl, read_squad])
def test_empty_file(tmp_path, reader):
    p = write(tmp_path, "empty.txt", "\n")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        reader(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_tsv(tmp_path / "nope.tsv")


def test_jsonl_invalid_json_and_missing_field(tmp_path):
    p = write(tmp_path, "x.jsonl", '{"a": 1}\n{"a": 2\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid JSON .*expected one JSON object per line"):
        read_jsonl(p)
    p = write(tmp_path, "y.jsonl", '{"a": 1, "t": {"s": 1}}\n{"a": 2, "t": {}}\n')
    with pytest.raises(DataError, match=r"y\.jsonl:2: missing field 't\.s'"):
        read_jsonl(p, required=["a", "t.s"])
    p = write(tmp_path, "z.jsonl", "[1, 2]\n")
    with pytest.raises(DataError, match=r"z\.jsonl:1: expected a JSON object"):
        read_jsonl(p)


def test_csv_quoting_and_errors(tmp_path):
    p = write(tmp_path, "x.csv", 'label,text\n1,"a, quoted\nline"\n2,b\n')
    rows = read_csv(p)
    assert [r for _, r in rows] == [{"label": "1", "text": "a, quoted\nline"}, {"label": "2", "text": "b"}]
    p = write(tmp_path, "bad.csv", "label,text\n1,a\n2\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 2 comma-separated fields"):
        read_csv(p)
    p = write(tmp_path, "tabs.csv", "label\ttext\n1\ta\n")
    with pytest.raises(DataError, match=r"tabs\.csv:1: missing column"):
        read_csv(p, required=["label", "text"])


def test_squad_reader(tmp_path):
    p = write(tmp_path, "s.json", '{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": ['
                                  '{"id": "q1", "question": "?", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}')
    [(qid, row)] = read_squad(p)
    assert qid == "q1" and row["answers"] == {"text": ["c"], "answer_start": [0]}
    p = write(tmp_path, "bad.json", '{"data": [\n{"title": }]}')
    with pytest.raises(DataError, match=r"bad\.json:2: invalid JSON"):
        read_squad(p)
    p = write(tmp_path, "noq.json", '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x"}]}]}]}')
    with pytest.raises(DataError, match=r"noq\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field"):
        read_squad(p)


def _task(tmp_path, files, **kw):
    return Task(name="t", group="test", kind=TaskKind.CLASSIFICATION,
                source=Source(files=files), template="t sentence: {sentence}",
                label_words=("negative", "positive"), split="given",
                split_map={"train": "train", "dev": "dev", "test": "test"}, **kw)


def test_unknown_label_names_file_and_line(tmp_path):
    write(tmp_path, "train.tsv", "sentence\tlabel\ngood\t1\nbad\tnegative\nmeh\tmaybe\n")
    task = _task(tmp_path, {"train": "train.tsv"})
    with pytest.raises(DataError, match=re.escape("train.tsv:4: unknown label 'maybe'; expected one of "
                                                  "['negative', 'positive']")):
        task.load("train", data_dir=tmp_path)


def test_missing_label_in_train_is_an_error(tmp_path):
    write(tmp_path, "train.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b"}\n')
    task = _task(tmp_path, {"train": "train.jsonl"})
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing field 'label'"):
        task.load("train", data_dir=tmp_path)


def test_nothing_dropped(tmp_path):
    write(tmp_path, "train.tsv", "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(50)))
    exs = _task(tmp_path, {"train": "train.tsv"}).load_raw("train", data_dir=tmp_path)
    assert [e.uid for e in exs] == [f"train.tsv:{i + 2}" for i in range(50)]
