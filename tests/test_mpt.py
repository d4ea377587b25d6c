"""MPT pieces: decomposition, task sampling, distillation and adaptation stages."""

import json

import pytest
import torch

from mptune.backbone import load_backbone
from mptune.config import ModelConfig
from mptune.data import TaskMixingBatches, TextEncoder, collate
from mptune.losses import TokenNLL
from mptune.prompts.decomposed import DecomposedPrompt


def test_decomposition_matches_plain_reference():
    g = torch.Generator().manual_seed(0)
    shared, u, v = torch.randn(5, 7, generator=g), torch.randn(3, 5, 2, generator=g), torch.randn(3, 2, 7, generator=g)
    p = DecomposedPrompt(shared, ["a", "b", "c"], 2, u, v)
    table = p()
    for k in range(3):
        ref = torch.zeros(5, 7)
        for i in range(5):
            for j in range(7):
                ref[i, j] = shared[i, j] * sum(u[k, i, r] * v[k, r, j] for r in range(2))
        torch.testing.assert_close(table[k], ref)


@pytest.mark.parametrize("rank", [1, 3])
def test_fresh_prompt_starts_exactly_at_shared(rank):
    shared = torch.randn(6, 8)
    p = DecomposedPrompt(shared, ["x", "y"], rank)
    assert torch.equal(p()[0], shared) and torch.equal(p()[1], shared)


def test_parameter_count_formula():
    l, d, K, r = 100, 768, 6, 1
    p = DecomposedPrompt(torch.zeros(l, d), [f"t{i}" for i in range(K)], r)
    assert sum(x.numel() for x in p.parameters()) == l * d + K * r * (l + d)
    # the paper's T5-base figure: 77,668 per task, ~0.035% of 220M
    assert p.trainable_per_task() == 77_668
    assert abs(p.trainable_per_task() / 220e6 * 100 - 0.035) < 0.001


def test_invalid_rank_and_tasks_are_refused():
    with pytest.raises(ValueError, match="rank"):
        DecomposedPrompt(torch.zeros(4, 8), ["a"], rank=5)
    with pytest.raises(ValueError, match="duplicate"):
        DecomposedPrompt(torch.zeros(4, 8), ["a", "a"])


def test_task_sampling_draws_between_2_and_all_tasks_and_resumes():
    plan = TaskMixingBatches([50, 30, 20, 10], batch_size=12, seed=0)
    offsets = plan.offsets
    seen_k = set()
    for _ in range(40):
        batch = plan.next()
        assert len(batch) == 12
        tasks = {sum(i >= o for o in offsets) - 1 for i in batch}
        seen_k.add(len(tasks))
    assert seen_k <= {2, 3, 4} and len(seen_k) >= 2
    a = TaskMixingBatches([50, 30, 20, 10], 12, seed=0)
    for _ in range(5):
        a.next()
    b = TaskMixingBatches([50, 30, 20, 10], 12, seed=0)
    b.load_state_dict(a.state_dict())
    assert [a.next() for _ in range(5)] == [b.next() for _ in range(5)]


def test_task_weights_follow_size_and_temperature():
    prop = TaskMixingBatches([90, 10], 4, 0, temperature=1.0).weights
    flat = TaskMixingBatches([90, 10], 4, 0, temperature=1e6).weights
    assert prop[0].item() == pytest.approx(0.9) and flat[0].item() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_mixed_task_batch_equals_single_task_batches(kind, tiny_t5_dir, tiny_llama_dir):
    bb = load_backbone(ModelConfig(name=str(tiny_t5_dir if kind == "t5" else tiny_llama_dir)))
    enc = TextEncoder(bb.tokenizer, bb.kind)
    g = torch.Generator().manual_seed(0)
    p = DecomposedPrompt(torch.randn(3, bb.hidden_size, generator=g), ["a", "b"], 1,
                         torch.randn(2, 3, 1, generator=g), torch.randn(2, 1, bb.hidden_size, generator=g))
    feats = [enc.feature("rte sentence1: the cat sat", "entailment", 0),
             enc.feature("sst2 sentence: a long and rather funny film", "positive", 1)]
    mixed = TokenNLL()(bb(p(), collate(feats, bb.kind, bb.pad_id)))
    single = torch.cat([TokenNLL()(bb(p(), collate([f], bb.kind, bb.pad_id))) for f in feats])
    torch.testing.assert_close(mixed, single, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_shared_u_v(tiny_llama_dir):
    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    enc = TextEncoder(bb.tokenizer, bb.kind)
    p = DecomposedPrompt(torch.randn(3, bb.hidden_size), ["a", "b"], 1)
    teacher = torch.randn(2, 3, bb.hidden_size, requires_grad=True)
    batch = collate([enc.feature("x y z", "positive", 1)], bb.kind, bb.pad_id)
    s = bb(p(), batch)
    with torch.no_grad():
        t = bb(teacher, batch)
    from mptune.losses import LogitKL

    (TokenNLL()(s) + LogitKL()(s.logits, t.logits, s.labels)).sum().backward()
    assert p.shared.grad.abs().sum() > 0 and p.task_u.grad[1].abs().sum() > 0
    assert p.task_u.grad[0].abs().sum() == 0  # task a was not in the batch
    assert teacher.grad is None and all(x.grad is None for x in bb.model.parameters())
