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
