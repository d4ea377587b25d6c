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


def _fit(model_dir, tmp_path, gradient_checkpointing=False, **train):
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
                      loss_fn=lambda b: (nll(bb(trainer.module(), b)), {}), evaluate=None, out_dir=tmp_path,
                      backbone=bb)
    res = trainer.fit()
    assert _digest(bb.model) == before, "the frozen backbone changed"
    return res.best_tensors["weight"], prompt


def test_backbone_unchanged_and_prompt_trained(tiny_model_dir, tmp_path):
    w, prompt = _fit(tiny_model_dir, tmp_path)
    assert not torch.allclose(w, torch.zeros_like(w)) and (tmp_path / "log.jsonl").is_file()


def test_gradient_accumulation_matches_full_batch(tiny_llama_dir, tmp_path):
    a, _ = _fit(tiny_llama_dir, tmp_path / "a")
    b, _ = _fit(tiny_llama_dir, tmp_path / "b", grad_accum=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_gradient_checkpointing_matches(kind, tiny_t5_dir, tiny_llama_dir, tmp_path):
    d = tiny_t5_dir if kind == "t5" else tiny_llama_dir
    a, _ = _fit(d, tmp_path / "a")
    b, _ = _fit(d, tmp_path / "b", gradient_checkpointing=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_schedule_warms_up_then_decays():
    f = linear_schedule(warmup=2, total=6)
    vals = [f(s) for s in range(6)]
    assert vals[0] < vals[1] < vals[2] == 1.0 and vals[-1] < vals[3] and f(6) == 0.0
