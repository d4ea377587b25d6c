"""The quality benchmark's reporting helpers (benchmarks/quality_cpu): averages, pairing, tables."""

import collections
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_cpu"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"quality_cpu_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(scores: dict) -> dict:
    """results.json shape: scores[method][task] = [test per seed]; dev = test - 10."""
    cells = {m: {"tasks": {t: {"seeds": {str(i + 1): {"test": v, "dev": v - 10} for i, v in enumerate(vals)}}
                           for t, vals in tasks.items()}}
             for m, tasks in scores.items()}
    return {"controls": ["cola"], "results": {"settings": {"full": cells}}}


RES = _results({"pt": {"a": [50, 60, 70], "b": [70, 80, 90], "cola": [0, 0, 30]},
                "mpt": {"a": [60, 60, 80], "b": [80, 90, 90], "cola": [-30, 0, 0]}})


def test_seed_averages_leave_out_controls_unless_asked():
    cmp = _load("compare")
    assert cmp.seed_averages(RES, "pt", "full", "test", False) == {"1": 60, "2": 70, "3": 80}
    assert cmp.seed_averages(RES, "pt", "full", "test", True) == pytest.approx({"1": 40, "2": 140 / 3, "3": 190 / 3})
    assert cmp.seed_averages(RES, "mpt", "full", "dev", False) == {"1": 60, "2": 65, "3": 75}
    assert cmp.seed_averages(RES, "spot", "full", "test", False) == {}
    # a launch on the control only: nothing is left to average without it (it raised StatisticsError)
    cola_only = {"cola": RES["results"]["settings"]["full"]["pt"]["tasks"]["cola"]}
    assert cmp.per_seed_average(cola_only, [], require=["cola"]) == {}
    assert cmp.per_seed_average(cola_only, ["cola"]) == {"1": 0, "2": 0, "3": 30}


def test_table_pairs_seeds_against_the_first_entry():
    cmp = _load("compare")
    md = cmp.table([("PT", RES, "pt"), ("MPT", RES, "mpt")], "test", False)
    rows = md.splitlines()
    assert rows[2].startswith("| PT | 70.0 ± 8.2 |")  # population std of 60, 70, 80
    assert "+10.0, +5.0, +5.0 (mean +6.7)" in rows[3]


def test_compare_cli_rejects_a_missing_method(tmp_path, capsys):
    import json

    cmp = _load("compare")
    f = tmp_path / "results.json"
    f.write_text(json.dumps(RES))
    assert cmp.main([f"PT={f}:pt", f"MPT={f}:mpt"]) == 0
    assert "(mean +6.7)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cmp.main([f"X={f}:spot"])
    assert "no method 'spot'" in capsys.readouterr().err


def test_init_scores_render_adds_the_average_without_controls():
    render = _load("init_scores").render
    md = render({"n": 48, "targets": ["a", "cola"], "controls": ["cola"], "run_dir": "runs/x",
                 "scores": {"pt (vocab init)": {"a": 70.0, "cola": -40.0, "average": 15.0}}})
    assert "first 48 dev examples" in md and "`runs/x`" in md
    assert md.splitlines()[2] == "| starting prompt | a | cola | average | average w/o cola |"
    assert md.splitlines()[4] == "| pt (vocab init) | 70.0 | -40.0 | 15.0 | 70.0 |"


# -- run.py --collect-only re-collects the committed results byte for byte -------------------------

COMMITTED = sorted(p for p in HERE.glob("**/results.json") if '"source_stages_test"' in p.read_text())  # run.py's


def _stage_folders(root: Path, res: dict, legacy: bool) -> None:
    """Stage folders holding the numbers of a committed results.json: metrics.json in the current schema,
    or (legacy) as the recipes wrote them before (single-task prompt-tune stages: one task at the top)."""
    import json

    def write(folder: Path, task: str, test: dict, dev: dict, best_step=None, single=False, history=()):
        folder.mkdir(parents=True, exist_ok=True)
        f = folder / "metrics.json"
        if legacy and single:
            m = {"task": task, "best_step": best_step, "dev_history": list(history), "trainable_params": 1,
                 "backbone_params": 1, "dev": dev, "test": test}
        else:  # a source stage holds all source tasks
            m = json.loads(f.read_text()) if f.is_file() else {"tasks": {}, "best_step": best_step,
                 "dev_history": list(history), "trainable_params": 1, "backbone_params": 1}
            m["tasks"][task] = {"dev": dev, "test": test}
        f.write_text(json.dumps(m))

    out = root / res["config"]["output_dir"]
    for setting, methods in res["results"]["settings"].items():
        for method, cell in methods.items():
            for task, t in cell["tasks"].items():
                for seed, r in t["seeds"].items():
                    folder = out / "targets" / setting.replace("=", "") / method / f"seed-{seed}" / task
                    at_best = [{"step": r["best_step"], "dev_score": r["dev_selection"]}] if "dev_selection" in r else []
                    write(folder, task, r["metrics"], {} if r["dev"] is None else {"score": r["dev"]},
                          r["best_step"], single=method in ("pt", "spot"), history=at_best)
    for key, score in res["results"]["source_stages_test"].items():
        stage, task = key.split(" ")
        folder = out / "teachers" / task if stage == "teacher" else out / stage
        write(folder, task, {} if score is None else {"score": score}, {}, single=stage == "teacher")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-metrics", "metrics"])
@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.parent.relative_to(HERE)) for p in COMMITTED])
def test_collect_only_rewrites_the_committed_results_byte_for_byte(tmp_path, monkeypatch, path, legacy):
    import json
    import shutil

    import yaml

    res = json.loads(path.read_text())
    _stage_folders(tmp_path, res, legacy)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(res["config"]))
    for spec in res["config"]["sources"] + res["config"]["targets"]:  # task files, at their relative paths
        if spec.endswith((".yaml", ".yml", ".json")):
            (tmp_path / spec).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(HERE.parents[1] / spec, tmp_path / spec)
            for f in yaml.safe_load((tmp_path / spec).read_text())["files"].values():  # made-up rows (SQuAD)
                qas = [{"id": str(i), "question": "q?", "answers": [{"text": "a", "answer_start": 0}]}
                       for i in range(1100)]
                (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / f).write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
                    {"context": "a b", "qas": qas}]}]}))
    shutil.copy(path, tmp_path / "results.json")
    shutil.copy(path.with_suffix(".md"), tmp_path / "results.md")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    run = _load("run")
    assert run.main(["--config", "pipeline.yaml", "--model", "m", "--data-dir", ".", "--results", ".",
                     "--controls", ",".join(res["controls"]), "--collect-only"]) == 0
    assert (tmp_path / "results.json").read_bytes() == path.read_bytes()
    assert (tmp_path / "results.md").read_bytes() == path.with_suffix(".md").read_bytes()


def test_collect_only_describes_a_run_that_used_a_newer_option(tmp_path, monkeypatch):
    """The committed config block is kept only while every option added since is at its default."""
    import json
    import shutil

    import yaml

    path = HERE / "results.json"
    res = json.loads(path.read_text())
    _stage_folders(tmp_path, res, legacy=False)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(res["config"]))
    shutil.copy(path, tmp_path / "results.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    assert _load("run").main(["--config", "pipeline.yaml", "--model", "m", "--data-dir", ".", "--results", ".",
                              "--collect-only", "--set", "target_train.test_limit=100"]) == 0
    new = json.loads((tmp_path / "results.json").read_text())
    assert new["config"]["target_train"]["test_limit"] == 100 and new["results"] == res["results"]
    assert "test_limit" not in res["config"]["target_train"]


def test_run_refuses_results_of_another_output_folder(tmp_path, monkeypatch):
    """A launch whose --results folder holds another output folder's results stops before any stage runs
    and leaves them as they were (a v2 launch without --results would have replaced the committed v1 ones)."""
    import json

    import yaml

    res = json.loads((HERE / "results.json").read_text())
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(res["config"]))
    (tmp_path / "results.json").write_text(json.dumps(res))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    run = _load("run")
    with pytest.raises(SystemExit, match=f"holds the results of the stages in {res['config']['output_dir']}, "
                                         "not of runs/elsewhere: pass --results"):
        run.main(["--config", "pipeline.yaml", "--model", "m", "--data-dir", ".", "--results", ".",
                  "--out", "runs/elsewhere", "--collect-only"])
    assert json.loads((tmp_path / "results.json").read_text()) == res and not (tmp_path / "runs").exists()
    assert run.main(["--config", "pipeline.yaml", "--model", "m", "--data-dir", ".", "--out", "runs/elsewhere",
                     "--collect-only"]) == 0  # by default results.* describe the output folder, in it
    assert json.loads((tmp_path / "runs/elsewhere/results.json").read_text())["config"]["output_dir"] == "runs/elsewhere"
    assert json.loads((tmp_path / "results.json").read_text()) == res


# -- v2/report.py on a tiny pipeline run ---------------------------------------------------------

def test_v2_report_pairs_methods_with_intervals_teachers_and_curves(tmp_path, tiny_llama_dir, monkeypatch,
                                                                    capsys):
    import json

    import yaml

    from mptune.cli import main
    from synthetic import write_all

    steps = {"max_steps": 4, "batch_size": 4, "eval_every": 2, "eval_limit": 4, "eval_batch_size": 8}
    cfg = {"model": {"name": str(tiny_llama_dir)}, "sources": ["rte", "squad"], "targets": ["rte", "stsb"],
           "output_dir": str(tmp_path / "run"), "methods": ["pt", "spot", "mpt"], "seeds": [1, 2],
           "few_shot_k": [2], "few_shot_draws": 1, "prompt": {"length": 4},
           "data": {"data_dir": str(write_all(tmp_path / "data")), "max_source_length": 40,
                    "max_target_length": 6, "eval_limit": 8},
           "teacher_train": steps, "source_train": steps, "target_train": steps}
    f = tmp_path / "pipeline.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(f)]) == 0
    report = _load("v2/report")
    assert report.main(["--config", str(f), "--results", str(tmp_path / "out"), "--resamples", "50",
                        "--controls", "stsb"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["n_test"] == {"rte": 8, "stsb": 8} and res["controls"] == ["stsb"]
    teachers = {t["task"]: t for t in res["teachers"]}
    assert teachers["rte"]["trivial_is"] == "majority class" and 50 <= teachers["rte"]["trivial"] <= 100
    assert teachers["squad"]["trivial_is"] == "empty answer" and teachers["squad"]["trivial"] == 0
    for t in teachers.values():  # dev − trivial with its interval; beating it means the interval is above 0
        g = t["beyond_trivial"]
        assert g["diff"] == pytest.approx(t["dev"] - t["trivial"]) and g["ci95_low"] <= g["diff"] <= g["ci95_high"]
        assert t["beats_trivial"] == (g["ci95_low"] > 0)
    full = res["settings"]["full"]
    assert [(c["a"], c["b"]) for c in full["claims"]] == [("mpt", "pt"), ("mpt", "spot")]
    for c in full["claims"]:
        iv = c["average"]
        assert c["runs"] == 2 and c["average_over"] == ["rte"] and set(c["tasks"]) == {"rte", "stsb"}
        assert not c["controls_only"]
        assert iv["ci95_low"] <= iv["diff"] <= iv["ci95_high"]
        assert c["verdict"] == ("holds" if iv["ci95_low"] > 0 else "reversed" if iv["ci95_high"] < 0
                                else "not separated")
        # the observed difference is the seed mean of the test-score differences on the averaged target
        cells = full["cells"]
        want = sum(cells[c["a"]]["rte"]["runs"][s] - cells[c["b"]]["rte"]["runs"][s] for s in ("1", "2")) / 2
        assert iv["diff"] == pytest.approx(want)
    assert [p[0] for p in full["curves"]["pt"]["rte"]] == [2, 4]
    # each run's selected step and the dev score the selection saw there, as its metrics.json logged them
    for m, seed in (("pt", 1), ("mpt", 2)):
        logged = json.loads((tmp_path / f"run/targets/full/{m}/seed-{seed}/rte/metrics.json").read_text())
        dev = {h["step"]: h["dev_score"] for h in logged["dev_history"]}[logged["best_step"]]
        assert full["cells"][m]["rte"]["selected"][str(seed)] == {"step": logged["best_step"], "dev": dev}
    assert set(res["settings"]["k=2"]["cells"]["pt"]["rte"]["selected"]) == {"1/draw-0", "2/draw-0"}
    # rte's accuracy is a mean over examples: each resample averages the examples' scores; recomputing the
    # metric on every resample instead gives the same intervals
    from mptune.tasks import metrics as M
    with monkeypatch.context() as m:
        m.setattr(M, "example_scores", lambda *a, **k: None)
        assert report.main(["--config", str(f), "--results", str(tmp_path / "slow"), "--resamples", "50",
                            "--controls", "stsb"]) == 0
    slow = json.loads((tmp_path / "slow" / "results.json").read_text())["settings"]["full"]["claims"]
    for c, s in zip(full["claims"], slow):
        assert c["tasks"]["rte"] == pytest.approx(s["tasks"]["rte"]) and c["average"] == pytest.approx(s["average"])
    # each target's trivial baseline on its test examples: the majority label word of the prediction file
    rows = [json.loads(line) for line in (tmp_path / "run/targets/full/pt/seed-1/rte/predictions_rte_test.jsonl")
            .read_text().splitlines()]
    top = max(collections.Counter(r["target"] for r in rows).values())
    assert full["trivial"]["rte"] == {"score": pytest.approx(100 * top / len(rows)), "is": "majority class", "n_test": 8}
    assert full["trivial"]["stsb"]["is"] == "constant" and full["trivial"]["stsb"]["score"] == 0
    # a few-shot setting draws its training and dev examples, not its test ones: the same baseline, its own row
    assert res["settings"]["k=2"]["trivial"] == full["trivial"]
    # SPoT's source per target and seed, as its run folder recorded the choice on the target's dev set
    choice = json.loads((tmp_path / "run/targets/full/spot/seed-2/stsb/spot_choice.json").read_text())
    assert set(full["spot_picks"]) == {"rte", "stsb"} and full["spot_picks"]["stsb"]["2"] == choice["pick_tasks"][0]
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"stsb: {full['spot_picks']['stsb']['1']} (run 1), {choice['pick_tasks'][0]} (run 2)" in md
    for table in md.split("| method |")[1:]:  # each setting's method table ends with the trivial row, unbroken
        assert table.split("\n\n")[0].rstrip().splitlines()[-1].startswith("| *trivial baseline* |")
    assert md.count("| method |") == 2 == md.count("| *trivial baseline* |")
    sel = full["cells"]["pt"]["rte"]["selected"]
    assert (f"Selected step (dev score there) per run: PT rte 1: {sel['1']['step']} ({sel['1']['dev']:.1f}), "
            f"2: {sel['2']['step']} ({sel['2']['dev']:.1f});") in md
    assert "| MPT > PT | mpt − pt |" in md and "(n_test 8)" in md and "| *trivial baseline* | " in md
    from mptune.plan import setting_title  # each setting's heading, as run.py's results.md heads it too
    assert "\n## full training data\n" in md and setting_title("k=16") == "few-shot, k=16 per class"
    # k per class where the target has classes (rte), k in all where not (stsb: few_shot's rule); both here
    from mptune.config import load_yaml, parse
    from mptune.plan import Layout, task_runs
    from mptune.recipes.pipeline import PipelineConfig
    runs_k2 = task_runs(Layout(parse(PipelineConfig, load_yaml(f), [], source=str(f))).stages())["k=2"]
    assert res["settings"]["k=2"]["per_class"] is None and "\n## few-shot, k=2 per class (in all for a target " in md
    assert report.per_class({"pt": runs_k2["pt"]}, ["stsb"]) is False and setting_title("k=2", False) == "few-shot, k=2 in all"
    assert report.per_class({"pt": runs_k2["pt"]}, ["rte"]) is True
    assert (tmp_path / "out" / "dev_curves.png").stat().st_size > 0
    # one method alone: no claim to pair, said so rather than an empty table
    assert report.main(["--config", str(f), "--results", str(tmp_path / "alone"), "--resamples", "20",
                        "--set", "methods=[pt]"]) == 0
    alone = (tmp_path / "alone" / "results.md").read_text()
    assert "Claims: none" in alone and "| claim |" not in alone and "| PT | " in alone
    # only controls among the targets (e.g. CoLA alone): the claims averaged over them, each marked so
    assert report.main(["--config", str(f), "--results", str(tmp_path / "ctrl"), "--resamples", "20",
                        "--controls", "rte,stsb"]) == 0
    ctrl = json.loads((tmp_path / "ctrl" / "results.json").read_text())["settings"]["full"]["claims"]
    assert [(c["a"], c["b"]) for c in ctrl] == [("mpt", "pt"), ("mpt", "spot")]
    assert all(c["controls_only"] and c["average_over"] == ["rte", "stsb"] for c in ctrl)
    assert ctrl[0]["average"]["diff"] == pytest.approx(sum(ctrl[0]["tasks"][t]["diff"] for t in ("rte", "stsb")) / 2)
    ctrl_md = (tmp_path / "ctrl" / "results.md").read_text()
    assert ctrl_md.count("(on the control only) |") == 2 * 2 and "(on the control only)" not in md
    # PT's cells from another run folder (e.g. the setting its sweep chose): launched with other overrides
    other = {**cfg, "output_dir": str(tmp_path / "pt_run"), "methods": ["pt"],
             "target_train": {**steps, "lr": 0.1}}
    g = tmp_path / "pt.yaml"
    g.write_text(yaml.safe_dump(other))
    assert main(["run", str(g)]) == 0
    assert report.main(["--config", str(f), "--results", str(tmp_path / "out2"), "--resamples", "20",
                        "--controls", "stsb", "--from", "pt", str(tmp_path / "pt_run"), "target_train.lr=0.1"]) == 0
    res2 = json.loads((tmp_path / "out2" / "results.json").read_text())
    pt_metrics = json.loads((tmp_path / "pt_run/targets/full/pt/seed-2/rte/metrics.json").read_text())
    assert res2["settings"]["full"]["cells"]["pt"]["rte"]["runs"]["2"] == pt_metrics["tasks"]["rte"]["test"]["score"]
    assert res2["settings"]["full"]["cells"]["mpt"] == full["cells"]["mpt"]
    assert res2["method_from"] == {"pt": [str(tmp_path / "pt_run"), "target_train.lr=0.1"]}
    # a method taken from elsewhere keeps its place in the methods table's order (PT first, not last)
    assert list(res2["settings"]["full"]["cells"]) == ["pt", "spot", "mpt"] == list(full["cells"])
    md2 = (tmp_path / "out2" / "results.md").read_text()
    assert md2.index("| PT | ") < md2.index("| SPoT") < md2.index("| MPT | ")
    assert "against" not in res2["settings"]["full"] and "method_against" not in res2 and "here − " not in md2
    # each method against its own runs in another folder (there: PT at another lr), paired over the seeds
    assert report.main(["--config", str(f), "--results", str(tmp_path / "vs"), "--resamples", "50",
                        "--controls", "stsb", "--against", "pt", str(tmp_path / "pt_run"), "target_train.lr=0.1"]) == 0
    vs = json.loads((tmp_path / "vs" / "results.json").read_text())
    assert vs["method_against"] == {"pt": [str(tmp_path / "pt_run"), "target_train.lr=0.1"]}
    assert vs["settings"]["full"]["cells"] == full["cells"] and vs["settings"]["full"]["claims"] == full["claims"]
    for s in ("full", "k=2"):
        (c,) = vs["settings"][s]["against"]
        there = res2["settings"][s]["cells"]["pt"]["rte"]["runs"]
        here = res["settings"][s]["cells"]["pt"]["rte"]["runs"]
        assert c["method"] == "pt" and c["runs"] == 2 and c["average_over"] == ["rte"] and set(c["tasks"]) == {"rte", "stsb"}
        assert c["average"]["diff"] == pytest.approx(sum(here[k] - there[k] for k in here) / 2)
        assert c["average"]["ci95_low"] <= c["average"]["diff"] <= c["average"]["ci95_high"]
    assert f"| PT | here − `{tmp_path / 'pt_run'} target_train.lr=0.1` | {c['average']['diff']:+.1f} |" in (
        tmp_path / "vs" / "results.md").read_text()
    # records.json: each run's text-free per-example numbers; pair.py re-makes every interval from them alone,
    # the claims (rte a mean, stsb's correlations recomputed per resample) and the --against pairs alike
    pair = _load("v2/pair")
    for folder, setting, label_a, label_b, got in (
            ("out", "full", "mpt", "pt", full["claims"][0]), ("out", "full", "mpt", "spot", full["claims"][1]),
            ("vs", "full", "pt", "against/pt", vs["settings"]["full"]["against"][0]),
            ("out", "k=2", "mpt", "pt", res["settings"]["k=2"]["claims"][0])):
        out_json = tmp_path / "pair.json"
        assert pair.main([f"{tmp_path / folder}:{label_a}", f"{tmp_path / folder / 'records.json'}:{label_b}",
                          "--setting", setting, "--controls", "stsb", "--resamples", "50", "--json", str(out_json)]) == 0
        (made,) = json.loads(out_json.read_text())
        assert (made["average"], made["tasks"], made["average_over"]) == (got["average"], got["tasks"], got["average_over"])
    records = (tmp_path / "out" / "records.json").read_text()
    assert json.loads(records)["uids"]["rte"] == [r["uid"] for r in rows]
    assert all(r["source"] not in records for r in rows)  # no example text
    assert pair.main([f"{tmp_path / 'out'}:mpt_multi", f"{tmp_path / 'out'}:pt"]) == 2
    assert "records.json: no runs of 'mpt_multi' (it has mpt, pt, spot)" in capsys.readouterr().err
    assert pair.main([f"{tmp_path / 'nowhere'}:mpt", f"{tmp_path / 'out'}:pt"]) == 2
    assert "no records file" in capsys.readouterr().err
    # the stages it read there count among the environments: PT's 2 seeds x 2 targets x 2 settings more
    from mptune.utils import environment
    assert vs["environments"] == [{"environment": environment(), "stages": 3 + 2 * 12 + 8}]
    # the environments the stages ran on: every stage folder of the report once (2 teachers, the source
    # stage, 3 methods x 2 seeds x 2 targets in each of the 2 settings), from its stage.json
    assert res["environments"] == [{"environment": environment(), "stages": 3 + 2 * 12}]
    assert f"Stages ran on: {environment()['device']}, accelerate " in md and "More than one" not in md
    old, moved = tmp_path / "run/teachers/rte/stage.json", tmp_path / "run/targets/full/mpt/seed-1/rte/stage.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "environment"}))
    rec = json.loads(moved.read_text())
    moved.write_text(json.dumps({**rec, "environment": {**rec["environment"], "torch": "0.0-other"}}))
    assert report.main(["--config", str(f), "--results", str(tmp_path / "out3"), "--resamples", "20"]) == 0
    envs = json.loads((tmp_path / "out3" / "results.json").read_text())["environments"]
    assert envs == [{"environment": environment(), "stages": 3 + 2 * 12 - 2}, {"environment": {**environment(), "torch": "0.0-other"},
                    "stages": 1}, {"environment": None, "stages": 1}]
    md3 = (tmp_path / "out3" / "results.md").read_text()
    assert "torch 0.0-other, transformers" in md3 and "(1 stage); not recorded: 1 stage (made" in md3
    assert "**More than one environment**" in md3
    assert report.environment_line([{"environment": None, "stages": 3}]) == (
        "Stages ran on: not recorded: 3 stages (made before stage.json kept it).")


# -- v2/cost.py: the whole matrix priced from measured stages -----------------------------------

def test_v2_cost_prices_the_full_plan_from_measured_stages(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(HERE))
    run, cost = _load("run"), _load("v2/cost")
    sets = ["seeds=[1]", "few_shot_k=[]", "targets=[vader_movie]", "methods=[pt,mpt]"]
    timed = run.load_config(str(HERE / "v2/pipeline.yaml"), data_dir=str(tmp_path), sets=sets, dry_run=True)
    planned = run.stages(timed, list(timed.methods))
    jobs = [{"stage": s.name, "skipped": False, "cpu_s": 60.0 * (i + 1)} for i, s in enumerate(planned)]
    jobs[0]["skipped"] = True  # a stage reused from an earlier launch is not a measurement
    (tmp_path / "t.json").write_text(json.dumps({"timing": {"jobs": jobs}}))
    assert cost.main(["--launch", str(tmp_path / "t.json"), *sets, "--results", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cost.json").read_text())
    rows = {r["stage"]: r for r in res["rows"]}
    full = run.load_config(str(HERE / "v2/pipeline.yaml"), data_dir=str(tmp_path), dry_run=True)
    assert res["stages"] == len(run.stages(full, list(full.methods))) == len(rows)
    by_name = {j["stage"]: j["cpu_s"] for j in jobs}
    assert rows["pt vader_movie seed 1"] == {"stage": "pt vader_movie seed 1", "cpu_s": by_name["pt vader_movie seed 1"],
                                             "from": "measured"}
    # an unmeasured target of a measured method: the mean of that method's measured runs (here one)
    assert rows["pt cola seed 2"]["cpu_s"] == by_name["pt vader_movie seed 1"]
    assert rows["pt vader_movie k=4 seed 3 draw 0"]["from"] == "estimate: its full-data run(s)"
    assert rows["pt vader_movie k=4 seed 3 draw 0"]["cpu_s"] == by_name["pt vader_movie seed 1"]
    assert rows[planned[0].name]["from"] != "measured"  # skipped in the timed launch
    targets = [by_name[n] for n in ("mpt vader_movie seed 1", "pt vader_movie seed 1")]
    assert rows["spot cola seed 1"] == {"stage": "spot cola seed 1", "cpu_s": sum(targets) / 2,
                                        "from": "estimate: mean of the measured target runs"}  # never measured
    assert res["unpriced"] == sum(r["cpu_s"] is None for r in rows.values()) == 0
    assert res["core_hours"] == pytest.approx(sum(r["cpu_s"] or 0 for r in rows.values()) / 3600, abs=0.01)
    assert "core-hours" in (tmp_path / "cost.md").read_text()
    # a launch's runner log (stopped before run.py wrote results.json): the "done" lines' seconds
    log = tmp_path / "run.log"
    log.write_text("[12:44:53] start teacher vader_amazon\n[12:56:49] done  teacher vader_amazon (709s)\n"
                   "[13:07:26] done  pt vader_movie seed 1 (637s)\n[13:08:00] FAILED mpt vader_movie seed 1: x\n")
    assert cost.read_jobs(log) == {
        "teacher vader_amazon": {"stage": "teacher vader_amazon", "skipped": False, "cpu_s": 709.0},
        "pt vader_movie seed 1": {"stage": "pt vader_movie seed 1", "skipped": False, "cpu_s": 637.0}}
    # several launches: a kind of stage measured more than once (other seeds, other logs) is priced by its mean
    assert cost.main(["--launch", str(tmp_path / "t.json"), *sets, "--launch", str(log), *sets,
                      "--results", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cost.json").read_text())
    rows = {r["stage"]: r for r in res["rows"]}
    assert rows["pt vader_movie seed 1"]["cpu_s"] == (by_name["pt vader_movie seed 1"] + 637.0) / 2
    assert res["runs_measured"]["pt / vader_movie / full"] == 2 and res["runs_measured"]["mpt / vader_movie / full"] == 1


def test_v2_cost_keys_each_launch_by_its_own_overrides(tmp_path, monkeypatch):
    """Launches of other sources / targets / settings: each log read under its own overrides, source stages
    priced by their sources, and the rules for what no launch measured."""
    import json

    monkeypatch.syspath_prepend(str(HERE))
    cost = _load("v2/cost")
    four = f"sources=[sst2,vader_amazon,vader_tweets,{HERE / 'v2/squad_source.yaml'}]"
    base = ["seeds=[1]", "few_shot_k=[]", "methods=[pt,mpt,mpt_multi]", "targets=[vader_movie,vader_nyt]"]
    (tmp_path / "a.log").write_text(  # three sentiment sources, full data
        "[00:00:01] done  distill (mpt) (1000s)\n[00:00:02] done  mpt vader_movie seed 1 (100s)\n"
        "[00:00:03] done  mpt vader_nyt seed 1 (200s)\n[00:00:04] done  mpt_multi vader_movie+vader_nyt seed 1 (450s)\n"
        "[00:00:05] done  pt vader_movie seed 1 (80s)\n")
    (tmp_path / "b.log").write_text(  # the same stage names under four sources and k = 16
        "[00:00:01] done  distill (mpt) (4000s)\n[00:00:02] done  mpt vader_movie k=16 seed 1 draw 0 (60s)\n")
    few = ["seeds=[1]", "few_shot_k=[16]", "full_data=false", "methods=[mpt]", "targets=[vader_movie]"]
    argv = ["--launch", str(tmp_path / "a.log"), *base, "--launch", str(tmp_path / "b.log"), four, *few,
            "--plan", four, "seeds=[1]", "few_shot_k=[4]", "methods=[pt,spot,mpt,mpt_multi,mpt_no_distill]",
            "targets=[vader_movie,vader_nyt,cola]", "--results", str(tmp_path), "--stem", "c4"]
    assert cost.main(argv) == 0
    res = json.loads((tmp_path / "c4.json").read_text())
    assert res["measured"]["source / mpt / sst2+vader_amazon+vader_tweets"] == 1000.0
    assert res["measured"]["source / mpt / sst2+vader_amazon+vader_tweets+squad_src"] == 4000.0
    rows = {r["stage"]: r for r in res["rows"]}
    assert rows["distill (mpt)"] == {"stage": "distill (mpt)", "cpu_s": 4000.0, "from": "measured"}
    # few-shot priced from few-shot where measured, else from full data
    assert rows["mpt vader_movie k=4 seed 1 draw 0"] == {"stage": "mpt vader_movie k=4 seed 1 draw 0", "cpu_s": 60.0,
                                                         "from": "estimate: its few-shot run(s)"}
    assert rows["mpt vader_nyt k=4 seed 1 draw 0"]["cpu_s"] == 200.0
    # three targets in one run: MPT's prices of them (cola: other methods there, none; so MPT's mean) x 450/300
    multi = rows["mpt_multi vader_movie+vader_nyt+cola seed 1"]
    assert multi["from"] == "estimate: MPT's runs on its targets, scaled"
    assert multi["cpu_s"] == pytest.approx((100 + 200 + (100 + 200 + 60) / 3) * 1.5)
    assert rows["spot vader_movie seed 1"] == {"stage": "spot vader_movie seed 1", "cpu_s": 90.0,
                                               "from": "estimate: other methods on this target"}
    # no teacher measured in any launch: unpriced, and counted so
    assert rows["teacher squad_src"] == {"stage": "teacher squad_src", "cpu_s": None,
                                         "from": "no measured stage of its kind"}
    assert res["unpriced"] == 4 and "no measured stage of its kind" in (tmp_path / "c4.md").read_text()
    # a variant never run with these sources: its run with the others, scaled as MPT's (x4)
    (tmp_path / "c.log").write_text("[00:00:01] done  distill (no_distill) (500s)\n")
    argv[argv.index("--plan"):argv.index("--plan")] = ["--launch", str(tmp_path / "c.log"), *base[:2],
                                                       "methods=[mpt_no_distill]"]
    assert cost.main(argv) == 0
    rows = {r["stage"]: r for r in json.loads((tmp_path / "c4.json").read_text())["rows"]}
    assert rows["distill (no_distill)"] == {"stage": "distill (no_distill)", "cpu_s": 2000.0,
                                            "from": "estimate: its run with other sources, scaled as MPT's"}


# -- v2/choose.py: each method's setting chosen on dev --------------------------------------------

def _sweep_result(path, method, scores):
    """A results.json as run.py writes it: full data, seed 1, target -> (dev, test)."""
    import json

    tasks = {t: {"metric": "accuracy", "seeds": {"1": {"dev": d, "test": x, "best_step": 20}}}
             for t, (d, x) in scores.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"results": {"settings": {"full": {method: {"tasks": tasks}}}}}))


def test_v2_choose_merges_later_launches_and_leaves_controls_out_of_the_choice(tmp_path):
    choose = _load("v2/choose")
    _sweep_result(tmp_path / "pt_l20", "pt", {"a": (80, 79), "b": (90, 88)})
    _sweep_result(tmp_path / "pt_l20" / "more", "pt", {"cola": (10, 12)})  # a later launch's targets
    _sweep_result(tmp_path / "pt_l100", "pt", {"a": (84, 83), "b": (85, 84), "cola": (30, 25)})
    _sweep_result(tmp_path / "pt_l5", "pt", {"a": (99, 99)})  # did not run b: not a candidate for the choice
    runs = choose.load("pt", tmp_path)
    assert runs["l20"]["cola"]["dev"] == 10 and set(runs["l20"]) == {"a", "b", "cola"}
    c = choose.choose(runs)
    assert c["chosen_on"] == ["a", "b"] and c["mean_dev"] == {"l20": 85, "l100": 84.5}
    assert c["chosen"] == "l20"  # CoLA (the control) would have flipped it to l100
    best = {t: (b["setting"], b["test"]) for t, b in c["best_per_target"].items()}
    assert best == {"a": ("l5", 99), "b": ("l20", 88), "cola": ("l100", 25)}
    assert "l20 **(chosen)**" in choose.markdown("pt", c)
    _sweep_result(tmp_path / "pt_l20" / "again", "pt", {"a": (1, 1)})  # one target twice in a setting: refused
    with pytest.raises(SystemExit, match="a is already in another results.json"):
        choose.load("pt", tmp_path)


def test_v2_choose_takes_the_selection_dev_score_of_runs_without_a_final_dev_pass(tmp_path, monkeypatch):
    """target_train.final_dev: false leaves no final dev score: run.py records the dev score at the best
    step (`dev_selection`) and choose.py uses it, marked †."""
    import json
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(HERE))
    run, choose = _load("run"), _load("v2/choose")
    history = [{"step": 20, "dev_score": 40.0}, {"step": 40, "dev_score": 55.0}, {"step": 60, "dev_score": 50.0}]
    no_final = SimpleNamespace(entry={"test": {"score": 44.0}, "dev": {}}, best_step=40, dev_history=history)
    final = SimpleNamespace(entry={"test": {"score": 44.0}, "dev": {"score": 47.0}}, best_step=40, dev_history=history)
    assert run._seed_record({0: no_final})["dev_selection"] == 55.0
    assert "dev_selection" not in run._seed_record({0: final})  # a final dev score is the dev score
    rec = run._seed_record({0: no_final})

    def write(rec):
        (tmp_path / "pt_l20").mkdir(exist_ok=True)
        (tmp_path / "pt_l20" / "results.json").write_text(json.dumps({"results": {"settings": {"full": {"pt": {
            "tasks": {"qa": {"metric": "squad_f1", "seeds": {"1": rec}}}}}}}}))

    write(rec)
    _sweep_result(tmp_path / "pt_l100", "pt", {"qa": (50, 46)})
    c = choose.choose(choose.load("pt", tmp_path))
    assert c["mean_dev"] == {"l20": 55.0, "l100": 50} and c["chosen"] == "l20"
    assert "| l20 **(chosen)** | 55.0† (44.0) @40 |" in choose.markdown("pt", c)
    rec.pop("dev_selection")
    write(rec)
    with pytest.raises(SystemExit, match="qa has no dev score"):
        choose.load("pt", tmp_path)


def test_v2_verdict_table_is_what_the_committed_results_give():
    """verdict.md (the verdict so far, README's summary) is rendered from verdict.yaml and the committed
    results.json files: a figure edited by hand, or a results.json rewritten since, fails here."""
    import yaml

    verdict = _load("v2/verdict")
    assert verdict.render(yaml.safe_load(verdict.SPEC.read_text())) == verdict.OUT.read_text()
    assert verdict.main(["--check"]) == 0


@pytest.mark.parametrize("records", sorted((HERE / "v2").glob("**/records.json")), ids=lambda p: p.parent.name)
def test_v2_committed_records_re_make_every_committed_interval(records, tmp_path):
    """Each committed records.json holds what its results.json's intervals came from: pair.py re-makes
    every claim and --against pair of that report from the commit alone, to the last digit."""
    import json

    pair = _load("v2/pair")
    res = json.loads((records.parent / "results.json").read_text())
    checked = 0
    for setting, r in res["settings"].items():
        wanted = [(c["a"], c["b"], c) for c in r["claims"]] + [(c["method"], f"against/{c['method']}", c)
                                                               for c in r.get("against", [])]
        for a, b, c in wanted:
            out = tmp_path / f"{setting}_{a}_{b.replace('/', '_')}.json"
            assert pair.main([f"{records}:{a}", f"{records}:{b}", "--setting", setting, "--controls",
                              ",".join(res["controls"]), "--resamples", str(c["resamples"]), "--json", str(out)]) == 0
            (made,) = json.loads(out.read_text())
            assert (made["average"], made["tasks"], made["verdict"]) == (c["average"], c["tasks"], c["verdict"])
            checked += 1
    assert checked == sum(len(r["claims"]) + len(r.get("against", [])) for r in res["settings"].values())
    # and each run's record scores all its examples as the run's test score in the results' cell
    from mptune.tasks.metrics import record_score

    data = json.loads(records.read_text())
    for setting, by_label in data["runs"].items():
        for m, by_task in by_label.items():
            for t, by_key in by_task.items():
                for k, rec in by_key.items():
                    n = len(rec.get("uids", data["uids"][t]))
                    assert n == res["n_test"][t]
                    if not m.startswith("against/"):
                        cell = res["settings"][setting]["cells"][m][t]["runs"][k]
                        assert record_score(rec, list(range(n))) == pytest.approx(cell), (setting, m, t, k)


def test_v2_committed_pair_files_are_what_pair_py_gives():
    """Each pair.py --json file that verdict.yaml names is re-made from the two committed records files
    it names, to the last digit: a figure edited by hand there fails here."""
    import json

    import yaml

    pair = _load("v2/pair")
    spec = yaml.safe_load((HERE / "v2" / "verdict.yaml").read_text())
    files = sorted({e["results"] for e in spec["cells"] if e["results"].endswith(".json")})
    assert files  # slice 35's pairs at least
    root = HERE.parents[1]  # the sides are named from the repository root
    for name in files:
        for c in json.loads((HERE / "v2" / name).read_text()):
            a, b = (str(root / side) for side in (c["a"], c["b"]))
            made = pair.pair(pair.load(a), pair.load(b), c["setting"], pair.CONTROLS.split(","), c["resamples"])
            assert (made["average"], made["tasks"], made["verdict"], made["runs"]) == (
                c["average"], c["tasks"], c["verdict"], c["runs"]), name


def test_v2_verdict_reads_each_cell_from_its_claim_and_names_a_bad_entry(tmp_path, monkeypatch):
    import json

    verdict = _load("v2/verdict")
    monkeypatch.setattr(verdict, "HERE", tmp_path)
    (tmp_path / "s1").mkdir()
    claim = {"a": "mpt", "b": "pt", "runs": 3, "verdict": "not separated",
             "average": {"diff": 1.04, "ci95_low": -0.5, "ci95_high": 2.5},
             "tasks": {"x": {"diff": -3.0, "ci95_low": -5.0, "ci95_high": -1.0},
                       "y": {"diff": 5.0, "ci95_low": -1.0, "ci95_high": 11.0}}}
    (tmp_path / "s1" / "results.json").write_text(json.dumps({"settings": {"k=4": {"claims": [claim]}}}))
    spec = {"columns": {"c1": "first", "c2": "second"}, "cells": [
        {"claim": "mpt-pt", "column": "c1", "results": "s1", "setting": "k=4", "section": 7},
        {"claim": "mpt-pt", "column": "c1", "results": "s1", "setting": "k=4", "section": 7, "task": "x",
         "note": "x alone"}]}
    row = next(line for line in verdict.render(spec).splitlines() if line.startswith("| MPT > PT"))
    assert row == ("| MPT > PT | +1.0 [−0.5, +2.5] (3 draws, §7)<br>**−3.0 [−5.0, −1.0] reversed** "
                   "(x alone; 3 draws, §7) | not run |")
    bad = [({"claim": "pt-mpt"}, r"cells\[0\]: claim 'pt-mpt' is not one of mpt-pt"),
           ({"column": "c3"}, r"cells\[0\]: column 'c3' is not one of c1, c2"),
           ({"results": "s2"}, r"cells\[0\]: results 's2': no s2/results.json"),
           ({"setting": "full"}, r"cells\[0\]: setting 'full' is not in s1/results.json \(it has k=4\)"),
           ({"claim": "mpt-spot"}, r"cells\[0\]: claim 'mpt-spot' is not in s1/results.json at k=4"),
           ({"task": "z"}, r"cells\[0\]: task 'z' is not among the claim's tasks \(x, y\)"),
           ({"seeds": 3}, r"cells\[0\]: unknown key\(s\) seeds")]
    for change, message in bad:
        entry = dict(spec["cells"][0], **change)
        with pytest.raises(verdict.VerdictError, match=message):
            verdict.render({"columns": spec["columns"], "cells": [entry]})
    # a pair.py --json file as a cell's results: its sides are RECORDS:LABEL, matched on the label
    made = dict(claim, a="slice9/qa:mpt_multi", b="slice8/qa/records.json:mpt", setting="k=32", runs=2,
                average={"diff": -4.0, "ci95_low": -6.0, "ci95_high": -2.0})
    (tmp_path / "s1" / "multi.json").write_text(json.dumps([made]))
    entry = {"claim": "mpt_multi-mpt", "column": "c2", "results": "s1/multi.json", "setting": "k=32", "section": 9}
    row = next(line for line in verdict.render({"columns": spec["columns"], "cells": [entry]}).splitlines()
               if line.startswith("| MPT* (multi-target) helps"))
    assert row == "| MPT* (multi-target) helps | not run | **−4.0 [−6.0, −2.0] reversed** (2 draws, §9) |"
    for change, message in [({"results": "s1/none.json"}, r"results 's1/none.json': no s1/none.json"),
                            ({"claim": "mpt-pt"}, r"claim 'mpt-pt' is not in s1/multi.json at k=32"),
                            ({"setting": "k=4"}, r"setting 'k=4' is not in s1/multi.json \(it has k=32\)")]:
        with pytest.raises(verdict.VerdictError, match=message):
            verdict.render({"columns": spec["columns"], "cells": [dict(entry, **change)]})


def test_v2_teacher_beats_the_trivial_baseline_only_beyond_the_noise():
    """report.beyond_trivial: dev − trivial with a bootstrap interval over the dev examples, for a mean
    metric (accuracy: the examples' own scores) and a rescored one (STS-B's Pearson / Spearman)."""
    from mptune.tasks import get_task

    report = _load("v2/report")
    sst2 = get_task("sst2")
    rows = [{"sentence": f"s{i}", "label": int(i % 3 == 0)} for i in range(60)]  # majority: 0 (40 of 60)
    ex = [sst2.to_example(r) for r in rows]
    perfect = report.beyond_trivial(sst2, ex, [e.label for e in ex], 200)
    assert perfect["diff"] == pytest.approx(100 - 200 / 3) and perfect["ci95_low"] > 0
    alike = report.beyond_trivial(sst2, ex, [0] * 60, 200)  # the majority answer itself
    assert alike == {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "excludes_zero": False}
    stsb = get_task("stsb")
    gold = [i % 6 * 1.0 for i in range(60)]
    ex = [stsb.to_example({"sentence1": "a", "sentence2": f"b{i}", "label": g}) for i, g in enumerate(gold)]
    assert report.trivial(stsb, ex) == (0.0, "constant")
    good = report.beyond_trivial(stsb, ex, [str(g + 0.1 * (i % 2)) for i, g in enumerate(gold)], 200)
    assert good["diff"] > 95 and good["ci95_low"] > 90
    noise = report.beyond_trivial(stsb, ex, [str(float(i * 7 % 5)) for i in range(60)], 200)
    assert noise["ci95_low"] < 0 < noise["ci95_high"]
