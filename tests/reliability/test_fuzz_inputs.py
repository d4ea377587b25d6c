"""Hostile input, property-based (hypothesis, derandomized, bounded): every task's data files,
the raw readers, and the config parser.

The contract: bad input gives mptune's own error (DataError / ConfigError) whose message names
the file (and line) or the key; never another exception type, never a silent drop. What is
accepted must be sane (labels inside the label set, finite regression targets). Any other
exception fails the test: the gaps the fuzzing once found are fixed (regression tests at the end)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mptune.config import ConfigError, parse
from mptune.tasks import TaskKind, get_task, list_tasks
from mptune.tasks.readers import DataError, read_csv, read_jsonl, read_rows, read_squad, read_tsv

from .tally import tally

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


# -- strategies ------------------------------------------------------------------------

TOKENS = ["0", "1", "2", "3", "-1", "entailment", "not_entailment", "neutral", "contradiction", "True", "False",
          "true", "positive", "1.5", "5.0", "-3.2", "nan", "inf", "-inf", "1e309", "", " ", "None", "null", "[1]",
          "{}", "é", "\u00a0", "\x00", "\ufeff", "\"quoted\"", "a\\tb"]
CELL = st.one_of(st.sampled_from(TOKENS), st.text(st.characters(blacklist_characters="\t\n\r", codec="utf-8"), max_size=15))
HUGE = "w" * 200_000
JSONV = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 10 ** 20), st.sampled_from(TOKENS),
                               st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10)),
                     lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
                     max_leaves=6)
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]


@st.composite
def tabular(draw, fields: list[str], sep: str, header: bool) -> bytes:
    cols = list(fields)
    mode = draw(st.sampled_from(["ok", "ok", "drop", "extra", "shuffle"]))
    if mode == "drop" and len(cols) > 1:
        cols.pop(draw(st.integers(0, len(cols) - 1)))
    elif mode == "extra":
        cols.append("extra")
    elif mode == "shuffle":
        cols = draw(st.permutations(cols))
    lines = [sep.join(cols)] if header else []
    for _ in range(draw(st.integers(0, 5))):
        n = len(cols) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        cells = [draw(CELL) for _ in range(max(n, 0))]
        if cells and draw(st.integers(0, 20)) == 0:
            cells[0] = HUGE  # a huge line
        lines.append(sep.join(cells))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n", "\n\n", "\n \n"]))
    return text.encode(draw(st.sampled_from(ENCODINGS)), "replace")


@st.composite
def jsonl(draw, fields: list[str]) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["{", "[]", "1", "null", "", " ", '{"a":}', '"x"', "{'a': 1}"])))
            continue
        obj = {f: draw(JSONV) for f in fields if draw(st.integers(0, 9))}
        if draw(st.booleans()):  # plausible values for most fields
            for f in fields:
                if f in obj and draw(st.booleans()):
                    obj[f] = draw(st.sampled_from(TOKENS + [0, 1, True, False]))
        lines.append(json.dumps(obj, allow_nan=True))
    return "\n".join(lines).encode(draw(st.sampled_from(ENCODINGS)), "replace")


@st.composite
def squad_doc(draw) -> bytes:
    def qa():
        d = {k: draw(JSONV) for k in ("id", "question") if draw(st.integers(0, 9))}
        if draw(st.booleans()):
            d["answers"] = [{"text": draw(JSONV), "answer_start": draw(JSONV)} for _ in range(draw(st.integers(0, 2)))]
        return d

    doc = {"data": [{"title": draw(JSONV), "paragraphs": [{"context": draw(JSONV), "qas": [qa() for _ in range(2)]}
                                                          for _ in range(draw(st.integers(0, 2)))]}]}
    if draw(st.integers(0, 4)) == 0:
        doc = draw(st.sampled_from([[], 5, {}, {"data": 1}, {"data": [1]}, {"data": [{"paragraphs": 1}]},
                                    {"data": [{"paragraphs": [1]}]}, {"data": [{"paragraphs": [{"qas": 1}]}]},
                                    {"data": [{"paragraphs": [{"qas": [1]}]}]}]))
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def bigbench_doc(draw) -> bytes:
    ex = [{"input": draw(JSONV), "target_scores": draw(st.one_of(JSONV, st.dictionaries(
        st.sampled_from(["True", "False", "Neither", "entailment", "neutral", "contradiction", "correct", "incorrect",
                         "non-entailment", "x"]), st.sampled_from([0, 1, 0.5, -1, None, "1"]), max_size=3))),
           "target": draw(JSONV)} for _ in range(draw(st.integers(0, 4)))]
    doc = {"examples": ex}
    if draw(st.integers(0, 4)) == 0:
        doc = draw(st.sampled_from([[], {}, {"examples": 1}, {"examples": [1]}, {"examples": [{}]}]))
    return json.dumps(doc, allow_nan=True).encode()


def content_for(task, raw: str):
    rel = task.source.files[raw]
    rel = rel if isinstance(rel, str) else rel[0]
    fmt = task.source.format or ("squad" if rel.endswith(".json") else rel.rsplit(".", 1)[-1])
    cols = list(task.source.fieldnames or [task.source.columns.get(f, f) for f in task.required_fields()])
    headerless = task.source.headerless is True or (isinstance(task.source.headerless, tuple)
                                                    and raw in task.source.headerless)
    garbage = st.binary(max_size=300)
    if fmt == "tsv":
        body = tabular(cols + ["idx"], "\t", not headerless)
    elif fmt == "csv":
        body = tabular(cols, ",", not headerless)
    elif fmt == "jsonl":
        body = jsonl(cols + ["idx"])
    elif fmt == "squad":
        body = squad_doc()
    elif fmt == "bigbench":
        body = bigbench_doc()
    else:
        raise AssertionError(f"no fuzzer for format {fmt!r} ({task.name})")
    return rel, st.one_of(body, body, body, garbage, st.just(b""), st.just(b"\n\n"))


FILE_TASKS = [t.name for t in list_tasks() if t.source.files]


def check_examples(task, examples) -> None:
    for e in examples:
        assert isinstance(e.source, str) and isinstance(e.target, str)
        if task.kind == TaskKind.CLASSIFICATION and e.label is not None:
            assert 0 <= e.label < len(task.choices(e)), (e.label, task.choices(e))
        if task.kind == TaskKind.REGRESSION and e.label is not None:
            assert math.isfinite(e.label)


@pytest.mark.parametrize("name", FILE_TASKS)
def test_task_files_fuzz(tmp_path_factory, name):
    task = get_task(name)
    raw = "train" if "train" in task.source.files else sorted(task.source.files)[0]
    rel, files = content_for(task, raw)
    base = tmp_path_factory.mktemp(f"fz-{name}")

    @FUZZ
    @given(data=files)
    def run(data):
        shutil.rmtree(base, ignore_errors=True)
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        try:
            examples = task.load("train", data_dir=base)
        except DataError as e:
            assert str(base) in str(e) or task.name in str(e), str(e)
            tally("bad inputs: task data files (every file-backed task)")
            return
        check_examples(task, examples)
        tally("bad inputs: task data files (every file-backed task)")

    run()


# -- the readers: nothing dropped, the bad line named ---------------------------------------

ROW = st.lists(st.text(st.characters(blacklist_characters="\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                     blacklist_categories=("Cs",)), min_size=1, max_size=8).filter(str.strip),
               min_size=3, max_size=3)


# fault is a parameter, not drawn: how many files are valid vs malformed must not depend on hypothesis'
# draws (they shift with the modules already imported), so the tally is the same in every run.
@pytest.mark.parametrize("fault", ["none", "fields", "json"])  # "json": a truncated jsonl line ("fields" in tsv/csv)
@FUZZ
@given(rows=st.lists(ROW, min_size=1, max_size=8), bad=st.integers(0, 8), kind=st.sampled_from(["tsv", "csv", "jsonl"]))
def test_readers_keep_every_row_and_name_the_bad_line(tmp_path_factory, fault, rows, bad, kind):
    path = tmp_path_factory.getbasetemp() / f"rows.{kind}"
    header = ["a", "b", "c"]
    bad = min(bad, len(rows) - 1)
    if kind == "tsv":
        lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
        if fault != "none":
            lines[bad + 1] = "\t".join(rows[bad][:2])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif kind == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow(r[:2] if (fault != "none" and i == bad) else r)
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        lines = [json.dumps(dict(zip(header, r))) for r in rows]
        if fault == "fields":
            lines[bad] = json.dumps(dict(zip(header[:2], rows[bad][:2])))
        elif fault == "json":
            lines[bad] = lines[bad][:-1]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        got = read_rows(path, kind, required=header)
    except DataError as e:
        assert fault != "none", e
        if kind != "csv":  # csv rows may span lines; its reader reports the physical line it stopped at
            line = bad + (2 if kind == "tsv" else 1)
            assert str(e).startswith(f"{path}:{line}:"), (str(e), line)
        else:
            assert str(e).startswith(f"{path}:")
        tally("bad inputs: malformed rows among good ones (named file:line)")
        return
    assert fault == "none", "a malformed row was accepted"
    assert [[r[h] for h in header] for _, r in got] == rows  # every row, unchanged, in order
    tally("valid inputs: rows read back exactly (no silent drop)")


@FUZZ
@given(data=st.binary(max_size=400), kind=st.sampled_from(["tsv", "csv", "jsonl", "squad"]))
def test_readers_on_random_bytes(tmp_path_factory, data, kind):
    path = tmp_path_factory.getbasetemp() / f"bytes.{kind}"
    path.write_bytes(data)
    try:
        read_rows(path, kind, required=["a"] if kind != "squad" else ())
    except DataError as e:
        assert str(e).startswith(str(path)), str(e)
    tally("bad inputs: random bytes into the readers")


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), jsonl(["sentence1", "sentence2", "source", "id"])))
def test_predict_input_fuzz(tmp_path_factory, data):
    from mptune.recipes.evaluate import read_predict_input

    path = tmp_path_factory.getbasetemp() / "predict_in.jsonl"
    path.write_bytes(data)
    try:
        examples = read_predict_input(path, get_task("rte"))
    except DataError as e:
        assert str(e).startswith(str(path)), str(e)
    else:
        assert examples and all(isinstance(e.source, str) for e in examples)
    tally("bad inputs: predict input files")


def test_encodings_huge_lines_and_empty_files(tmp_path):
    p = tmp_path / "x.tsv"
    for enc in ("utf-16", "latin-1", "cp1252", "utf-32"):
        p.write_bytes("a\tb\nçé\tü\n".encode(enc))
        with pytest.raises(DataError, match=rf"{p}:\d+: not valid UTF-8"):
            read_tsv(p, required=["a"])
        tally("bad inputs: wrong encodings, empty/blank files, huge lines")
    for text in ("", "\n", "\n\n  \n"):
        p.write_text(text)
        with pytest.raises(DataError, match="empty file"):
            read_tsv(p)
        tally("bad inputs: wrong encodings, empty/blank files, huge lines")
    p.write_text("a\tb\n" + "x" * 2_000_000 + "\ty\n")  # a 2 MB line in a tsv loads whole
    assert len(read_tsv(p)[0][1]["a"]) == 2_000_000
    c = tmp_path / "x.csv"
    c.write_text("a,b\n" + "x" * 200_000 + ",y\n")  # csv has a field-size limit: a clear error, not a drop
    with pytest.raises(DataError, match=rf"{c}:\d+: malformed CSV .*field larger than field limit"):
        read_csv(c)
    j = tmp_path / "x.jsonl"
    j.write_text(json.dumps({"a": "x" * 2_000_000}) + "\n")
    assert len(read_jsonl(j, required=["a"])[0][1]["a"]) == 2_000_000
    tally("bad inputs: wrong encodings, empty/blank files, huge lines", 3)


def test_labels_outside_the_label_set(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    for bad in ("maybe", "2", "-1", "entailment ", "ENTAILMENT", "1.0", ""):
        (d / "train.tsv").write_text(f"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\t{bad}\n")
        try:
            exs = get_task("rte").load_raw("train", tmp_path)
        except DataError as e:
            assert "train.tsv:3:" in str(e), str(e)
        else:  # accepted only when it is a valid spelling of a label
            assert [e.label for e in exs][1] in (0, 1) and bad.strip().lower() in ("entailment", "1", "1.0"), bad
        tally("bad inputs: labels outside the label set")


# -- config parser ----------------------------------------------------------------------

from mptune.recipes.prompt_tune import PromptTuneConfig  # noqa: E402

BASE = {"model": {"name": "tiny"}, "task": "rte", "output_dir": "/tmp/out"}
IMPOSSIBLE = {  # key -> values that must be refused
    "prompt.length": [0, -1, -100], "train.lr": [0, 0.0, -0.3, -1e-9], "train.batch_size": [0, -4],
    "train.max_steps": [0, -1], "train.grad_accum": [0, -2, 3, 5], "train.warmup_steps": [-1, 10 ** 6],
    "train.weight_decay": [-0.1], "train.max_grad_norm": [0, -1.0], "train.eval_every": [-1],
    "train.eval_batch_size": [0], "train.checkpoint_every": [-3], "train.log_every": [0],
    "data.max_source_length": [0, -1], "data.max_target_length": [0], "data.train_limit": [0, -5],
    "data.few_shot_k": [0], "prompt.init_vocab_size": [0], "data.few_shot_dev": ["K", "all", ""],
    "data.few_shot_draw": [-1],
    "train.mixed_precision": ["fp8", "FP16", ""], "prompt.init": ["zeros", "VOCAB", ""],
}
WRONG_TYPES = {"prompt.length": ["abc", "1.5", "[1]"], "train.lr": ["abc", "nan", "inf", "[0.3]"],
               "train.batch_size": ["x", "2.5", "{}"], "train.max_steps": ["1e9", "ten"]}


def _cfg_error(data=None, overrides=None) -> str:
    try:
        parse(PromptTuneConfig, data or dict(BASE), overrides or [])
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"accepted: {data} {overrides}")


@FUZZ
@given(key=st.sampled_from(sorted(IMPOSSIBLE)), data=st.data(), how=st.sampled_from(["override", "yaml"]))
def test_config_refuses_impossible_values_naming_the_key(key, data, how):
    value = data.draw(st.sampled_from(IMPOSSIBLE[key]))
    if how == "override":
        msg = _cfg_error(overrides=[f"{key}={value}"])
    else:
        sec, k = key.split(".")
        msg = _cfg_error({**BASE, sec: {k: value}})
    assert key in msg or key.split(".")[-1] in msg, msg
    tally("bad inputs: config impossible values / wrong types")


@FUZZ
@given(key=st.sampled_from(sorted(WRONG_TYPES)), data=st.data())
def test_config_refuses_wrong_types_naming_the_key(key, data):
    value = data.draw(st.sampled_from(WRONG_TYPES[key]))
    msg = _cfg_error(overrides=[f"{key}={value}"])
    assert key in msg, msg
    tally("bad inputs: config impossible values / wrong types")


IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@FUZZ
@given(section=st.sampled_from([None, "model", "prompt", "data", "train"]), key=IDENT, value=st.integers(),
       how=st.sampled_from(["override", "yaml"]))
def test_config_refuses_unknown_keys_naming_them(section, key, value, how):
    known = {None: {"model", "task", "output_dir", "prompt", "data", "train", "resume", "config"},
             "model": {"name", "gguf_file", "dtype", "attn_implementation", "gradient_checkpointing",
                       "trust_remote_code", "fast_prefix"}}
    import dataclasses

    from mptune import config as C

    for sec, cls in (("prompt", C.PromptConfig), ("data", C.DataConfig), ("train", C.TrainConfig),
                     ("model", C.ModelConfig)):
        known[sec] = {f.name for f in dataclasses.fields(cls)}
    assume(key not in known[section])
    full = f"{section}.{key}" if section else key
    if how == "override":
        msg = _cfg_error(overrides=[f"{full}={value}"])
    else:
        d = dict(BASE)
        if section:
            d[section] = {**d.get(section, {}), key: value}
        else:
            d[key] = value
        msg = _cfg_error(d)
    assert key in msg, msg
    tally("bad inputs: config unknown keys")


def _run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io as _io

    from mptune.cli import main

    err = _io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.fixture()
def rank_args(tmp_path, tiny_llama_dir):
    from synthetic import write_glue_rte

    write_glue_rte(tmp_path / "data", n_train=8, n_dev=4)
    return [f"model.name={tiny_llama_dir}", f"data.data_dir={tmp_path / 'data'}", "prompt.length=4",
            "train.max_steps=1", "train.batch_size=2", "tasks=[rte]", f"output_dir={tmp_path / 'out'}"]


def test_rank_larger_than_min_l_d_is_refused(rank_args):
    rc, err = _run_cli(["distill", *rank_args, "distill.shared_init=vocab", "distill.weight=0", "rank=5"])
    assert rc == 2 and "rank: 5 exceeds min(l, d) = 4" in err, err
    tally("bad inputs: config impossible values / wrong types")


# -- the gaps the fuzzing found, now fixed: each gives mptune's own error naming the place ----

def test_regression_label_inf_is_a_data_error(tmp_path):
    d = tmp_path / "glue" / "STS-B"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\tinf\n")
    with pytest.raises(DataError, match=r"train.tsv:2.*finite"):
        get_task("stsb").load_raw("train", tmp_path)


@pytest.mark.parametrize("doc", [{"data": [1]}, {"data": [{"paragraphs": 1}]}, {"data": [{"paragraphs": [1]}]},
                                 {"data": [{"paragraphs": [{"context": "c", "qas": [1]}]}]}])
def test_squad_non_object_entries_are_data_errors(tmp_path, doc):
    p = tmp_path / "x.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"x.json: data\[0\]"):
        read_squad(p)


def test_large_task_with_too_few_train_rows_names_the_file(tmp_path):
    d = tmp_path / "glue" / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match=r"SST-2/train.tsv has 1 training examples"):
        get_task("sst2").load("train", tmp_path)


def test_config_null_value_names_key():
    assert "train.batch_size" in _cfg_error({**BASE, "train": {"batch_size": None}})


def test_config_section_not_a_mapping_names_key():
    assert "train: expected a mapping" in _cfg_error({**BASE, "train": [1, 2]})


def test_adapt_rank_without_source_is_refused(rank_args):
    rc, err = _run_cli(["adapt", *rank_args, "rank=40"])
    assert rc == 2 and "rank: 40 exceeds min(l, d) = 4" in err, err


def test_predict_input_not_utf8_names_file_and_line(tmp_path):
    from mptune.recipes.evaluate import read_predict_input

    p = tmp_path / "in.jsonl"
    p.write_bytes('{"source": "ok"}\n{"source": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"in.jsonl:2: not valid UTF-8"):
        read_predict_input(p, get_task("rte"))


def test_an_escaping_exception_fails_the_fuzz(tmp_path_factory, monkeypatch):
    """No exception type is tolerated any more: an old gap coming back (here OverflowError escaping a
    function named to_example, which the harness used to excuse) fails the fuzz test."""

    def to_example(path, kind, required=()):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(sys.modules[__name__], "read_rows", to_example)
    with pytest.raises(OverflowError):
        test_readers_on_random_bytes(tmp_path_factory)
