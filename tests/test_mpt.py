"""MPT pieces: decomposition, task sampling, distillation and adaptation stages."""

import dataclasses

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
    # T5-base, l = 100, r = 1: 77,668 per task, ~0.035% of 220M (the abstract states 0.035%, not the count)
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


# -- the student's start: distill.shared_init and distill.task_init -------------------------------


def test_task_init_ones_starts_at_shared_and_normal_is_peft_like():
    shared = torch.randn(500, 400)  # u: 2 × 500 draws, v: 2 × 400
    ones = DecomposedPrompt(shared, ["a", "b"], 1, task_init="ones")
    assert torch.equal(ones()[1], shared)
    p = DecomposedPrompt(shared, ["a", "b"], 1, task_init="normal", generator=torch.Generator().manual_seed(0))
    for x in (p.task_u, p.task_v):  # PEFT: torch.normal(mean=0, std=0.02)
        assert abs(x.mean().item()) < 0.003 and 0.018 < x.std().item() < 0.022
    assert p().abs().max() < 0.01 * shared.abs().max()  # P_k = P* ∘ (u v) starts near 0, not at P*
    again = DecomposedPrompt(shared, ["a", "b"], 1, task_init="normal", generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.task_u, again.task_u) and torch.equal(p.task_v, again.task_v)


def _distill_cfg(tmp_path, model_dir, teachers_dir=None, seed=0, **distill_kw):
    from mptune.config import PromptConfig, TrainConfig
    from mptune.recipes import distill

    return distill.DistillConfig(model=ModelConfig(name=str(model_dir)), tasks=["a", "b"],
                                 output_dir=str(tmp_path / "out"), teachers_dir=teachers_dir,
                                 prompt=PromptConfig(length=20), distill=distill.DistillLossConfig(**distill_kw),
                                 train=TrainConfig(seed=seed))


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_shared_init_random_is_not_the_teachers_mean_and_has_the_embedding_scale(kind, tiny_t5_dir, tiny_llama_dir,
                                                                                 tmp_path):
    from mptune.recipes.distill import initial_prompt

    model_dir = tiny_t5_dir if kind == "t5" else tiny_llama_dir
    bb = load_backbone(ModelConfig(name=str(model_dir)))
    teachers = torch.randn(2, 20, bb.hidden_size, generator=torch.Generator().manual_seed(5))
    emb_std = bb.model.get_input_embeddings().weight.float().std().item()

    def start(seed=0, **kw):
        return initial_prompt(_distill_cfg(tmp_path, model_dir, str(tmp_path), seed, **kw), bb, teachers, ["a", "b"])

    assert torch.equal(start(shared_init="teachers").shared, teachers.mean(0))  # the default: SPoT's start too
    p = start(shared_init="random")
    assert not torch.allclose(p.shared, teachers.mean(0), atol=0.1)
    assert abs(p.shared.std().item() / emb_std - 1) < 0.1
    assert torch.equal(p().detach()[0], p.shared.detach())  # task_init ones: P_k = P* at step 0
    assert torch.equal(start(shared_init="random").shared, p.shared)  # the seed decides it
    assert not torch.equal(start(seed=1, shared_init="random").shared, p.shared)
    v = start(shared_init="vocab").shared  # rows of the embedding table (first ids), not the teachers
    table = bb.model.get_input_embeddings().weight.detach().float()
    assert (v[:, None] - table[None]).abs().sum(-1).min(-1).values.max() < 1e-6
    q = start(shared_init="random", task_init="normal")
    assert torch.equal(q.shared, p.shared) and 0.015 < q.task_u.std().item() < 0.025  # P* unchanged by task_init
    r = initial_prompt(dataclasses.replace(_distill_cfg(tmp_path, model_dir, None, 0, weight=0.0,
                                                        shared_init="random", task_init="normal"),
                                           decompose=False), bb, None, ["a", "b"])
    assert (r.task_u == 1).all() and (r.task_v == 1).all()  # the no-decomposition ablation keeps u v = 1


def test_teachers_are_needed_only_to_distil_or_to_start_from(tmp_path, tiny_llama_dir):
    from mptune.config import ConfigError

    for init in ("random", "vocab"):  # λ = 0: no teachers needed
        assert _distill_cfg(tmp_path, tiny_llama_dir, None, weight=0.0, shared_init=init).teachers_dir is None
    with pytest.raises(ConfigError, match="teachers_dir: is required .*shared_init=teachers"):
        _distill_cfg(tmp_path, tiny_llama_dir, None, weight=0.0, shared_init="teachers")
    with pytest.raises(ConfigError, match="teachers_dir"):
        _distill_cfg(tmp_path, tiny_llama_dir, None, shared_init="random")  # λ = 1 distils from them
    with pytest.raises(ValueError, match="not a valid SharedInit"):
        _distill_cfg(tmp_path, tiny_llama_dir, None, weight=0.0, shared_init="zeros")


# -- the target's start: adapt.init ------------------------------------------------------------------


def test_adapt_init_values_start_at_their_formula(tmp_path, tiny_llama_dir):
    """shared: P*; shared_times_mean_task: P* ∘ mean_k(u_k v_k); peft_average: P* ∘ (mean u)(mean v)
    (PEFT AVERAGE_SOURCE_TASKS); source:<task>: P* ∘ u_s v_s (PEFT EXACT_SOURCE_TASK)."""
    from mptune.prompts.io import save_module
    from mptune.recipes.adapt import AdaptConfig, initial_prompt

    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    g = torch.Generator().manual_seed(0)
    K, l, r, d = 3, 6, 2, bb.hidden_size
    src = DecomposedPrompt(torch.randn(l, d, generator=g), ["mnli", "qnli", "sst2"], r,
                           torch.randn(K, l, r, generator=g), torch.randn(K, r, d, generator=g))
    save_module(tmp_path / "source" / "prompt.safetensors", src, bb.name)
    P, u, v = src.shared.detach(), src.task_u.detach(), src.task_v.detach()
    want = {"shared": P, "shared_times_mean_task": P * (u @ v).mean(0), "peft_average": P * (u.mean(0) @ v.mean(0)),
            "source:qnli": P * (u[1] @ v[1])}
    assert not torch.allclose(want["shared_times_mean_task"], want["peft_average"])  # mean of products ≠ product of means
    for init, start in want.items():
        cfg = AdaptConfig(tasks=["rte", "cb"], output_dir=str(tmp_path / "out"), source=str(tmp_path / "source"),
                          model=ModelConfig(name=bb.name), init=init)
        p = initial_prompt(cfg, bb, ["rte", "cb"])
        for k in range(2):  # every target task of MPT* starts the same
            torch.testing.assert_close(p()[k].detach(), start, atol=1e-5, rtol=1e-5)
        keeps_source_uv = init in ("peft_average", "source:qnli")  # PEFT: P* stays P*, u, v come from the source
        assert torch.equal(p.shared.detach(), P) == (init != "shared_times_mean_task")
        assert bool((p.task_u == 1).all()) != keeps_source_uv and p.rank == r


def test_adapt_init_names_a_source_task(tmp_path, tiny_llama_dir):
    from mptune.config import ConfigError
    from mptune.prompts.io import save_module
    from mptune.recipes.adapt import AdaptConfig, initial_prompt
    from mptune.recipes.pipeline import AdaptOptions

    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    save_module(tmp_path / "source" / "prompt.safetensors",
                DecomposedPrompt(torch.randn(4, bb.hidden_size), ["mnli", "qnli"]), bb.name)
    cfg = AdaptConfig(tasks=["rte"], output_dir=str(tmp_path / "out"), source=str(tmp_path / "source"),
                      model=ModelConfig(name=bb.name), init="source:rte")
    with pytest.raises(ConfigError, match=r"init: 'source:rte' names no source task; the source tasks are "
                                          r"source:mnli, source:qnli"):
        initial_prompt(cfg, bb, ["rte"])
    with pytest.raises(ConfigError, match="adapt.init: must be one of shared, shared_times_mean_task, peft_average"):
        AdaptOptions(init="average")
    with pytest.raises(ConfigError, match="init: peft_average needs a source folder"):
        AdaptConfig(tasks=["rte"], output_dir="o", model=ModelConfig(name=bb.name), init="peft_average")
    from mptune.plan import Layout
    from mptune.recipes.pipeline import PipelineConfig

    run = PipelineConfig(model=ModelConfig(name="x"), sources=["rte", "stsb"], targets=["cb"], output_dir="o",
                         adapt=AdaptOptions(init="source:cola"))
    with pytest.raises(ConfigError, match="adapt.init: 'source:cola' names no source task; the source tasks are "
                                          "source:rte, source:stsb"):
        Layout(run, check_data=False)  # before any stage runs
