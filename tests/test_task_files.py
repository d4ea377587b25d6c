"""Task files (YAML / JSON definitions) wherever a task is named: prompt-tune, evaluate and predict
from the stage folder after the file moved, mixed lists in adapt, a pipeline naming a file,
`mptune tasks check=FILE`, and bad definitions refused before anything is written."""

import json
import random
import shutil

import pytest
import yaml

from mptune.cli import main
from mptune.tasks import TaskDefinitionError, get_task, resolve_task, task_from_dict
from mptune.tasks.definition import task_definition
from mptune.tasks.resolve import load_task_file
from synthetic import WORDS, write_all

TINY = ["prompt.length=4", "train.batch_size=4", "train.eval_every=2", "train.eval_limit=6", "train.max_steps=2",
        "data.max_source_length=40", "data.max_target_length=6", "train.lr=0.3"]


def write_task(folder, name="colour", n=(12, 6, 6), seed=0, fmt="yaml", **extra):
    """A made-up two-class task: is a colour word in the sentence? Files next to the definition."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in zip(("train", "dev", "test"), n):
        rows = []
        for i in range(k):
            words = [rng.choice(WORDS) for _ in range(5)]
            rows.append({"text": " ".join(words), "label": "yes" if {"red", "blue"} & set(words) else "no"})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = {"name": name, "files": {s: f"{s}.jsonl" for s in ("train", "dev", "test")},
         "template": "colour: {text}", "label_words": ["no", "yes"], **extra}
    f = folder / f"{name}.{fmt}"
    f.write_text(json.dumps(d, indent=1) if fmt == "json" else yaml.safe_dump(d, sort_keys=False))
    return f


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def test_task_file_through_prompt_tune_then_evaluate_and_predict_after_it_moved(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = write_task(tmp_path / "mine")
    out = tmp_path / "run"
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", "task=mine/colour.yaml", f"output_dir={out}", *TINY]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["task"] == "mine/colour.yaml"  # what the user wrote
    saved = yaml.safe_load((out / "tasks" / "colour.yaml").read_text())
    assert saved["files"]["train"] == str(tmp_path / "mine" / "train.jsonl")  # resolved, absolute
    metrics = json.loads((out / "metrics.json").read_text())

    f.rename(tmp_path / "elsewhere.yaml")  # the definition moves away; the folder still knows the task
    assert main(["evaluate", f"prompt={out}", "split=test"]) == 0
    ev = json.loads((out / "eval-colour-test" / "metrics.json").read_text())
    assert ev["examples"] == 6 and ev["metrics"] == pytest.approx(metrics["tasks"]["colour"]["test"])
    assert (out / "eval-colour-test" / "tasks" / "colour.yaml").is_file()

    inp, pred = tmp_path / "in.jsonl", tmp_path / "pred.jsonl"
    inp.write_text(json.dumps({"text": "a red car"}) + "\n")
    shutil.rmtree(tmp_path / "mine")  # predict needs only the template and labels
    assert main(["predict", f"prompt={out}", f"input={inp}", f"output={pred}"]) == 0
    row = json.loads(pred.read_text())
    assert row["source"] == "colour: a red car" and row["prediction"] in {"no", "yes"} and set(row["scores"]) == {"no", "yes"}


def test_mixed_list_in_adapt_the_data_dir_rule_and_export(tmp_path, tiny_t5_dir, data_dir):
    f = write_task(tmp_path / "mine", fmt="json")
    out = tmp_path / "adapt"
    # rte comes from data.data_dir; colour's files are not there, so they are read next to colour.json
    assert main(["adapt", f"model.name={tiny_t5_dir}", f"tasks=[rte,{f}]", f"output_dir={out}",
                 f"data.data_dir={data_dir}", *TINY]) == 0
    from mptune.prompts import load_prompt

    _, meta = load_prompt(out)
    assert meta.tasks == ["rte", "colour"]
    assert set(json.loads((out / "metrics.json").read_text())["tasks"]) == {"rte", "colour"}
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["colour.yaml"]  # registry tasks need no copy

    # a relative data path is looked up under data_dir first, when the file is there
    other = write_task(tmp_path / "other", seed=1)
    t = resolve_task(str(f), data_dir=other.parent)
    assert t.source.files["train"] == str(other.parent / "train.jsonl")
    (other.parent / "dev.jsonl").unlink()
    assert resolve_task(str(f), data_dir=other.parent).source.files["dev"] == str(tmp_path / "mine" / "dev.jsonl")

    # the definition travels through a PEFT export and back: evaluate works on the imported folder
    f.unlink()
    assert main(["export-peft", f"prompt={out}", f"output_dir={tmp_path / 'peft'}"]) == 0  # one folder per task
    assert (tmp_path / "peft" / "colour" / "tasks" / "colour.yaml").is_file()
    assert main(["export-peft", f"prompt={tmp_path / 'peft' / 'colour'}", f"output_dir={tmp_path / 'back'}",
                 "direction=import"]) == 0
    assert (tmp_path / "back" / "tasks" / "colour.yaml").is_file()
    assert main(["evaluate", f"prompt={tmp_path / 'back'}", "data.eval_limit=4"]) == 0
    assert json.loads((tmp_path / "back" / "eval-colour-test" / "metrics.json").read_text())["examples"] == 4


def test_pipeline_names_a_task_file(tmp_path, tiny_llama_dir, data_dir):
    f = write_task(tmp_path / "mine")
    steps = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "eval_limit": 4, "eval_batch_size": 8}
    cfg = {"model": {"name": str(tiny_llama_dir)}, "sources": ["rte", str(f)], "targets": [str(f)],
           "output_dir": str(tmp_path / "run"), "methods": ["pt", "mpt"], "seeds": [1], "prompt": {"length": 4},
           "data": {"data_dir": str(data_dir), "max_source_length": 40, "max_target_length": 6, "eval_limit": 8},
           "teacher_train": steps, "source_train": steps, "target_train": steps}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "p.yaml")]) == 0
    run = tmp_path / "run"
    for stage in ("teachers/colour", "source/mpt", "targets/full/mpt/seed-1/colour", "targets/full/pt/seed-1/colour"):
        assert (run / stage / "stage.json").is_file(), stage
    assert (run / "source/mpt/tasks/colour.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["targets"] == ["colour"] and set(summary["settings"]["full"]["mpt"]["tasks"]) == {"colour"}


def test_tasks_check_reports_splits_examples_and_labels(tmp_path, capsys):
    f = write_task(tmp_path, n=(30, 0, 0), files={"train": "train.jsonl", "validation": "dev.jsonl"})
    (tmp_path / "dev.jsonl").write_text((tmp_path / "train.jsonl").read_text())  # 30 rows, halved into dev/test
    assert main(["tasks", f"check={f}"]) == 0
    out = capsys.readouterr().out
    assert f"task file: {f}" in out and "label words: 0='no', 1='yes'" in out
    assert "split rule: small (" in out and "paper splits: train 30, dev 15, test 15" in out
    for split in ("train", "dev", "test"):
        assert f"{split} example (" in out
    assert "  source: colour: " in out and "problems: none" in out


def test_tasks_check_looks_up_relative_files_under_mptune_data_dir(tmp_path, capsys, monkeypatch):
    # the data files live in the data folder, the definition elsewhere: $MPTUNE_DATA_DIR finds them, as in `run`
    write_task(tmp_path / "data" / "colour")
    d = yaml.safe_load((tmp_path / "data" / "colour" / "colour.yaml").read_text())
    d["files"] = {s: f"colour/{s}.jsonl" for s in ("train", "dev", "test")}
    f = tmp_path / "defs" / "colour.yaml"
    f.parent.mkdir()
    f.write_text(yaml.safe_dump(d))
    monkeypatch.delenv("MPTUNE_DATA_DIR", raising=False)
    assert main(["tasks", f"check={f}"]) == 2
    assert "files.train: data file not found: 'colour/train.jsonl'" in capsys.readouterr().out
    monkeypatch.setenv("MPTUNE_DATA_DIR", str(tmp_path / "data"))
    assert main(["tasks", f"check={f}"]) == 0
    out = capsys.readouterr().out
    assert "paper splits: train 12, dev 6, test 6" in out and "problems: none" in out


def test_tasks_check_lists_every_problem_with_line_and_key(tmp_path, capsys):
    f = write_task(tmp_path)
    (tmp_path / "dev.jsonl").write_text('{"text": "a red cat", "label": "maybe"}\n{"text": "x", "label": "perhaps"}\n')
    text = f.read_text().replace("template: 'colour: {text}'", "template: 'colour: {text} {extra}'")
    f.write_text(text + "labelwords: [a]\n")
    assert main(["tasks", f"check={f}"]) == 2
    out, err = capsys.readouterr()
    lines = f.read_text().splitlines()
    line_of = lambda key: next(i for i, l in enumerate(lines, 1) if l.startswith(key + ":"))  # noqa: E731
    assert f"{f}:{line_of('labelwords')}: labelwords: unknown key (did you mean 'label_words'?)" in out
    assert "problems: 1" in out and "1 problem(s) in" in err
    f.write_text(text)  # the definition is fine now; the data is not: every problem, each with its key
    assert main(["tasks", f"check={f}"]) == 2
    out = capsys.readouterr().out
    assert (f"{f}:{line_of('template')}: template: template field {{extra}} is not a column of "
            f"{tmp_path / 'train.jsonl'}:1 (columns ['label', 'text']), {tmp_path / 'dev.jsonl'}:1") in out
    f.write_text(text.replace(" {extra}", ""))
    assert main(["tasks", f"check={f}"]) == 2
    out = capsys.readouterr().out
    assert "problems: 2" in out
    assert f"{f}:{line_of('label_words')}: label_words: {tmp_path / 'dev.jsonl'}:1: unknown label 'maybe'" in out
    assert f"{tmp_path / 'dev.jsonl'}:2: unknown label 'perhaps'" in out


def _write(folder, name, text):
    (folder / name).write_text(text)


BAD = {  # case -> (how a good definition / folder is broken, what the error must say besides the file)
    "unknown key": (lambda d, folder: d.update(label_word=["no", "yes"]), "label_word: unknown key"),
    "template field": (lambda d, folder: d.update(template="{text} / {title}"), "template: template field {title}"),
    "label outside label_words": (lambda d, folder: _write(folder, "test.jsonl", '{"text": "x", "label": "maybe"}\n'),
                                  "label_words: "),
    "label_map index": (lambda d, folder: d.update(label_map={"no": 0, "yes": 2}), "label_map.yes: maps to 2"),
    "empty split": (lambda d, folder: (d.update(files={"train": "train.jsonl", "validation": "one.jsonl"}),
                                       _write(folder, "one.jsonl", '{"text": "x", "label": "no"}\n')),
                    "split: the dev split is empty"),
    "unreadable data file": (lambda d, folder: d["files"].update(dev="nope.jsonl"),
                             "files.dev: data file not found: 'nope.jsonl'"),
    "empty data file": (lambda d, folder: _write(folder, "dev.jsonl", ""), "files.dev: "),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_definition_is_a_clear_error_and_writes_nothing(tmp_path, tiny_llama_dir, capsys, case):
    f = write_task(tmp_path / "mine")
    change, needle = BAD[case]
    d = yaml.safe_load(f.read_text())
    change(d, f.parent)
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    out = tmp_path / "run"
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", f"task={f}", f"output_dir={out}", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"mptune prompt-tune: error: {f}: " in err and needle in err and "Traceback" not in err, err
    assert not out.exists()
    with pytest.raises(TaskDefinitionError, match="problem"):
        resolve_task(str(f))


def test_bad_task_files_anywhere_leave_no_folder(tmp_path, tiny_llama_dir, capsys):
    f = write_task(tmp_path / "mine", label_words=["no"])
    (tmp_path / "broken.yaml").write_text("name: x\nfiles: [oops\n")
    run = tmp_path / "run"
    for argv, needle in (
            (["adapt", f"model.name={tiny_llama_dir}", f"tasks=[{f}]"], "label_words: "),
            (["distill", f"model.name={tiny_llama_dir}", f"tasks=[{tmp_path / 'broken.yaml'}]", f"teachers_dir={tmp_path}"],
             f"{tmp_path / 'broken.yaml'}:3: invalid YAML (expected ','"),
            (["prompt-tune", f"model.name={tiny_llama_dir}", "task=mine/missing.yaml"],
             "task: task file not found: mine/missing.yaml"),
            (["prompt-tune", f"model.name={tiny_llama_dir}", "task=colr"], "or give a task file")):
        assert main([*argv, f"output_dir={run}"]) == 2
        assert needle in capsys.readouterr().err
        assert not run.exists()
    p = {"model": {"name": str(tiny_llama_dir)}, "sources": ["rte"], "targets": [str(f)], "output_dir": str(run)}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    assert main(["run", str(tmp_path / "p.yaml")]) == 2
    assert "targets" in capsys.readouterr().err and not run.exists()


def test_definition_round_trip(tmp_path):
    f = write_task(tmp_path, label_map={"n": 0, "y": 1}, columns={"text": "body.text"}, score_metrics=["accuracy"],
                   metrics=["accuracy", "macro_f1"], description="d")
    t = load_task_file(f, check_data=False).task
    assert task_from_dict(task_definition(t)) == t
    hub = tmp_path / "hub.yml"
    hub.write_text("name: tweets\nhub: some/dataset\nconfig: en\ntemplate: 'tweet: {text}'\nlabel_words: [a, b]\n")
    t = resolve_task(str(hub), check_data=False)
    assert (t.source.hub, t.source.config, t.source.files) == ("some/dataset", "en", {})
    assert task_from_dict(task_definition(t)) == t
    with pytest.raises(ValueError, match="cannot express"):
        task_definition(get_task("record"))  # a prepare hook has no definition key


def test_one_file_with_a_holdout(tmp_path, capsys):
    """files {all} + holdout: a seeded hold-out becomes the validation split, then the split rule applies;
    the definition round-trips; misuse names the key."""
    f = write_task(tmp_path, n=(40, 0, 0), files={"all": "train.jsonl"}, holdout=10, split="small")
    assert main(["tasks", f"check={f}"]) == 0
    out = capsys.readouterr().out
    assert "paper splits: train 30, dev 5, test 5" in out and "problems: none" in out
    t = load_task_file(f).task
    assert t.holdout == 10 and task_from_dict(task_definition(t)) == t
    for i, (extra, key) in enumerate((({"holdout": None}, "holdout"), ({"holdout": 1}, "holdout"),
                       ({"files": {"all": "train.jsonl", "test": "test.jsonl"}}, "files"),
                       ({"files": {"train": "train.jsonl", "validation": "dev.jsonl"}}, "holdout"))):
        g = write_task(tmp_path / f"bad{i}", n=(40, 4, 4),
                       **{"files": {"all": "train.jsonl"}, "holdout": 10, "split": "small", **extra})
        report = load_task_file(g, check_data=False)
        assert report.task is None and any(p.key == key for p in report.problems), (extra, report.problems)
