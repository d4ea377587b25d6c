"""Every YAML shipped in configs/ parses with its stage's config class (no drift)."""

from pathlib import Path

import pytest

from mptune.config import load_yaml, parse
from mptune.recipes.pipeline import PipelineConfig
from mptune.recipes.prompt_tune import PromptTuneConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_configs_parse(path):
    cfg = parse(PipelineConfig, load_yaml(path), source=str(path))
    assert cfg.prompt.length == 100 and cfg.rank == 1
    assert cfg.sources == ["mnli", "qnli", "qqp", "sst2", "squad", "record"]
    from mptune.tasks import get_task

    for t in cfg.sources + cfg.targets:
        get_task(t)


def test_prompt_tune_config_parses():
    cfg = parse(PromptTuneConfig, load_yaml(CONFIGS / "prompt_tune_rte.yaml"))
    assert cfg.task == "rte" and cfg.train.lr == 0.3


def test_quality_benchmark_config_parses():
    """The config behind benchmarks/quality_cpu's committed results stays a valid pipeline config."""
    path = CONFIGS.parent / "benchmarks" / "quality_cpu" / "pipeline.yaml"
    cfg = parse(PipelineConfig, load_yaml(path), source=str(path))
    assert cfg.teacher_train.max_steps == 192 and cfg.target_train.max_steps == 16
    assert set(cfg.methods) == {"pt", "spot", "mpt", "mpt_no_distill", "mpt_no_decomp"}
    from mptune.tasks import get_task

    for t in cfg.sources + cfg.targets:
        get_task(t)
