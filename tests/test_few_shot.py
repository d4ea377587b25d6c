"""True few-shot (k per class in the selection dev set too, several draws per seed) and SPoT as SPoT
(the best single teacher on the target's dev set; spot_avg = the teachers' average), on tiny models."""

import json
import shutil
from collections import Counter

import pytest
import yaml

from mptune.cli import main
from mptune.config import DataConfig
from mptune.recipes import common
from mptune.tasks import few_shot, get_task
from synthetic import WORDS, write_all

STEPS = {"max_steps": 3, "batch_size": 4, "eval_every": 1, "eval_batch_size": 8}
BASE = {"sources": ["rte", "stsb"], "targets": ["rte"], "seeds": [1], "prompt": {"length": 4},
        "teacher_train": STEPS, "source_train": STEPS, "target_train": STEPS}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def _run(root, model_dir, data_dir, **kw) -> dict:
    cfg = {**BASE, "model": {"name": str(model_dir)}, "output_dir": str(root),
           "data": {"data_dir": str(data_dir), "max_source_length": 40, "max_target_length": 6, "eval_limit": 8}}
    for k, v in kw.items():  # "data.x" updates a section
        section, _, key = k.rpartition(".")
        (cfg.setdefault(section, {}) if section else cfg)[key] = v
    (root.parent / f"{root.name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root.parent / f"{root.name}.yaml")]) == 0
    return json.loads((root / "summary.json").read_text())


def _rows(folder, split: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"predictions_rte_{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def k2_run(tmp_path_factory, tiny_llama_dir, data_dir):
    root = tmp_path_factory.mktemp("fs") / "run"
    return root, _run(root, tiny_llama_dir, data_dir, methods=["pt", "mpt"], few_shot_k=[2], full_data=False)


def test_k_shot_runs_select_on_k_per_class_over_three_draws(k2_run, data_dir):
    run, summary = k2_run
    full_dev = {e.uid for e in get_task("rte").load("dev", data_dir=str(data_dir))}
    trains = []
    for method in ("pt", "mpt"):
        for draw in range(3):  # the default few_shot_draws
            folder = run / f"targets/k2/{method}/seed-1/draw-{draw}/rte"
            entry = json.loads((folder / "metrics.json").read_text())["tasks"]["rte"]
            dev = _rows(folder, "dev")
            assert 0 < len(dev) == entry["n_dev"] and max(Counter(r["target"] for r in dev).values()) <= 2
            assert {r["uid"] for r in dev} < full_dev  # a k-shot part of the dev split, not all of it
            assert not {r["uid"] for r in dev} & set(entry["train_uids"])
            assert entry["train_per_class"] == {w: 2 for w in get_task("rte").label_words}
            if method == "pt":
                trains.append(frozenset(entry["train_uids"]))
    assert len(set(trains)) == 3  # three draws, three training sets (the training seed is the same: 1)
    assert {yaml.safe_load((run / f"targets/k2/pt/seed-1/draw-{d}/rte/config.yaml").read_text())["train"]["seed"]
            for d in range(3)} == {1}
    cell = summary["settings"]["k=2"]["pt"]
    per_draw = cell["tasks"]["rte"]["per_draw"]["1"]
    assert cell["draws"] == 3 and summary["few_shot_draws"] == 3 and len(per_draw) == 3
    assert cell["tasks"]["rte"]["mean"] == pytest.approx(sum(per_draw.values()) / 3)  # draws, then seeds
    assert "each the mean of its 3 draw(s)" in (run / "summary.md").read_text()


def test_no_selection_keeps_the_last_step(k2_run, tiny_llama_dir, data_dir, tmp_path):
    done, _ = k2_run
    root = tmp_path / "run"
    for stage in ("teachers", "source"):  # finished stages of the k = 2 run are reused
        shutil.copytree(done / stage, root / stage)
    _run(root, tiny_llama_dir, data_dir, methods=["pt", "mpt"], few_shot_k=[2], full_data=False,
         few_shot_draws=1, **{"data.few_shot_dev": "none"})
    for method in ("pt", "mpt"):
        m = json.loads((root / f"targets/k2/{method}/seed-1/draw-0/rte/metrics.json").read_text())
        assert m["best_step"] == STEPS["max_steps"] and m["dev_history"] == [] and m["tasks"]["rte"]["n_dev"] == 0


def test_dev_examples_by_mode(data_dir):
    task = get_task("rte")
    full = common.eval_examples(task, "dev", DataConfig(data_dir=str(data_dir)))
    train = common.train_examples(task, DataConfig(data_dir=str(data_dir), few_shot_k=2), 1)
    dev = {m: common.dev_examples(task, DataConfig(data_dir=str(data_dir), few_shot_k=2, few_shot_dev=m), 1, train)
           for m in ("k", "full", "none")}
    uids = lambda exs: {e.uid for e in exs}  # noqa: E731
    assert dev["full"] == full and dev["none"] == [] and len(dev["k"]) == 4 and uids(dev["k"]) < uids(full)
    # draw 0 is the sample drawn before draws existed (the run's seed); draw 1 another one
    before = few_shot(task.load("train", data_dir=str(data_dir)), 2, 1)
    assert [e.uid for e in train] == [e.uid for e in before]
    assert uids(common.train_examples(task, DataConfig(data_dir=str(data_dir), few_shot_k=2, few_shot_draw=1), 1)) \
        != uids(before)


def _tilt_task(folder, name: str, label: str):
    """A two-label task whose every example has the same label: a prompt trained on it learns that label."""
    folder.mkdir(parents=True)
    for split, n in (("train", 16), ("dev", 6), ("test", 6)):
        rows = [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(4)), "label": label}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = {"name": name, "files": {s: f"{s}.jsonl" for s in ("train", "dev", "test")}, "template": "say: {text}",
         "label_words": ["a", "b"]}  # one token each: a small prior gap to move
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(d))
    return str(folder / f"{name}.yaml")


def test_spot_picks_the_target_teacher_and_spot_avg_starts_at_the_mean(tmp_path, tiny_llama_dir, data_dir):
    import torch

    from mptune.prompts import load_prompt

    no, yes = _tilt_task(tmp_path / "no", "tilt_no", "a"), _tilt_task(tmp_path / "yes", "tilt_yes", "b")
    root = tmp_path / "run"
    # sources: the other task first, so a tie would pick it; targets: 1 step at a negligible lr, so each
    # target's saved prompt is its start
    _run(root, tiny_llama_dir, data_dir, sources=[no, yes], targets=[yes], methods=["spot", "spot_avg", "mpt"],
         teacher_train={**STEPS, "max_steps": 8, "lr": 0.3},
         target_train={**STEPS, "max_steps": 1, "lr": 1e-12, "weight_decay": 0.0})
    choice = json.loads((root / "targets/full/spot/seed-1/tilt_yes/spot_choice.json").read_text())
    scores = {c["tasks"][0]: c["dev_score"] for c in choice["candidates"]}
    assert choice["pick"] == str(root / "teachers/tilt_yes") and scores["tilt_yes"] > scores["tilt_no"]

    def prompt(folder):
        return load_prompt(folder)[0]

    teachers = {t: prompt(root / "teachers" / t)["prompt"] for t in ("tilt_no", "tilt_yes")}
    spot = prompt(root / "targets/full/spot/seed-1/tilt_yes")["prompt"]
    spot_avg = prompt(root / "targets/full/spot_avg/seed-1/tilt_yes")["prompt"]
    p_star = prompt(root / "source/mpt")["shared"]
    assert torch.allclose(spot, teachers["tilt_yes"], atol=1e-6)
    assert torch.allclose(spot_avg, (teachers["tilt_no"] + teachers["tilt_yes"]) / 2, atol=1e-6)
    assert not torch.allclose(spot, p_star, atol=1e-3)  # SPoT's start is not MPT's P*
