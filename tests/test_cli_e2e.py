"""End to end through the CLI: prompt-tune -> save -> load -> evaluate -> predict,
on tiny random T5 and Llama models, for a label task, regression and QA."""

import json
import math

import pytest
from safetensors.torch import load_file

from mptune.cli import main
from synthetic import write_all


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def _checksum(model_dir):
    import hashlib

    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


COMMON = ["prompt.length=4", "train.batch_size=4", "train.eval_every=2", "train.eval_limit=6",
          "data.max_source_length=48", "data.max_target_length=8", "data.eval_limit=12", "train.lr=0.3", "train.log_every=1"]


@pytest.mark.parametrize("task", ["rte", "stsb", "squad"])
def test_prompt_tune_evaluate_predict(tmp_path, tiny_model_dir, data_dir, task, capsys):
    before = _checksum(tiny_model_dir)
    out = tmp_path / "run"
    rc = main(["prompt-tune", f"model.name={tiny_model_dir}", f"task={task}", f"output_dir={out}",
               f"data.data_dir={data_dir}", "train.max_steps=4", *COMMON])
    assert rc == 0
    # self-describing folder
    for f in ("config.yaml", "stage.json", "prompt.safetensors", "metrics.json", f"predictions_{task}_test.jsonl",
              "log.jsonl"):
        assert (out / f).is_file(), f
    from mptune.utils import environment  # the versions and device the stage ran on: results can be told apart
    assert json.loads((out / "stage.json").read_text())["environment"] == environment()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == 4 * 32 and "score" in metrics["tasks"][task]["test"]
    n_rows = len((out / f"predictions_{task}_test.jsonl").read_text().splitlines())
    assert metrics["tasks"][task]["n_test"] == n_rows and 0 < n_rows <= 12  # data.eval_limit
    assert set(load_file(str(out / "prompt.safetensors"))) == {"prompt"}  # backbone never saved
    assert _checksum(tiny_model_dir) == before
    logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]

    # reload + evaluate gives the same test metrics as the end of training
    assert main(["evaluate", f"prompt={out}", "split=test", f"data.data_dir={data_dir}", "data.eval_limit=12"]) == 0
    ev = json.loads((out / f"eval-{task}-test" / "metrics.json").read_text())
    assert ev["metrics"] == pytest.approx(metrics["tasks"][task]["test"])

    # predict on a user file with template fields
    row = {"rte": {"sentence1": "A cat sat.", "sentence2": "A cat sits."},
           "stsb": {"sentence1": "A cat sat.", "sentence2": "A dog ran."},
           "squad": {"question": "Who wrote it?", "context": "Ada wrote it."}}[task]
    inp, pred = tmp_path / "in.jsonl", tmp_path / "pred.jsonl"
    inp.write_text(json.dumps(row) + "\n" + json.dumps({"source": "free text input"}) + "\n")
    assert main(["predict", f"prompt={out}", f"input={inp}", f"output={pred}"]) == 0
    rows = [json.loads(l) for l in pred.read_text().splitlines()]
    assert len(rows) == 2 and all("prediction" in r for r in rows)
    if task == "rte":
        assert rows[0]["prediction"] in {"entailment", "not_entailment"}
        for r in rows:  # every label's score: summed log-prob and its softmax over the labels
            s = r["scores"]
            assert list(s) == ["entailment", "not_entailment"]
            probs = [v["prob"] for v in s.values()]
            assert sum(probs) == pytest.approx(1.0, abs=1e-12) and all(0 < p < 1 for p in probs)
            assert all(v["logprob"] < 0 for v in s.values())
            assert max(s, key=lambda k: s[k]["prob"]) == max(s, key=lambda k: s[k]["logprob"]) == r["prediction"]
            assert list(s)[r["prediction_index"]] == r["prediction"]
            z = sum(math.exp(v["logprob"]) for v in s.values())
            assert all(v["prob"] == pytest.approx(math.exp(v["logprob"]) / z) for v in s.values())
    else:  # generation and regression: the text only
        assert all("scores" not in r for r in rows)


def test_training_learns_a_separable_task(tmp_path, tiny_llama_dir, data_dir):
    """RTE-like synthetic data where label = (s1 == s2): the loss must go down."""
    out = tmp_path / "run"
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", "task=rte", f"output_dir={out}",
                 f"data.data_dir={data_dir}", "train.max_steps=30", "train.eval_every=0", *COMMON]) == 0
    losses = [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines() if "loss" in l]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_cli_errors_are_clear(tmp_path, capsys, tiny_llama_dir):
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", "task=rte", f"output_dir={tmp_path}",
                 "train.bogus=1"]) != 0
    assert "bogus" in capsys.readouterr().err
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", "task=nope", f"output_dir={tmp_path}"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "valid commands" in capsys.readouterr().err
    assert main(["evaluate", f"prompt={tmp_path / 'missing'}", f"model.name={tiny_llama_dir}"]) == 2
    assert "not found" in capsys.readouterr().err


def test_help_documents_options(capsys):
    assert main(["prompt-tune", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--train.lr" in text and "Peak learning rate" in text and "--prompt.length" in text
    assert main(["predict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert '"scores": {label: {"logprob":' in text and "softmax of those over the labels" in text


def test_user_errors_print_one_line_without_traceback(tmp_path, capsys, monkeypatch, tiny_llama_dir):
    """Every MptuneError (here: unknown task, missing model folder, bad value) -> message, exit 2;
    any other exception is a bug and keeps its traceback."""
    cases = [(["task=nope"], "unknown task 'nope'"),
             ([f"model.name={tmp_path / 'no-model'}"], "model.name: local model folder not found"),
             (["train.max_steps=abc"], "train.max_steps")]
    for extra, msg in cases:
        argv = ["prompt-tune", f"model.name={tiny_llama_dir}", "task=rte", f"output_dir={tmp_path}", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("mptune prompt-tune: error: ") and msg in err and "Traceback" not in err
        assert err.count("\n") <= 2, err

    from mptune.recipes import tasks as tasks_recipe

    def boom(cfg):
        raise KeyError("a bug, not a message for the user")

    monkeypatch.setattr(tasks_recipe, "list_tasks_cmd", boom)
    with pytest.raises(KeyError, match="a bug"):  # no longer swallowed because its message has a space
        main(["tasks"])


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`mptune tasks | head`: the reader goes away before mptune writes; no traceback, exit 141 (SIGPIPE)."""
    import os
    import subprocess
    import sys

    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "mptune.cli", "tasks"]
    r, w = os.pipe()
    os.close(r)  # a reader that closed early: every write now fails with EPIPE
    try:
        proc = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(w)
    assert proc.stderr.decode() == "" and proc.returncode == 141
    ok = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    assert ok.returncode == 0 and b"sst2" in ok.stdout  # the same command, read to the end
