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


def test_lazy_features_tokenise_on_demand_and_match_the_encoder(tiny_llama_dir):
    from transformers import AutoTokenizer

    from mptune.backbone import ModelKind
    from mptune.data import LazyFeatures, TextEncoder
    from mptune.tasks import Example

    enc = TextEncoder(AutoTokenizer.from_pretrained(tiny_llama_dir), ModelKind.CAUSAL, 16, 4)
    calls = []
    real = enc.feature
    enc.feature = lambda *a: calls.append(a) or real(*a)
    exs = [Example(f"sentence number {i}", "yes" if i % 2 else "no") for i in range(1000)]
    feats = LazyFeatures([(e, i % 3) for i, e in enumerate(exs)], enc)
    assert len(feats) == 1000 and not calls  # nothing tokenised up front
    got = [feats[i] for i in (5, 999, 5)]
    assert len(calls) == 2  # each row once
    assert got[0] is got[2]
    for i, f in zip((5, 999), got):
        want = real(exs[i].source, exs[i].target, i % 3)
        assert (f.source, f.target, f.task_index) == (want.source, want.target, want.task_index)
    assert [f.source for f in feats[:3]] == [real(e.source, e.target).source for e in exs[:3]]
    assert len(list(feats)) == 1000 and len(calls) == 1000


def test_every_user_error_has_one_base_and_keeps_its_builtin_base():
    from mptune.assets import AssetError
    from mptune.checkpoint import CheckpointError
    from mptune.engine import TrainingError
    from mptune.errors import MissingFileError, MptuneError, UnknownNameError
    from mptune.prompts.io import PromptFileError
    from mptune.tasks.readers import DataError

    builtin = {ConfigError: ValueError, DataError: ValueError, PromptFileError: ValueError, AssetError: RuntimeError,
               CheckpointError: RuntimeError, TrainingError: RuntimeError, UnknownNameError: KeyError,
               MissingFileError: FileNotFoundError}
    for cls, base in builtin.items():
        assert issubclass(cls, MptuneError) and issubclass(cls, base), cls
    e = UnknownNameError("unknown task 'x'. Valid tasks: a, b")
    assert str(e) == "unknown task 'x'. Valid tasks: a, b"  # the message, not KeyError's quoted repr


def test_user_facing_lookups_raise_the_base_class():
    from mptune.errors import UnknownNameError
    from mptune.prompts.decomposed import DecomposedPrompt
    from mptune.tasks import get_task

    with pytest.raises(UnknownNameError, match="unknown task 'nope'"):
        get_task("nope")
    import torch

    with pytest.raises(UnknownNameError, match=r"task 'rte' is not in this prompt; it holds \['sst2'\]"):
        DecomposedPrompt(torch.zeros(2, 4), ["sst2"], 1).task_index("rte")


def test_config_parser_lives_in_config():
    from mptune.config import parser_for, to_cli_args

    assert to_cli_args(["c.yaml", "train.lr=0.1", "--x", "y.yaml"]) == ["--config", "c.yaml", "--train.lr=0.1", "--x",
                                                                        "y.yaml"]
    ns = parser_for(TrainConfig).parse_args(["--lr=0.5"])
    assert ns.lr == 0.5 and "Peak learning rate" in parser_for(TrainConfig).format_help()
