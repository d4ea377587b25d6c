"""Loading as a module over plain task records: a one-file set is a field (holdout), not a
subclass; the BIG-bench layout is a reader format; $MPTUNE_DATA_DIR is read in one place."""

import re
from pathlib import Path

import pytest

from mptune.config import DataConfig
from mptune.tasks import DataError, Source, Task, TaskKind, get_task
from mptune.tasks import splits
from mptune.tasks.readers import read_bigbench, read_rows

SRC = Path(__file__).resolve().parents[2] / "src" / "mptune"


def test_data_dir_variable_is_read_in_one_place():
    readers = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if re.search(r"environ[^\n]*MPTUNE_DATA_DIR", p.read_text())]
    assert readers == ["assets.py"]


def _tweets(root: Path, n: int = 40) -> Path:
    (root / "vader").mkdir(parents=True)
    rows = [f"{i}\t{(-1) ** i * (1 + i % 3):.2f}\ttext {i}" for i in range(1, n + 1)] + [f"{n + 1}\t0.1\tmeh"]
    (root / "vader" / "tweets_GroundTruth.txt").write_bytes("\r\n".join(rows).encode())
    return root


def test_environment_data_dir_applies_everywhere(tmp_path, monkeypatch):
    d = _tweets(tmp_path)
    task = get_task("vader_tweets")
    explicit = [e.uid for e in task.load("train", d)]
    monkeypatch.setenv("MPTUNE_DATA_DIR", str(d))
    assert [e.uid for e in task.load("train")] == explicit
    assert task.sizes()["train"] == len(explicit)  # counted from the files, not unknown
    assert DataConfig().resolved_data_dir() == str(d)
    assert DataConfig(data_dir=str(tmp_path / "other")).resolved_data_dir() == str(tmp_path / "other")


def _user_task(tmp_path, **kw) -> Task:
    p = tmp_path / "all.tsv"
    p.write_text("text\tlabel\n" + "".join(f"t{i}\t{i % 2}\n" for i in range(30)) + "bad\tx\n")
    return Task(name="mine", group="custom", kind=TaskKind.CLASSIFICATION, source=Source(files={"all": str(p)}),
                template="{text}", label_words=("no", "yes"), split="small", **kw)


def test_holdout_is_a_record_field(tmp_path):
    task = _user_task(tmp_path, holdout=20, keep=lambda row: row["label"] != "x")
    train, val = task.load_raw("train"), task.load_raw("validation")
    assert len(val) == 6 and len(train) == 24  # 30 rows < 2 x 20: a fifth is held out
    assert not {e.uid for e in train} & {e.uid for e in val}
    assert {e.uid for e in task.load("dev") + task.load("test")} == {e.uid for e in val}
    rest, held = splits.hold_out(train + val, 20)
    assert len(held) == 6 and not {e.uid for e in rest} & {e.uid for e in held}

    def picky(row):
        raise ValueError("no")

    with pytest.raises(DataError, match=r"all\.tsv:2: bad row for task mine \(ValueError: no\)"):
        _user_task(tmp_path, holdout=5, keep=picky).load_raw("train")
    with pytest.raises(DataError, match=r"all\.tsv:32: unknown label 'x'"):  # no keep: the bad row counts
        _user_task(tmp_path, holdout=5).load_raw("train")
    with pytest.raises(DataError, match="does not exist"):
        task.load_raw("test")


@pytest.mark.parametrize("files, holdout", [({"train": "a.tsv"}, 5), ({"all": "a.tsv"}, 1)])
def test_bad_holdout_records_are_refused(files, holdout):
    with pytest.raises(ValueError, match="held-out task"):
        Task(name="x", group="g", kind=TaskKind.CLASSIFICATION, source=Source(files=files), template="{t}",
             label_words=("a", "b"), holdout=holdout)


def test_bigbench_is_a_reader_format(tmp_path):
    p = tmp_path / "task.json"
    p.write_text('{\n "examples": [\n  {"input": "a", "target_scores": {"x": 1}},\n\n  {"input": "b"}\n ]\n}\n')
    assert read_rows(p, "bigbench") == read_bigbench(p) == [
        (3, {"input": "a", "target_scores": {"x": 1}}), (5, {"input": "b"})]
    assert get_task("winowhy").source.format == "bigbench"  # the entries read it through the generic path
