"""The MPT pipeline end to end on tiny models: teachers -> distill -> adapt -> summary;
completed stages are skipped on a rerun."""

import json

import pytest
import yaml

from mptune.cli import main
from synthetic import write_all

STEPS = {"max_steps": 3, "batch_size": 4, "eval_every": 3, "eval_limit": 4, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def _pipeline(tmp_path, model_dir, data_dir, **kw):
    cfg = {"model": {"name": str(model_dir)}, "sources": ["rte", "stsb"], "targets": ["rte", "stsb"],
           "output_dir": str(tmp_path / "run"), "methods": ["pt", "spot", "mpt", "mpt_multi"], "seeds": [1],
           "prompt": {"length": 4}, "data": {"data_dir": str(data_dir), "max_source_length": 40,
                                             "max_target_length": 6, "eval_limit": 8},
           "teacher_train": STEPS, "source_train": STEPS, "target_train": STEPS, **kw}
    f = tmp_path / "pipeline.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_pipeline_end_to_end_and_rerun_skips(tmp_path, tiny_model_dir, data_dir, capsys):
    f = _pipeline(tmp_path, tiny_model_dir, data_dir)
    assert main(["run", str(f)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    full = summary["settings"]["full"]
    assert set(full) == {"pt", "spot", "mpt", "mpt_multi"}
    for method, row in full.items():
        assert set(row["tasks"]) == {"rte", "stsb"} and row["average"]["mean"] == pytest.approx(
            (row["tasks"]["rte"]["mean"] + row["tasks"]["stsb"]["mean"]) / 2)
    l, d = 4, 32
    assert full["pt"]["params_per_task"] == l * d
    assert full["mpt"]["params_per_task"] == l * d + (l + d)
    assert (run / "summary.md").read_text().startswith("### Target tasks")
    for stage in ("teachers/rte", "teachers/stsb", "source/mpt", "targets/full/mpt/seed-1/rte"):
        assert (run / stage / "stage.json").is_file() and (run / stage / "config.yaml").is_file()
    # the distilled prompt file is decomposed with the sources in order
    from mptune.prompts import load_prompt

    tensors, meta = load_prompt(run / "source/mpt")
    assert meta.kind == "decomposed" and meta.tasks == ["rte", "stsb"] and tensors["task_u"].shape == (2, l, 1)
    assert [r["skipped"] for r in summary["stages"]] == [False] * len(summary["stages"])
    capsys.readouterr()
    assert main(["run", str(f)]) == 0
    err = capsys.readouterr().err
    assert err.count("[skip]") == 2 + 1 + 2 * 3 + 1  # teachers, source, pt/spot/mpt per target, mpt_multi
    again = json.loads((run / "summary.json").read_text())
    assert all(r["skipped"] for r in again["stages"]) and again["settings"] == summary["settings"]
    # a rerun under another target budget: refused before anything runs, naming each stale folder and key
    changed = yaml.safe_load(f.read_text())
    changed["target_train"] = {**changed["target_train"], "max_steps": 4}  # the stages share one anchor
    f.write_text(yaml.safe_dump(changed))
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"mpt rte seed 1 ({run / 'targets/full/mpt/seed-1/rte'}): train.max_steps: 3 -> 4" in err
    assert "teacher rte (" not in err and "start " not in err  # teachers' settings did not change


def test_ablations_and_few_shot(tmp_path, tiny_llama_dir, data_dir):
    f = _pipeline(tmp_path, tiny_llama_dir, data_dir, targets=["rte"], methods=["spot", "mpt_no_distill", "mpt_no_decomp"],
                  spot_source="stsb",
                  seeds=[1, 2], few_shot_k=[2], full_data=False, few_shot_draws=1)
    assert main(["run", str(f)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["settings"]) == {"k=2"}
    assert set(summary["settings"]["k=2"]["mpt_no_distill"]["tasks"]["rte"]["per_seed"]) == {"1", "2"}
    no_distill = yaml.safe_load((run / "source/no_distill/config.yaml").read_text())
    assert no_distill["distill"]["weight"] == 0.0
    no_decomp = yaml.safe_load((run / "source/no_decomp/config.yaml").read_text())
    assert no_decomp["decompose"] is False
    from mptune.prompts import load_prompt

    t, _ = load_prompt(run / "source/no_decomp")
    assert (t["task_u"] == 1).all() and (t["task_v"] == 1).all()  # u, v never trained
    spot = yaml.safe_load((run / "targets/k2/spot/seed-1/draw-0/rte/config.yaml").read_text())
    assert spot["prompt"]["init"] == "best_prompt" and spot["prompt"]["init_from"] == [str(run / "teachers/stsb")]
    choice = json.loads((run / "targets/k2/spot/seed-1/draw-0/rte/spot_choice.json").read_text())
    assert choice["pick"] == str(run / "teachers/stsb")  # spot_source: a forced pick
    # few-shot: every target run trained on k = 2 examples per class
    from mptune.tasks import get_task

    for method in ("spot", "mpt_no_distill", "mpt_no_decomp"):
        for seed in (1, 2):
            m = json.loads((run / f"targets/k2/{method}/seed-{seed}/draw-0/rte/metrics.json").read_text())
            entry = m["tasks"]["rte"]
            assert entry["train_per_class"] == {w: 2 for w in get_task("rte").label_words}
            assert entry["train_examples"] == 4 and entry["n_test"] == 8
    teacher = json.loads((run / "teachers/rte/metrics.json").read_text())["tasks"]["rte"]
    assert teacher["train_examples"] > 4  # the teachers are not few-shot


def _config(tmp_path, data_dir, **kw):
    from mptune.config import parse
    from mptune.recipes.pipeline import PipelineConfig

    return parse(PipelineConfig, yaml.safe_load(_pipeline(tmp_path, "tiny", data_dir, **kw).read_text()))


def test_method_settings_give_each_method_its_own_target_run(tmp_path, data_dir):
    """method_settings: PT's own length and lr, MPT's own P* / u, v lrs, MPT*'s own steps; the others keep
    the pipeline's."""
    from mptune.plan import plan

    cfg = _config(tmp_path, data_dir, methods=["pt", "spot", "mpt", "mpt_multi"], seeds=[1], few_shot_k=[2],
                  few_shot_draws=1, adapt={"lr_shared": 0.05},
                  method_settings={"pt": {"prompt_length": 6, "lr": 0.5}, "mpt": {"lr": 0.2, "lr_task": 0.4},
                                   "mpt_multi": {"max_steps": 7}})
    targets = [s for s in plan(cfg) if s.method]
    assert {(s.method, s.setting) for s in targets} == {
        (m, x) for m in ("pt", "spot", "mpt", "mpt_multi") for x in ("full", "k=2")}
    steps = STEPS["max_steps"]
    for s in targets:
        c = s.config
        if s.method == "pt":
            assert (c.prompt.length, c.train.lr, c.train.max_steps) == (6, 0.5, steps)
        elif s.method == "spot":  # the teacher's length and the pipeline's lr
            assert (c.prompt.length, c.train.lr, c.train.max_steps) == (4, STEPS.get("lr", 0.3), steps)
        elif s.method == "mpt":
            assert (c.train.lr, c.lr_shared, c.lr_task, c.train.max_steps) == (0.2, 0.05, 0.4, steps)
        else:  # MPT*: its own steps, the pipeline's lrs; the rest of its optimisation is the cell's
            assert (c.train.max_steps, c.train.lr, c.lr_shared) == (7, STEPS.get("lr", 0.3), 0.05)
            assert c.train.eval_every == next(t for t in targets if t.method == "mpt").config.train.eval_every
    teachers = [s for s in plan(cfg) if s.kind == "prompt-tune" and not s.method]
    assert all(t.config.prompt.length == 4 for t in teachers)  # teachers are not a method's target run


@pytest.mark.parametrize("bad, key", [
    ({"spot": {"prompt_length": 8}}, "method_settings.spot.prompt_length"),
    ({"pt": {"lr_shared": 0.1}}, "method_settings.pt.lr_shared"),
    ({"nope": {"lr": 0.1}}, "method_settings.nope"),
    ({"pt": {"lr": -1.0}}, "method_settings.pt.lr"),
    ({"mpt_multi": {"max_steps": 0}}, "method_settings.mpt_multi.max_steps"),
    ({"pt": {"bogus": 1}}, "bogus"),
])
def test_method_settings_errors_name_the_key(tmp_path, data_dir, bad, key):
    from mptune.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(tmp_path, data_dir, method_settings=bad)


def test_final_dev_off_skips_the_last_dev_pass(tmp_path, tiny_llama_dir, data_dir):
    """train.final_dev=false: test is measured, dev is not re-measured at the end (the selection's dev
    scores stay in dev_history)."""
    out = tmp_path / "pt"
    assert main(["prompt-tune", f"model.name={tiny_llama_dir}", "task=rte", f"output_dir={out}",
                 f"data.data_dir={data_dir}", "data.eval_limit=8", "prompt.length=4", "train.max_steps=2",
                 "train.batch_size=4", "train.eval_every=1", "train.eval_limit=4", "train.final_dev=false"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    entry = m["tasks"]["rte"]
    assert entry["dev"] == {} and entry["n_dev"] == 0 and entry["n_test"] == 8 and "score" in entry["test"]
    assert [h["step"] for h in m["dev_history"]] == [1, 2]
    assert not (out / "predictions_rte_dev.jsonl").exists() and (out / "predictions_rte_test.jsonl").exists()
    from mptune.config import ConfigError
    from mptune.recipes.common import predictions

    with pytest.raises(ConfigError, match="final_dev=false"):
        predictions(out, "rte", "dev")
    assert len(predictions(out, "rte", "test")[2]) == 8
