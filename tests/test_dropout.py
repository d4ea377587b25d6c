"""model.dropout: `keep` lets the backbone's own dropout act on the trained prompt's passes, while
teachers, evaluation and generation stay deterministic (Backbone.frozen_eval); `off` is eval mode
throughout. Tiny T5 (dropout_rate 0.1) and a tiny Llama with attention_dropout 0.1."""

import json
import shutil

import pytest
import torch

from mptune.backbone import load_backbone
from mptune.config import ConfigError, ModelConfig, parse
from mptune.data import TextEncoder, collate, collate_source
from mptune.evaluation import predict
from mptune.recipes.prompt_tune import PromptTuneConfig
from mptune.tasks import Example, get_task

TEXTS = [("rte sentence1: the cat sat sentence2: a cat", "entailment", 0),
         ("rte sentence1: who wrote it sentence2: ada did", "not_entailment", 1),
         ("sst2 sentence: a charming movie", "positive", 1), ("sst2 sentence: it drags", "negative", 0)]


@pytest.fixture(scope="module")
def dirs(tiny_t5_dir, tiny_llama_dir, tmp_path_factory):
    llama = tmp_path_factory.mktemp("llama-dropout") / "m"
    shutil.copytree(tiny_llama_dir, llama)
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**cfg, "attention_dropout": 0.1}))
    return {"t5": tiny_t5_dir, "llama": llama}


def _bb(dirs, kind, dropout, gc=False):
    return load_backbone(ModelConfig(name=str(dirs[kind]), dropout=dropout, gradient_checkpointing=gc))


def _inputs(bb):
    """A batch mixing two tasks, two rows each (the fast path's case for Llama), and a prompt table [2, 3, d]."""
    enc = TextEncoder(bb.tokenizer, bb.kind)
    batch = collate([enc.feature(s, t, k) for s, t, k in TEXTS], bb.kind, bb.pad_id)
    return batch, torch.randn(2, 3, bb.hidden_size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_training_forwards_draw_dropout_only_under_keep(dirs, kind):
    for dropout in ("keep", "off"):
        bb = _bb(dirs, kind, dropout)
        batch, table = _inputs(bb)
        bb.train()  # what the Trainer does for the training steps
        a, b = bb(table, batch).logits, bb(table, batch).logits
        assert torch.equal(a, b) == (dropout == "off")
        with bb.frozen_eval():
            ref = bb(table, batch).logits
        assert bb.model.training == (dropout == "keep")  # the mode before frozen_eval is back
        if dropout == "off":
            assert torch.equal(a, ref)


def test_keep_trains_on_the_plain_path_and_evaluates_on_the_fast_one(dirs, monkeypatch):
    bb = _bb(dirs, "llama", "keep")
    batch, table = _inputs(bb)
    bb.train()
    assert bb.uses_fast_prefix and bb.model.training  # the probe ran in eval mode, passed, and left the mode
    fast = bb._forward_fast
    calls = []
    monkeypatch.setattr(bb, "_forward_fast", lambda *a, **k: calls.append(1) or fast(*a, **k))
    bb(table, batch)
    assert calls == []  # dropout active: every row draws its own masks on the prompt positions too
    with bb.frozen_eval():
        bb(table, batch)
    assert calls == [1]


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_teacher_and_evaluation_passes_are_deterministic_under_keep(dirs, kind):
    keep, off = _bb(dirs, kind, "keep"), _bb(dirs, kind, "off")
    batch, table = _inputs(keep)
    keep.train()  # mid-training: teachers and dev evaluation run now
    with keep.frozen_eval():  # what distill's run_teacher does
        t1, t2 = keep(table, batch, hidden=True), keep(table, batch, hidden=True)
    want = off(table, batch, hidden=True)  # eval mode throughout
    for x, y in ((t1, t2), (t1, want)):
        assert torch.equal(x.logits, y.logits) and torch.equal(x.hidden, y.hidden)
    enc = TextEncoder(keep.tokenizer, keep.kind, max_target_length=4)
    src = collate_source([enc.feature(s, t, k) for s, t, k in TEXTS], keep.kind, keep.pad_id)
    assert keep.generate(table, src, 4) == keep.generate(table, src, 4) == off.generate(table, src, 4)
    examples = [Example(source=s, target=t) for s, t, _ in TEXTS]
    for task in (get_task("sst2"), get_task("squad")):  # rank classification and generation
        runs = [predict(bb, lambda: table, task, examples, enc, batch_size=2, progress=False, with_scores=True)
                for bb in (keep, keep, off)]
        assert runs[0] == runs[1] == runs[2] and keep.model.training


def test_checkpointing_under_keep_replays_the_forward_masks(dirs):
    """Gradient checkpointing does not zero dropout under keep, and the recompute in backward sees the
    forward's masks: same loss and prompt gradient as without checkpointing, from the same RNG state."""
    out = {}
    for gc in (False, True):
        bb = _bb(dirs, "t5", "keep", gc=gc)
        batch, table = _inputs(bb)
        table.requires_grad_(True)
        bb.train()
        torch.manual_seed(3)
        o = bb(table, batch)
        loss = torch.nn.functional.cross_entropy(o.logits.flatten(0, 1), o.labels.flatten(), ignore_index=-100)
        loss.backward()
        out[gc] = (loss.detach(), table.grad)
    torch.testing.assert_close(out[True], out[False], atol=1e-6, rtol=1e-5)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in bb.model.modules())


def test_checkpointing_under_off_zeroes_every_dropout(dirs):
    for kind in ("t5", "llama"):
        bb = _bb(dirs, kind, "off", gc=True)
        rates = [m.p for m in bb.model.modules() if isinstance(m, torch.nn.Dropout)]
        floats = [v for m in bb.model.modules() for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)]
        assert floats and not any(rates + floats)  # T5Attention.dropout, LlamaAttention.attention_dropout


def test_checkpointing_is_on_in_the_model_without_a_deprecation_warning(dirs):
    """transformers 5 renamed gradient_checkpointing_enable (a FutureWarning, gone in v6): the backbone
    uses the name the installed version has, and the model checkpoints."""
    import warnings

    for kind in ("t5", "llama"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            bb = _bb(dirs, kind, "keep", gc=True)
        flag = getattr(bb.model, "is_activation_checkpointing", None)
        assert (flag if flag is not None else bb.model.is_gradient_checkpointing) is True


def test_config_rejects_unknown_dropout():
    assert ModelConfig(name="x").dropout == "off" and ModelConfig(name="x", dropout="keep").dropout == "keep"
    with pytest.raises(ConfigError, match="model.dropout: must be one of off, keep, got 'sometimes'"):
        ModelConfig(name="x", dropout="sometimes")
    with pytest.raises(ConfigError, match="model.dropout"):
        parse(PromptTuneConfig, {"model": {"name": "x", "dropout": "on"}, "task": "rte", "output_dir": "o"})
