"""Teacher cache: the distillation loss from cached teacher outputs (losses.TopKLogitKL) equals
the live one (exactly with full log-probs; top-k plus remaining mass is the (k+1)-bucket KL), and
the distill stage gives the same training run with and without it."""

import json

import pytest
import torch
import torch.nn.functional as F

from mptune.backbone import IGNORE, TargetOutput, load_backbone
from mptune.config import ModelConfig
from mptune.data import TextEncoder, collate
from mptune.losses import HiddenMSE, LogitKL, TopKLogitKL
from mptune.teacher_cache import TeacherCache, open_for_distillation

def cached_kl(t, student, cached, labels):
    return TopKLogitKL(t)(student, cached.logp, labels, cached.index, cached.log_rest)


EXAMPLES = [("sst2 sentence: a charming and funny movie", "positive", 0), ("sst2 sentence: drags", "negative", 1),
            ("rte sentence1: the cat sat sentence2: a cat", "not_entailment", 1), ("question: who ?", "ada", 0)]


@pytest.fixture(scope="module", params=["t5", "llama"])
def bb(request, tiny_t5_dir, tiny_llama_dir):
    return load_backbone(ModelConfig(name=str(tiny_t5_dir if request.param == "t5" else tiny_llama_dir)))


def _setup(bb, tmp_path, topk, temperature=2.0, order=(0, 1, 2, 3)):
    enc = TextEncoder(bb.tokenizer, bb.kind)
    feats = [enc.feature(s, t, k) for s, t, k in EXAMPLES]
    torch.manual_seed(0)
    teachers = torch.randn(2, 3, bb.hidden_size)
    cache = open_for_distillation(tmp_path / "tc", feats, teachers, bb, topk=topk, temperature=temperature,
                                  logits=True, hidden=True)
    idx = list(order)
    batch = collate([feats[i] for i in idx], bb.kind, bb.pad_id)
    return feats, teachers, cache, idx, batch


def test_full_logprobs_give_exactly_the_live_loss(bb, tmp_path):
    feats, teachers, cache, idx, batch = _setup(bb, tmp_path, topk=0)
    assert cache.full and cache.k == bb.model.get_output_embeddings().weight.shape[0]
    live = bb(teachers, batch, hidden=True)
    calls = []

    def run(b):
        calls.append(b["input_ids"].shape[0])
        return bb(teachers, b, hidden=True)

    t = cache.lookup(idx, batch, run)
    assert calls == [4] and cache.filled == 4
    student = torch.randn_like(live.logits, requires_grad=True)
    want = LogitKL(2.0)(student, live.logits, live.labels)
    got = cached_kl(2.0, student, t, live.labels)
    assert torch.equal(got, want)
    (g1,) = torch.autograd.grad(got.sum(), student)
    (g2,) = torch.autograd.grad(want.sum(), student)
    assert torch.equal(g1, g2)
    m = HiddenMSE()
    assert torch.equal(m(live.hidden, t.hidden, live.labels), m(live.hidden, live.hidden, live.labels))
    # a second lookup, in another order and batch composition, reads only
    idx2 = [3, 1]
    batch2 = collate([feats[i] for i in idx2], bb.kind, bb.pad_id)
    t2 = cache.lookup(idx2, batch2, run)
    assert calls == [4]
    live2 = bb(teachers, batch2, hidden=True)
    torch.testing.assert_close(cached_kl(2.0, student[:2, : live2.logits.shape[1]] if bb.kind.value == "seq2seq" else
                                         student[:2, -live2.logits.shape[1]:], t2, live2.labels),
                               LogitKL(2.0)(student[:2, : live2.logits.shape[1]] if bb.kind.value == "seq2seq" else
                                            student[:2, -live2.logits.shape[1]:], live2.logits, live2.labels),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t2.hidden, live2.hidden * (live2.labels != IGNORE).unsqueeze(-1), atol=1e-5, rtol=1e-5)


def test_cache_persists_and_rebuilds_when_the_teachers_change(bb, tmp_path):
    feats, teachers, cache, idx, batch = _setup(bb, tmp_path, topk=8)
    cache.lookup(idx[:2], collate([feats[i] for i in idx[:2]], bb.kind, bb.pad_id), lambda b: bb(teachers, b, hidden=True))
    cache.flush()
    again = open_for_distillation(tmp_path / "tc", feats, teachers, bb, topk=8, temperature=2.0, logits=True,
                                  hidden=True)
    assert again.missing(idx) == [2, 3]
    other = open_for_distillation(tmp_path / "tc", feats, teachers + 1, bb, topk=8, temperature=2.0, logits=True,
                                  hidden=True)
    assert other.missing(idx) == [0, 1, 2, 3]
    meta = json.loads((tmp_path / "tc" / "meta.json").read_text())
    assert meta["k"] == 8 and not meta["full"]
    n_tok = sum(len(f.target) for f in feats)
    assert other.nbytes == 4 + n_tok * (8 * 4 + 8 * 4 + 4 + bb.hidden_size * 4)


def _bucket_kl(p_logits, s_logits, k, t):
    """Reference: KL between teacher and student coarsened to (top-k of the teacher, the rest)."""
    p = F.softmax(p_logits / t, -1)
    s = F.softmax(s_logits / t, -1)
    idx = p.topk(k, -1).indices
    pk, sk = p.gather(-1, idx), s.gather(-1, idx)
    pr, sr = 1 - pk.sum(-1, keepdim=True), 1 - sk.sum(-1, keepdim=True)
    P, S = torch.cat([pk, pr], -1), torch.cat([sk, sr], -1)
    return (P * (P.log() - S.log())).sum(-1) * t * t


def _synthetic_cache(tmp_path, V, k, t):
    return TeacherCache(tmp_path / f"syn{k}", [3, 2], vocab_size=V, hidden_size=4, topk=k, temperature=t,
                        logits=True, hidden=False)


@pytest.mark.parametrize("peak", [1.0, 8.0])
def test_topk_kl_is_the_bucket_kl_and_close_to_the_full_kl_when_peaked(tmp_path, peak):
    torch.manual_seed(0)
    V, k, t = 50, 8, 1.5
    labels = torch.tensor([[5, 6, 7], [IGNORE, 8, 9]])  # causal layout: left-padded targets
    teacher = torch.randn(2, 3, V, dtype=torch.float64).float() * peak
    student = (teacher + 0.3 * torch.randn(2, 3, V)).requires_grad_(True)
    cache = _synthetic_cache(tmp_path, V, k, t)
    cache.write([0, 1], TargetOutput(teacher, labels))
    ct = cache.read([0, 1], labels)
    got = cached_kl(t, student, ct, labels)
    m = (labels != IGNORE).float()
    ref_tok = _bucket_kl(teacher.double(), student.double(), k, t).float()
    want = (ref_tok * m).sum(-1) / m.sum(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    (g,) = torch.autograd.grad(got.sum(), student)
    (gw,) = torch.autograd.grad(want.sum(), student)
    torch.testing.assert_close(g, gw, atol=1e-5, rtol=1e-4)
    full = LogitKL(t)(student, teacher, labels)
    assert (got <= full + 1e-5).all()  # coarsening never increases the KL
    if peak > 4:  # a peaked teacher (as trained ones are): top-8 of 50 is within 2% of the full KL
        torch.testing.assert_close(got, full, rtol=2e-2, atol=1e-4)


def _distill_run(tmp_path, model_dir, name, steps=6, log_every=1, dropout="off", **distill_kw):
    """A small distill stage on synthetic rte + stsb with two random teachers; its loss log rows."""
    from mptune.config import DataConfig, PromptConfig, TrainConfig
    from mptune.prompts.io import PromptMeta, save_prompt
    from mptune.recipes import distill
    from synthetic import write_all

    data_dir = write_all(tmp_path / "data")
    teachers = tmp_path / "teachers"
    if not teachers.is_dir():
        bb = load_backbone(ModelConfig(name=str(model_dir)))
        torch.manual_seed(0)
        for task in ("rte", "stsb"):
            save_prompt(teachers / task / "prompt.safetensors", {"prompt": torch.randn(4, bb.hidden_size)},
                        PromptMeta(kind="soft", backbone=str(model_dir), length=4, dim=bb.hidden_size, tasks=[task]))
    out = tmp_path / name
    cfg = distill.DistillConfig(
        model=ModelConfig(name=str(model_dir), dropout=dropout), tasks=["rte", "stsb"], output_dir=str(out),
        teachers_dir=str(teachers), prompt=PromptConfig(length=4),
        distill=distill.DistillLossConfig(temperature=2.0, **distill_kw),
        data=DataConfig(data_dir=str(data_dir), max_source_length=24, max_target_length=6, train_limit=8),
        train=TrainConfig(max_steps=steps, batch_size=4, eval_every=0, log_every=log_every, eval_batch_size=16,
                          lr=0.1))
    distill.run(cfg)
    return out, [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_distill_stage_same_run_with_and_without_cache(tmp_path, tiny_llama_dir):
    logs = {}
    for on in (True, False):
        out, logs[on] = _distill_run(tmp_path, tiny_llama_dir, f"out-{on}", teacher_cache=on, teacher_topk=0)
        assert (out / "teacher_cache" / "meta.json").is_file() == on
    assert len(logs[True]) == 6
    for a, b in zip(logs[True], logs[False]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)
        assert "kl_topk_gap" not in a  # a full cache: the KL is exact, no gap to measure
    meta = json.loads((tmp_path / "out-True" / "teacher_cache" / "meta.json").read_text())
    assert meta["n"] == 16 and meta["full"]  # 8 + 8 examples, 400-token vocabulary stored whole


def test_cache_and_live_teacher_give_the_same_loss_under_dropout_keep(tmp_path, tiny_t5_dir):
    """model.dropout=keep (tiny T5, dropout 0.1): the student draws dropout, the teacher (live, or filling the
    cache) runs in eval mode, so cached and live teachers give the same losses step by step."""
    logs = {}
    for name, kw in {"cache": dict(teacher_cache=True), "live": dict(teacher_cache=False),
                     "off": dict(teacher_cache=False, dropout="off")}.items():
        _, logs[name] = _distill_run(tmp_path, tiny_t5_dir, name, steps=3, teacher_topk=0, **{"dropout": "keep", **kw})
    for a, b in zip(logs["cache"], logs["live"], strict=True):
        for key in ("loss", "plm", "kl", "hidden"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
    assert logs["cache"][0]["plm"] != pytest.approx(logs["off"][0]["plm"], rel=1e-4)  # the student's dropout acted


def test_topk_cache_logs_its_kl_gap_to_the_full_kl(tmp_path, tiny_llama_dir):
    """With a top-k cache the log carries kl_topk_gap = full KL − bucket KL on the batch (>= 0), at log steps."""
    _, rows = _distill_run(tmp_path, tiny_llama_dir, "topk", steps=4, log_every=2, teacher_topk=8)
    assert [r["step"] for r in rows] == [2, 4] and all(r["kl_topk_gap"] > 0 for r in rows)  # k = 8 of V = 400
    # step 1 sees the same prompt and batch with and without the cache: bucket KL + gap = the live (full) KL
    _, cached = _distill_run(tmp_path, tiny_llama_dir, "topk1", steps=1, teacher_topk=8)
    _, live = _distill_run(tmp_path, tiny_llama_dir, "live1", steps=1, teacher_cache=False)
    assert cached[0]["plm"] == pytest.approx(live[0]["plm"], rel=1e-6)
    assert cached[0]["kl"] < live[0]["kl"]
    assert cached[0]["kl"] + cached[0]["kl_topk_gap"] == pytest.approx(live[0]["kl"], rel=1e-5)
