"""The shared training loop on a real (tiny) backbone: frozen weights stay bit-identical,
only the prompt moves, accumulation and checkpointing do not change the result."""

import hashlib

import pytest
import torch

from mptune.backbone import load_backbone
from mptune.config import ModelConfig, TrainConfig
from mptune.data import ShuffledBatches, TextEncoder, collate
from mptune.engine import Trainer, linear_schedule
from mptune.losses import TokenNLL
from mptune.prompts import SoftPrompt

TEXTS = [("sst2 sentence: a charming movie", "positive"), ("sst2 sentence: dull and slow", "negative"),
         ("sst2 sentence: funny", "positive"), ("sst2 sentence: it drags on", "negative")] * 2


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _fit(model_dir, tmp_path, gradient_checkpointing=False, evaluate=None, **train):
    from accelerate import Accelerator

    torch.manual_seed(0)
    bb = load_backbone(ModelConfig(name=str(model_dir), gradient_checkpointing=gradient_checkpointing))
    enc = TextEncoder(bb.tokenizer, bb.kind)
    feats = [enc.feature(s, t) for s, t in TEXTS]
    prompt = SoftPrompt(3, bb.hidden_size, torch.randn(3, bb.hidden_size) * 0.1)
    cfg = TrainConfig(**{"max_steps": 4, "batch_size": 4, "lr": 0.1, "eval_every": 0, **train})
    nll = TokenNLL()
    before = _digest(bb.model)
    trainer = Trainer(accelerator=Accelerator(cpu=True), module=prompt, param_groups=[{"params": list(prompt.parameters())}],
                      cfg=cfg, plan=ShuffledBatches(len(feats), cfg.batch_size, cfg.seed),
                      make_batch=lambda idx: collate([feats[i] for i in idx], bb.kind, bb.pad_id),
                      loss_fn=lambda b: (nll(bb(trainer.module(), b)), {}),
                      evaluate=evaluate and (lambda: evaluate(prompt)), out_dir=tmp_path, backbone=bb)
    res = trainer.fit()
    assert _digest(bb.model) == before, "the frozen backbone changed"
    return res, prompt


def _kept(model_dir, tmp_path, **kw) -> torch.Tensor:
    """The prompt a run keeps (without dev: its last)."""
    return _fit(model_dir, tmp_path, **kw)[0].best_tensors["weight"]


def test_backbone_unchanged_and_prompt_trained(tiny_model_dir, tmp_path):
    w = _kept(tiny_model_dir, tmp_path)
    assert not torch.allclose(w, torch.zeros_like(w)) and (tmp_path / "log.jsonl").is_file()


def test_gradient_accumulation_matches_full_batch(tiny_llama_dir, tmp_path):
    a = _kept(tiny_llama_dir, tmp_path / "a")
    b = _kept(tiny_llama_dir, tmp_path / "b", grad_accum=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_gradient_checkpointing_matches(kind, tiny_t5_dir, tiny_llama_dir, tmp_path):
    d = tiny_t5_dir if kind == "t5" else tiny_llama_dir
    a = _kept(d, tmp_path / "a")
    b = _kept(d, tmp_path / "b", gradient_checkpointing=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_eval_at_start_makes_the_start_a_candidate(tiny_llama_dir, tmp_path):
    """train.eval_at_start: the starting prompt is evaluated before step 1 and kept when it scores best;
    the extra evaluation leaves the training trajectory as it was."""
    start = {}

    def closeness(prompt):  # a dev score that prefers the start: any training step lowers it
        w = prompt.weight.detach()
        start.setdefault("w", w.clone())
        return -float((w - start["w"]).norm())

    res, p_on = _fit(tiny_llama_dir, tmp_path / "on", evaluate=closeness, eval_every=2, eval_at_start=True)
    assert [h["step"] for h in res.history] == [0, 2, 4] and res.best_step == 0
    torch.testing.assert_close(res.best_tensors["weight"], start["w"], atol=0, rtol=0)
    start.clear()
    res_off, p_off = _fit(tiny_llama_dir, tmp_path / "off", evaluate=closeness, eval_every=2)
    assert [h["step"] for h in res_off.history] == [2, 4] and res_off.best_step == 2
    torch.testing.assert_close(p_on.weight, p_off.weight, atol=0, rtol=0)  # the same last prompt


def test_linear_schedule_warms_up_then_decays():
    f = linear_schedule(warmup=2, total=6)
    vals = [f(s) for s in range(6)]
    assert vals[0] < vals[1] < vals[2] == 1.0 and vals[-1] < vals[3] and f(6) == 0.0
