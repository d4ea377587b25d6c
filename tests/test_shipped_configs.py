"""Every YAML shipped in configs/ parses with its stage's config class (no drift), and the paper
presets (configs/pipelines/t5_base_*.yaml) run end to end on a tiny random T5, keeping every value
they set except the model, the budgets and the task lists."""

import json
from pathlib import Path

import pytest
import yaml

from mptune.config import load_yaml, parse
from mptune.recipes.pipeline import PipelineConfig
from mptune.recipes.prompt_tune import PromptTuneConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted((CONFIGS / "pipelines").glob("t5_base_*.yaml"))
TRAIN_SECTIONS = ("teacher_train", "source_train", "target_train")


@pytest.mark.parametrize("path", sorted((CONFIGS / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_configs_parse(path):
    cfg = parse(PipelineConfig, load_yaml(path), source=str(path))
    assert cfg.prompt.length == 100 and cfg.rank == 1
    assert cfg.sources == ["mnli", "qnli", "qqp", "sst2", "squad", "record"]
    from mptune.tasks import get_task

    for t in cfg.sources + cfg.targets:
        get_task(t)


def test_paper_presets_set_the_sourced_values():
    """ATTEMPT's configs and issue #18's choices (docs/fidelity.md), not this package's defaults."""
    assert [p.name for p in PRESETS] == ["t5_base_glue.yaml", "t5_base_superglue.yaml"]
    for path in PRESETS:
        cfg = parse(PipelineConfig, load_yaml(path), source=str(path))
        assert cfg.model.name == "google-t5/t5-base" and cfg.prompt.init == "vocab"
        assert cfg.model.dropout == "keep"  # ATTEMPT trains T5 with its dropout on
        assert cfg.prompt.init_vocab_size == 5000 and cfg.data.max_source_length == 256
        assert cfg.data.format == "attempt"  # ATTEMPT's tasks.py strings and labels "0"/"1"/...
        for section in TRAIN_SECTIONS:
            t = getattr(cfg, section)
            assert (t.lr, t.batch_size, t.warmup_steps, t.weight_decay, t.max_grad_norm) == (0.3, 32, 500, 1e-5, 1.0)
            assert t.token_reduction == "sum"
        d = cfg.distill
        assert (d.shared_init, d.hidden_reduction, d.teacher_topk, d.teacher_cache) == ("random", "sum", 0, False)
        assert (cfg.eval.mode, cfg.eval.match) == ("generate", "exact")  # ATTEMPT: generate, strip, compare
        # true few-shot (k per class in the selection dev too, 3 draws) and SPoT both ways
        assert (cfg.data.few_shot_dev, cfg.few_shot_draws) == ("k", 3)
        assert {"pt", "spot", "spot_avg", "mpt"} <= set(cfg.methods)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from synthetic import write_all

    return write_all(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_paper_preset_runs_end_to_end_on_a_tiny_t5(path, tmp_path, tiny_t5_dir, data_dir):
    from mptune.cli import main

    run = tmp_path / "run"
    overrides = {"model.name": str(tiny_t5_dir), "output_dir": str(run), "data.data_dir": str(data_dir),
                 "data.eval_limit": 4, "sources": "[rte, stsb]", "targets": "[rte, stsb]",
                 "data.max_target_length": 8}  # the generation budget: a random T5 never stops on its own
    for section in TRAIN_SECTIONS:  # budgets: 2 steps, no warmup, one dev evaluation
        overrides |= {f"{section}.max_steps": 2, f"{section}.warmup_steps": 0, f"{section}.eval_every": 2}
    assert main(["run", str(path), *(f"{k}={v}" for k, v in overrides.items())]) == 0

    preset = _flat(load_yaml(path))
    resolved = _flat(yaml.safe_load((run / "config.yaml").read_text()))
    kept = {k: v for k, v in preset.items() if k not in overrides}
    assert kept and {k: resolved[k] for k in kept} == kept  # every other preset value reached the run
    # ... and the stages: summed losses everywhere, P* from random, the full-vocabulary KL computed live
    source = yaml.safe_load((run / "source/mpt/config.yaml").read_text())
    assert source["distill"] == load_yaml(path)["distill"]
    assert source["train"]["token_reduction"] == "sum" and not (run / "source/mpt/teacher_cache").exists()
    log = [json.loads(x) for x in (run / "source/mpt/log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert log and all("kl" in r and "hidden" in r and "kl_topk_gap" not in r for r in log)
    for stage in ("teachers/rte", "source/mpt", "targets/full/pt/seed-42/stsb", "targets/full/mpt/seed-42/rte"):
        stage_cfg = yaml.safe_load((run / stage / "config.yaml").read_text())
        assert stage_cfg["train"]["token_reduction"] == "sum" and stage_cfg["model"]["dropout"] == "keep"
    # ATTEMPT's text: every stage records the format; labels are class indices, STS-B rounded to 0.1
    for stage, task in (("teachers/rte", "rte"), ("source/mpt", "stsb"), ("targets/full/pt/seed-42/stsb", "stsb")):
        assert json.loads((run / stage / "tasks/formats.json").read_text())[task] == "attempt"
    rte = [json.loads(x) for x in (run / "teachers/rte/predictions_rte_test.jsonl").read_text().splitlines()]
    assert rte and {r["target"] for r in rte} <= {"0", "1"}
    spot = yaml.safe_load((run / "targets/full/spot/seed-42/rte/config.yaml").read_text())
    assert spot["prompt"]["init"] == "best_prompt"  # SPoT starts from a teacher; MPT's P* did not (random)
    assert (run / "targets/full/spot/seed-42/rte/spot_choice.json").is_file()
    # every stage evaluates as ATTEMPT (generate, exact match) and reports its invalid predictions
    stages = ("teachers/rte", "source/mpt", "targets/full/spot/seed-42/rte", "targets/full/mpt_multi/seed-42/rte+stsb")
    for stage in stages:
        assert yaml.safe_load((run / stage / "config.yaml").read_text())["eval"] == load_yaml(path)["eval"]
        for entry in json.loads((run / stage / "metrics.json").read_text())["tasks"].values():
            assert all(0 <= entry[s]["invalid_rate"] <= 100 for s in ("dev", "test"))
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["settings"]["full"]) == {"pt", "spot", "spot_avg", "mpt", "mpt_multi"}
    pt = summary["settings"]["full"]["pt"]["tasks"]["rte"]
    pt_test = json.loads((run / "targets/full/pt/seed-42/rte/metrics.json").read_text())["tasks"]["rte"]["test"]
    assert pt["invalid_rate"] == pt_test["invalid_rate"]
    assert "[% invalid predictions]" in summary["markdown"]
    assert f"{pt['mean']:.1f} [{pt['invalid_rate']:.1f}]" in summary["markdown"]


def test_prompt_tune_config_parses():
    cfg = parse(PromptTuneConfig, load_yaml(CONFIGS / "prompt_tune_rte.yaml"))
    assert cfg.task == "rte" and cfg.train.lr == 0.3


def test_quality_benchmark_config_parses():
    """The config behind benchmarks/quality_cpu's committed results stays a valid pipeline config."""
    path = CONFIGS.parent / "benchmarks" / "quality_cpu" / "pipeline.yaml"
    cfg = parse(PipelineConfig, load_yaml(path), source=str(path))
    assert cfg.teacher_train.max_steps == 192 and cfg.target_train.max_steps == 16
    assert set(cfg.methods) == {"pt", "spot_avg", "mpt", "mpt_no_distill", "mpt_no_decomp"}
    assert (cfg.few_shot_draws, cfg.data.few_shot_dev) == (1, "full")  # the committed results' protocol
    from mptune.tasks import get_task

    for t in cfg.sources + cfg.targets:
        get_task(t)


def test_gpu_paper_preset_reduction_keeps_the_preset():
    """benchmarks/gpu/paper_preset.py's overrides are valid and change only budgets, targets and limits."""
    import importlib.util

    path = CONFIGS.parent / "benchmarks" / "gpu" / "paper_preset.py"
    spec = importlib.util.spec_from_file_location("paper_preset", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = parse(PipelineConfig, load_yaml(mod.PRESET), [f"{k}={v}" for k, v in mod.REDUCED.items()])
    assert cfg.targets == ["rte", "mrpc", "stsb", "cola"] and cfg.source_train.max_steps == 5000
    touched = {k.split(".")[0] for k in mod.REDUCED}
    assert touched <= {"targets", "output_dir", "teacher_train", "source_train", "target_train", "data"}
    assert {k for k in mod.REDUCED if k.startswith(("teacher_train", "source_train", "target_train", "data"))} == {
        "teacher_train.max_steps", "source_train.max_steps", "target_train.max_steps", "data.eval_limit"}
    assert cfg.distill.shared_init == "random" and cfg.prompt.length == 100  # the rest is the preset's


V2 = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_cpu" / "v2"


@pytest.mark.parametrize("path", sorted(V2.glob("*_source.yaml")), ids=lambda p: p.name)
def test_v2_source_task_files_define_their_splits(path, shared_data):
    """The v2 benchmark's source tasks made from a single released file (SQuAD v1.1 dev, QNLI dev): a
    seeded hold-out of 1,000 rows halved into dev / test, the rest train; natural format as data.format."""
    from mptune.tasks.resolve import load_task_file

    report = load_task_file(path, shared_data)
    assert report.problems == [] and report.task is not None
    assert report.task.with_format("natural").template.endswith("\nAnswer:")  # the decoder-only template
    sizes = report.task.sizes(shared_data)
    assert sizes["dev"] == sizes["test"] == 500 and sizes["train"] > 4000


def test_setup_installs_the_pinned_versions_of_declared_dependencies():
    """scripts/constraints.txt pins exact versions of packages pyproject.toml declares (a stale or
    misspelled line would pin nothing), covers the libraries stage.json records, and setup.sh uses it."""
    import re

    tomllib = pytest.importorskip("tomllib")
    root = CONFIGS.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower()
                for d in [*project["dependencies"], *(d for ds in project["optional-dependencies"].values() for d in ds)]}
    lines = [x.split("#")[0].strip() for x in (root / "scripts" / "constraints.txt").read_text().splitlines()]
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", x).groups() for x in lines if x)
    assert {p.lower() for p in pins} <= declared and {"transformers", "accelerate"} <= pins.keys()
    assert "torch" not in pins  # a CUDA build the user installed first is kept
    assert "-c scripts/constraints.txt" in (root / "scripts" / "setup.sh").read_text()
