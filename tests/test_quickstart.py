"""`mptune quickstart` end to end on the tiny random Llama with tiny synthetic VADER /
BIG-bench files: no network, no real model. The shipped profile is used with size
overrides, so its keys and task names are checked too."""

import json
import struct

import pytest

from mptune.cli import main
from mptune.config import parse
from mptune.recipes import pipeline, quickstart

TINY = ["prompt.length=2", "data.max_source_length=40", "data.max_target_length=4", "data.eval_limit=4",
        *[f"{s}.{k}" for s in ("teacher_train", "source_train", "target_train")
          for k in ("max_steps=3", "batch_size=4", "warmup_steps=0", "eval_limit=4", "log_every=1",
                    "eval_batch_size=8")],
        "target_train.eval_every=1", "teacher_train.eval_every=0", "source_train.eval_every=0",
        "target_train.test_limit=6"]  # the whole test split of the tiny files


def _write_data(root):
    (root / "vader").mkdir(parents=True)
    for name in ("amazonReviewSnippets", "tweets", "nytEditorialSnippets", "movieReviewSnippets"):
        rows = [f"{i}\t{(-1) ** i * (0.6 + i % 4):.3f}\t{'good fun' if i % 2 == 0 else 'bad dull'} thing {i}"
                for i in range(1, 61)]
        (root / "vader" / f"{name}_GroundTruth.txt").write_bytes("\r\n".join(rows).encode())
    bb = root / "bigbench" / "epistemic_reasoning"
    bb.mkdir(parents=True)
    exs = [{"input": f"Premise: a{i} knows b. Hypothesis: b{i}.",
            "target_scores": {"entailment": i % 2, "non-entailment": 1 - i % 2}} for i in range(50)]
    (bb / "task.json").write_text(json.dumps({"name": "epistemic_reasoning", "examples": exs}, indent=1))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("qs-data"))


def test_shipped_profiles_parse():
    for full in (False, True):
        cfg = quickstart.QuickstartConfig(full=full)
        body, optional, where = quickstart.load_profile(cfg)
        body = {**body, "output_dir": "x", "model": {"name": "some-model"}}
        pcfg = parse(pipeline.PipelineConfig, body, source=where)
        assert "pt" in pcfg.methods and "mpt" in pcfg.methods
        from mptune.tasks import get_task

        for t in pcfg.sources + pcfg.targets + optional:
            get_task(t)
        assert not set(pcfg.sources) & set(pcfg.targets + optional)
        if "sst2" in pcfg.targets + optional:  # VADER's movie snippets are SST-2's sentences
            assert "vader_movie" not in pcfg.sources


def test_each_profile_has_its_own_default_folder():  # a full run must not meet the quick run's stages
    assert [str(quickstart.QuickstartConfig(full=f).folder()) for f in (False, True)] == [
        "runs/quickstart", "runs/quickstart-full"]
    assert str(quickstart.QuickstartConfig(full=True, output_dir="o").folder()) == "o"


def test_quickstart_end_to_end(tmp_path, tiny_llama_dir, data, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", f"output_dir={out}", f"model={tiny_llama_dir}", f"data_dir={data}", "workers=2",
            "threads=1", "overrides=[" + ",".join(TINY) + "]"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "sst2" in printed.err  # the optional GLUE targets are skipped, and said so

    res = json.loads((out / "results.json").read_text())
    assert res["targets"] == ["vader_movie", "vader_tweets"] and set(res["skipped_targets"]) == {"sst2"}
    assert res["sources"] == ["vader_amazon", "vader_nyt"]
    full = res["settings"]["full"]
    assert set(full) == {"pt", "mpt"}
    for method, cell in full.items():
        means = []
        for task in res["targets"]:
            t = cell["tasks"][task]
            seeds = t["seeds"]
            assert list(seeds) == ["42"]
            # the numbers are the stage folders' own
            folder = out / "targets" / "full" / method / "seed-42" / task
            m = json.loads((folder / "metrics.json").read_text())["tasks"][task]
            assert seeds["42"]["test"]["score"] == pytest.approx(m["test"]["score"]) == pytest.approx(t["mean"])
            assert t["n_test"] == m["n_test"] == 6 and m["n_dev"] == 4  # target_train.test_limit, data.eval_limit
            assert [h["step"] for h in seeds["42"]["dev_history"]] == [1, 2, 3]
            means.append(t["mean"])
        assert cell["average"]["mean"] == pytest.approx(sum(means) / len(means))
    d = 32  # tiny Llama hidden size
    assert full["pt"]["params_per_task"] == 2 * d
    assert full["mpt"]["params_per_task"] == 2 * d + 1 * (2 + d)

    # MPT − PT with its paired bootstrap interval, from the prediction files
    c = res["comparison"]["full"]
    assert (c["a"], c["b"], c["seeds"]) == ("mpt", "pt", [42]) and c["n_test"] == {t: 6 for t in res["targets"]}
    assert c["average"]["diff"] == pytest.approx(full["mpt"]["average"]["mean"] - full["pt"]["average"]["mean"])
    for task in res["targets"]:
        d = c["tasks"][task]
        assert d["diff"] == pytest.approx(full["mpt"]["tasks"][task]["mean"] - full["pt"]["tasks"][task]["mean"])
        assert d["ci95_low"] <= d["ci95_high"] and d["excludes_zero"] == (d["ci95_low"] > 0 or d["ci95_high"] < 0)

    md = (out / "results.md").read_text()
    lo, hi = c["average"]["ci95_low"], c["average"]["ci95_high"]
    assert f"[{lo:+.1f}, {hi:+.1f}]" in md
    assert ("the interval excludes 0" if c["average"]["excludes_zero"] else "the interval includes 0") in md
    for task in res["targets"]:
        assert task in md
    for method in ("pt", "mpt"):
        assert f"{full[method]['average']['mean']:.1f}" in md
    assert "dev_curves.png" in md and "MPT − PT" in md

    png = (out / "dev_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert w > 300 and h > 150

    stages = res["timing"]["stages"]
    assert [s["stage"] for s in stages][:3] == ["teacher vader_amazon", "teacher vader_nyt", "distill (mpt)"]
    assert len(stages) == 3 + 2 * 2 and all(s["wall_s"] is not None and s["steps"] == 3 for s in stages)
    by = {s["stage"]: s for s in stages}
    t1, t2, dist = by["teacher vader_amazon"], by["teacher vader_nyt"], by["distill (mpt)"]
    assert t1["start_s"] < t2["start_s"] + t2["wall_s"] and t2["start_s"] < t1["start_s"] + t1["wall_s"]  # 2 workers
    assert dist["start_s"] >= max(t1["start_s"] + t1["wall_s"], t2["start_s"] + t2["wall_s"]) - 0.2
    assert res["timing"]["workers"] == 2 and res["timing"]["torch_threads"] == 1

    # rerun: every stage is skipped, same results
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["settings"] == res["settings"]
    assert all(s["wall_s"] is None for s in again["timing"]["stages"])
    assert "earlier run" in (out / "results.md").read_text()


def test_unknown_profile_key_is_an_error(tmp_path, capsys):
    p = tmp_path / "qs.yaml"
    p.write_text("quick:\n  pipelin: {}\n")
    assert main(["quickstart", f"profile_file={p}", f"output_dir={tmp_path / 'o'}", "model=x",
                 f"data_dir={tmp_path}"]) == 2
    assert "pipelin" in capsys.readouterr().err
