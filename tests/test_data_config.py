"""Batch order, collation and config parsing."""

import pytest

from mptune.config import ConfigError, TrainConfig, parse
from mptune.data import ShuffledBatches, shard
from mptune.recipes.prompt_tune import PromptTuneConfig


def test_shuffled_batches_cover_each_epoch_and_resume_exactly():
    a = ShuffledBatches(10, 4, seed=3)
    first = [a.next() for _ in range(5)]  # 20 = two epochs
    assert sorted(sum(first, [])[:10]) == list(range(10))
    b = ShuffledBatches(10, 4, seed=3)
    for _ in range(2):
        b.next()
    c = ShuffledBatches(10, 4, seed=3)
    c.load_state_dict(b.state_dict())
    assert [c.next() for _ in range(3)] == first[2:]


def test_shard_splits_a_global_batch_exactly_once():
    idx = list(range(7))
    parts = [shard(idx, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == idx


def test_train_config_validation_names_the_key():
    with pytest.raises(ValueError, match="train.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)


def test_parse_applies_overrides_and_rejects_unknown_keys():
    base = {"model": {"name": "m"}, "task": "sst2", "output_dir": "o"}
    cfg = parse(PromptTuneConfig, base, ["train.lr=0.1", "prompt.length=7"])
    assert cfg.train.lr == 0.1 and cfg.prompt.length == 7 and cfg.model.name == "m"
    with pytest.raises(ConfigError, match="lrr"):
        parse(PromptTuneConfig, base, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="bogus"):
        parse(PromptTuneConfig, {**base, "bogus": 1})
    with pytest.raises(ConfigError, match="train.lr"):
        parse(PromptTuneConfig, base, ["train.lr=-1"])
