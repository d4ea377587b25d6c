"""Losses against plain reference computations."""

import pytest
import torch
import torch.nn.functional as F

from mptune.backbone import IGNORE, TargetOutput
from mptune.losses import DistillLoss, HiddenMSE, LogitKL, TokenNLL, TopKLogitKL


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 7, generator=g)
    labels = torch.randint(0, 7, (3, 4), generator=g)
    labels[0, 3] = IGNORE
    labels[2, :2] = IGNORE
    return logits, labels


def test_token_nll_matches_per_example_reference():
    logits, labels = _data()
    got = TokenNLL()(TargetOutput(logits, labels))
    for b in range(3):
        keep = labels[b] != IGNORE
        ref = F.cross_entropy(logits[b][keep], labels[b][keep])
        torch.testing.assert_close(got[b], ref)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    s, labels = _data()
    t, _ = _data(1)
    kl = LogitKL(temperature=2.0)
    assert kl(s, s, labels).abs().max() < 1e-6
    assert (kl(s, t, labels) > 0).all()


def test_kl_matches_torch_kl_div_reference():
    s, labels = _data()
    t, _ = _data(1)
    T = 2.0
    got = LogitKL(T)(s, t, labels)
    for b in range(3):
        keep = labels[b] != IGNORE
        ref = F.kl_div(F.log_softmax(s[b][keep] / T, -1), F.log_softmax(t[b][keep] / T, -1),
                       log_target=True, reduction="batchmean") * T * T
        torch.testing.assert_close(got[b], ref)


def test_hidden_mse_matches_reference():
    _, labels = _data()
    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    got = HiddenMSE()(hs, ht, labels)
    for b in range(3):
        keep = labels[b] != IGNORE
        torch.testing.assert_close(got[b], F.mse_loss(hs[b][keep], ht[b][keep]))
    assert HiddenMSE()(hs, hs, labels).abs().max() == 0


# -- top-k KL against stored teachers (teacher_cache) ------------------------------


def _bucket_kl_reference(teacher, student, labels, k, t):
    """Plain loops: KL between teacher and student coarsened to (teacher's top-k tokens, the rest), per example."""
    out = []
    for b in range(teacher.shape[0]):
        total, n = 0.0, 0
        for i in range(teacher.shape[1]):
            if labels[b, i] == IGNORE:
                continue
            p, s = F.softmax(teacher[b, i].double() / t, -1), F.softmax(student[b, i].double() / t, -1)
            top = torch.argsort(p, descending=True)[:k]
            P = torch.cat([p[top], (1 - p[top].sum()).clamp(min=0).reshape(1)])
            S = torch.cat([s[top], (1 - s[top].sum()).reshape(1)])
            total += sum(pj * (pj.log() - sj.log()) for pj, sj in zip(P, S) if pj > 0)
            n += 1
        out.append(total / max(n, 1) * t * t)
    return torch.stack([torch.as_tensor(x) for x in out]).float()


def _stored(teacher, k, t):
    """What teacher_cache stores: top-k log-probs, their ids, log of the remaining mass."""
    lp = F.log_softmax(teacher.float() / t, -1)
    vals, idx = lp.topk(k, -1)
    return vals, idx, lp.scatter(-1, idx, float("-inf")).logsumexp(-1)


def test_topk_kl_with_full_storage_is_exactly_logit_kl():
    s, labels = _data()
    t, _ = _data(1)
    T = 1.7
    want = LogitKL(T)(s, t, labels)
    assert torch.equal(TopKLogitKL(T)(s, F.log_softmax(t / T, -1), labels), want)  # index None: the whole vocabulary
    vals, idx, rest = _stored(t, t.shape[-1], T)  # top-k with k = V: every token, in another order
    assert torch.isinf(rest).all()  # no mass left outside
    torch.testing.assert_close(TopKLogitKL(T)(s, vals, labels, idx, rest), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 6])  # V = 7
def test_topk_kl_is_the_bucket_kl_and_a_lower_bound_of_the_full_kl(k):
    s, labels = _data()
    t, _ = _data(1)
    T = 1.5
    s.requires_grad_(True)
    got = TopKLogitKL(T)(s, *_stored(t, k, T)[:1], labels, *_stored(t, k, T)[1:])
    torch.testing.assert_close(got, _bucket_kl_reference(t, s.detach(), labels, k, T), atol=1e-5, rtol=1e-4)
    full = LogitKL(T)(s, t, labels)
    assert (got <= full + 1e-6).all()  # a lower bound ...
    if k < s.shape[-1] - 1:  # ... strictly below when the rest bucket merges >= 2 tokens
        assert (got < full - 1e-4).all()
    else:  # one token outside the top-k: nothing is merged, the full KL
        torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), s)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_topk_kl_with_a_one_hot_teacher_is_finite():
    s, labels = _data()
    t = torch.full_like(s, -1e4)
    t[..., 2] = 0.0  # all mass on one token: the rest bucket is 0 and contributes 0 (0 log 0)
    got = TopKLogitKL(1.0)(s, *_stored(t, 1, 1.0)[:1], labels, *_stored(t, 1, 1.0)[1:])
    torch.testing.assert_close(got, LogitKL(1.0)(s, t, labels), atol=1e-5, rtol=1e-5)


# -- DistillLoss: L_PLM + λ (L_logits + L_hidden) ----------------------------------


def _pre_refactor_step_loss(s, t, labels, lam, use_logits, use_hidden, temperature, attention_mask=None, cached=None):
    """The distill recipe's loss before DistillLoss existed (its operations, in its order)."""
    nll, kl, mse = TokenNLL(), LogitKL(temperature), HiddenMSE()
    plm = nll(s)
    extra = torch.zeros_like(plm)
    if use_logits:
        if cached is not None:  # the former TeacherCache.kl
            sl = F.log_softmax(s.logits.float() / temperature, dim=-1)
            p = cached.logp
            if cached.index is None:
                lk = (p.exp() * (p - sl)).sum(-1)
            else:
                lk = (p.exp() * (p - sl.gather(-1, cached.index))).sum(-1)
                s_rest = sl.scatter(-1, cached.index, float("-inf")).logsumexp(-1)
                p_rest = cached.log_rest.exp()
                term = p_rest * (cached.log_rest - s_rest)
                lk = lk + torch.where(p_rest > 0, term, torch.zeros_like(term))
            m = (labels != IGNORE).float()
            lk = (lk * m).sum(-1) / m.sum(-1).clamp(min=1.0) * temperature * temperature
        else:
            lk = kl(s.logits, t.logits, labels)
        extra = extra + lk
    if use_hidden:
        if attention_mask is None:
            lh = mse(s.hidden, t.hidden, labels)
        else:
            lh = mse(s.source_hidden, t.source_hidden, attention_mask.masked_fill(attention_mask == 0, -100))
        extra = extra + lh
    return plm + lam * extra


@pytest.fixture(scope="module")
def step_outputs(tiny_llama_dir):
    """A distill step on a tiny Llama: the student's and the teachers' outputs on one mixed-task batch."""
    from mptune.backbone import load_backbone
    from mptune.config import ModelConfig
    from mptune.data import TextEncoder, collate

    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    enc = TextEncoder(bb.tokenizer, bb.kind)
    batch = collate([enc.feature("sst2 sentence: a charming movie", "positive", 0),
                     enc.feature("rte sentence1: the cat sat sentence2: a cat", "not_entailment", 1)],
                    bb.kind, bb.pad_id)
    g = torch.Generator().manual_seed(0)
    student, teachers = torch.randn(2, 3, bb.hidden_size, generator=g), torch.randn(2, 3, bb.hidden_size, generator=g)
    return bb(student, batch, hidden=True), bb(teachers, batch, hidden=True), batch


@pytest.mark.parametrize("lam,use_logits,use_hidden,at_source", [(1.0, True, True, False), (0.3, True, False, False),
                                                                 (2.0, False, True, True), (0.5, True, True, True)])
def test_distill_loss_equals_the_pre_refactor_formula(step_outputs, lam, use_logits, use_hidden, at_source):
    s, t, batch = step_outputs
    mask = batch["attention_mask"] if at_source else None
    loss, terms = DistillLoss(lam, 2.0, use_logits, use_hidden)(s, t, mask)
    assert torch.equal(loss, _pre_refactor_step_loss(s, t, s.labels, lam, use_logits, use_hidden, 2.0, mask))
    assert set(terms) == {"plm"} | ({"kl"} if use_logits else set()) | ({"hidden"} if use_hidden else set())
    assert torch.equal(terms["plm"], TokenNLL()(s))
    assert (terms.get("kl", torch.ones(1)) > 0).all() and (terms.get("hidden", torch.ones(1)) > 0).all()


@pytest.mark.parametrize("k", [0, 8])
def test_distill_loss_on_cached_teachers_equals_the_pre_refactor_formula(step_outputs, tmp_path, k):
    from mptune.teacher_cache import TeacherCache

    s, t, _ = step_outputs
    V = s.logits.shape[-1]
    cache = TeacherCache(tmp_path, (s.labels != IGNORE).sum(1).tolist(), vocab_size=V, hidden_size=s.hidden.shape[-1],
                         topk=k, temperature=2.0)
    cache.write([0, 1], t)
    cached = cache.read([0, 1], s.labels)
    assert (cached.index is None) == (k == 0)
    loss, _ = DistillLoss(0.7, 2.0)(s, cached)
    assert torch.equal(loss, _pre_refactor_step_loss(s, t, s.labels, 0.7, True, True, 2.0, cached=cached))


def test_distill_loss_without_teacher_is_the_task_loss(step_outputs):
    s, _, _ = step_outputs
    loss, terms = DistillLoss(1.0)(s, None)
    assert torch.equal(loss, TokenNLL()(s)) and list(terms) == ["plm"]


# -- reductions: sums over tokens and over d (train.token_reduction, distill.hidden_reduction) ---------------


def _n_tokens(labels):
    return (labels != IGNORE).sum(1).float()


def test_token_sums_are_plain_sums_and_mean_times_the_token_count():
    s, labels = _data()
    t, _ = _data(1)
    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    T = 2.0
    nll_sum = TokenNLL("sum")(TargetOutput(s, labels))
    kl_sum = LogitKL(T, "sum")(s, t, labels)
    mse_sum = HiddenMSE("sum")(hs, ht, labels)
    for b in range(3):  # plain references, one example at a time
        keep = labels[b] != IGNORE
        torch.testing.assert_close(nll_sum[b], F.cross_entropy(s[b][keep], labels[b][keep], reduction="sum"))
        ref_kl = F.kl_div(F.log_softmax(s[b][keep] / T, -1), F.log_softmax(t[b][keep] / T, -1), log_target=True,
                          reduction="sum") * T * T
        torch.testing.assert_close(kl_sum[b], ref_kl)
        torch.testing.assert_close(mse_sum[b], ((hs[b][keep] - ht[b][keep]) ** 2).mean(-1).sum())
    n = _n_tokens(labels)
    assert n.tolist() == [3.0, 4.0, 2.0]  # the rows differ, so sum and mean are not proportional by chance
    torch.testing.assert_close(nll_sum, TokenNLL()(TargetOutput(s, labels)) * n)
    torch.testing.assert_close(kl_sum, LogitKL(T)(s, t, labels) * n)
    torch.testing.assert_close(mse_sum, HiddenMSE()(hs, ht, labels) * n)


def test_hidden_sum_over_d_is_the_sum_of_squares_and_d_times_the_mean():
    _, labels = _data()
    g = torch.Generator().manual_seed(4)
    d = 5
    hs, ht = torch.randn(3, 4, d, generator=g), torch.randn(3, 4, d, generator=g)
    both = HiddenMSE("sum", "sum")(hs, ht, labels)
    for b in range(3):  # Σ over the example's target tokens and d of (H_s − H_t)²
        keep = labels[b] != IGNORE
        torch.testing.assert_close(both[b], ((hs[b][keep] - ht[b][keep]) ** 2).sum())
    torch.testing.assert_close(HiddenMSE("mean", "sum")(hs, ht, labels), HiddenMSE()(hs, ht, labels) * d)
    torch.testing.assert_close(both, HiddenMSE()(hs, ht, labels) * d * _n_tokens(labels))


@pytest.mark.parametrize("k", [3, 7])  # V = 7: k = V stores every token
def test_stored_teacher_kl_reduces_tokens_as_the_live_one(k):
    s, labels = _data()
    t, _ = _data(1)
    T = 1.5
    vals, idx, rest = _stored(t, k, T)
    got = TopKLogitKL(T, "sum")(s, vals, labels, idx, rest)
    torch.testing.assert_close(got, TopKLogitKL(T)(s, vals, labels, idx, rest) * _n_tokens(labels))
    full = LogitKL(T, "sum")(s, t, labels)
    bucket = _bucket_kl_reference(t, s, labels, k, T) if k < s.shape[-1] else LogitKL(T)(s, t, labels)
    torch.testing.assert_close(got, bucket * _n_tokens(labels), atol=1e-5, rtol=1e-4)
    assert torch.equal(TopKLogitKL(T, "sum")(s, F.log_softmax(t / T, -1), labels), full)  # full storage: exact
    gap = full - got  # what distill logs as kl_topk_gap (its batch mean)
    assert (gap >= -1e-5).all()
    if k == s.shape[-1]:
        torch.testing.assert_close(gap, torch.zeros(3), atol=1e-5, rtol=0)
    else:
        assert (gap > 1e-4).all()


def test_distill_loss_with_sums_composes_the_summed_terms(step_outputs):
    s, t, _ = step_outputs
    loss, terms = DistillLoss(0.5, 2.0, token_reduction="sum", hidden_reduction="sum")(s, t)
    n, d = _n_tokens(s.labels), s.hidden.shape[-1]
    torch.testing.assert_close(terms["plm"], TokenNLL()(s) * n)
    torch.testing.assert_close(terms["kl"], LogitKL(2.0)(s.logits, t.logits, s.labels) * n)
    torch.testing.assert_close(terms["hidden"], HiddenMSE()(s.hidden, t.hidden, s.labels) * n * d)
    torch.testing.assert_close(loss, terms["plm"] + 0.5 * (terms["kl"] + terms["hidden"]))


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="'median' is not a valid Reduction"):
        TokenNLL("median")


@pytest.mark.parametrize("stage", ["prompt-tune", "adapt"])
def test_recipes_reduce_the_task_loss_by_train_token_reduction(stage, tmp_path, tiny_t5_dir):
    """Same seed, batch and start: the first step's loss under sums is >= 2 × the one under means, since
    every T5 target has >= 2 tokens (label + </s>) and each example's sum is its mean × its token count."""
    import json

    from mptune.cli import main
    from synthetic import write_glue_rte

    write_glue_rte(tmp_path / "data")
    common = [f"model.name={tiny_t5_dir}", f"data.data_dir={tmp_path / 'data'}", "data.eval_limit=2",
              "prompt.length=4", "train.max_steps=1", "train.batch_size=4", "train.log_every=1"]
    task = ["task=rte"] if stage == "prompt-tune" else ["tasks=[rte]"]
    first = {}
    for how in ("mean", "sum"):
        out = tmp_path / how
        assert main([stage, *task, *common, f"output_dir={out}", f"train.token_reduction={how}"]) == 0
        first[how] = next(json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x)
    assert first["sum"]["loss"] >= 2 * first["mean"]["loss"] - 1e-5
