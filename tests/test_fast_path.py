"""Shared-prefix fast path (decoder-only): the prompt's keys/values computed once per task
in the batch give the same logits, hidden states, losses, prompt gradients, rank scores
and generations as the plain path, for mixed-task padded batches; computed once and
reused (fastpath.PrefixKV) they give the same again."""

import logging
import os

import pytest
import torch

from mptune import fastpath
from mptune.backbone import Backbone, load_backbone, sequence_logprob
from mptune.config import ModelConfig
from mptune.data import Feature, TextEncoder, collate, collate_choices, collate_source
from mptune.evaluation import predict
from mptune.fastpath import PrefixKV
from mptune.losses import HiddenMSE, TokenNLL
from mptune.tasks import Example, get_task

from conftest import make_tokenizer

EXAMPLES = [("sst2 sentence: a charming and funny movie that never drags", "positive", 0),
            ("sst2 sentence: drags", "negative", 1),
            ("rte sentence1: the cat sat on the mat sentence2: a cat is sitting", "not_entailment", 2),
            ("question: who wrote the book ?", "ada", 1),
            ("sst2 sentence: funny", "positive", 0)]


def _tiny_causal(kind: str, tok):
    import transformers as tf

    V = len(tok)
    common = dict(vocab_size=V, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, **common)
    elif kind == "gemma":
        cfg = tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=8, **common)
    elif kind == "gemma3":  # sliding-window layers: not supported by the fast path
        cfg = tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, sliding_window=4, **common)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def _pair(kind: str, tiny_llama_dir, gc: bool = False) -> tuple[Backbone, Backbone]:
    """(fast, plain) backbones over the same model."""
    if kind == "llama":
        fast = load_backbone(ModelConfig(name=str(tiny_llama_dir), gradient_checkpointing=gc))
        model, tok = fast.model, fast.tokenizer
    else:
        tok = make_tokenizer(bos=True)
        model = _tiny_causal(kind, tok)
        fast = Backbone(model, tok, name=kind, gradient_checkpointing=gc)
    plain = Backbone(model, tok, name=kind, gradient_checkpointing=gc, fast_prefix=False)
    return fast, plain


def _batch(bb: Backbone, examples=EXAMPLES) -> dict:
    enc = TextEncoder(bb.tokenizer, bb.kind)
    return collate([enc.feature(s, t, k) for s, t, k in examples], bb.kind, bb.pad_id)


def _table(bb: Backbone, tasks: int = 3, l: int = 4) -> torch.Tensor:
    torch.manual_seed(1)
    std = float(bb.model.get_input_embeddings().weight.std())
    return (torch.randn(tasks, l, bb.hidden_size) * std * 3).requires_grad_(True)


def _losses_and_grad(bb: Backbone, table: torch.Tensor, batch: dict):
    out = bb(table, batch, hidden=True)
    nll = TokenNLL()(out)
    loss = nll.sum() + HiddenMSE()(out.hidden, torch.zeros_like(out.hidden), out.labels).sum() \
        + out.source_hidden.pow(2).mean()
    (grad,) = torch.autograd.grad(loss, table)
    return out, nll, grad


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2", "gemma"])
def test_forward_logits_hidden_losses_and_prompt_grads_match_plain(kind, tiny_llama_dir):
    fast, plain = _pair(kind, tiny_llama_dir)
    assert fast.uses_fast_prefix and not plain.uses_fast_prefix
    batch = _batch(fast)
    assert (batch["attention_mask"] == 0).any()  # padded, mixed tasks
    table = _table(fast)
    a, nll_a, g_a = _losses_and_grad(fast, table, batch)
    b, nll_b, g_b = _losses_and_grad(plain, table, batch)
    tol = dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.logits, b.logits, **tol)
    torch.testing.assert_close(a.hidden, b.hidden, **tol)
    torch.testing.assert_close(a.source_hidden, b.source_hidden, **tol)
    torch.testing.assert_close(nll_a, nll_b, **tol)
    torch.testing.assert_close(g_a, g_b, **tol)
    assert g_a.abs().sum() > 0 and all(p.grad is None for p in fast.model.parameters())


def test_prompt_runs_once_per_distinct_task(tiny_llama_dir):
    fast, _ = _pair("llama", tiny_llama_dir)
    batch = _batch(fast)
    table = _table(fast, tasks=5, l=4)  # tasks 3, 4 are not in the batch
    assert fast.uses_fast_prefix  # (the first use probes the fast path)
    seen = []
    h = fast.model.base_model.register_forward_pre_hook(
        lambda m, args, kw: seen.append(tuple(kw["inputs_embeds"].shape)), with_kwargs=True)
    try:
        fast(table, batch)
    finally:
        h.remove()
    B, S = batch["input_ids"].shape
    assert seen == [(3, 4, fast.hidden_size), (B, S, fast.hidden_size)]


def test_batches_without_sharing_take_one_pass(tiny_llama_dir):
    fast, _ = _pair("llama", tiny_llama_dir)
    assert fast.uses_fast_prefix
    seen = []
    h = fast.model.base_model.register_forward_pre_hook(lambda m, a, kw: seen.append(1), with_kwargs=True)
    try:
        fast(_table(fast), _batch(fast, EXAMPLES[:1]))  # batch size 1
        fast(_table(fast), _batch(fast, EXAMPLES[:3]))  # three rows, three tasks
    finally:
        h.remove()
    assert seen == [1, 1]


def test_mixed_task_batch_equals_single_task_batches(tiny_llama_dir):
    fast, _ = _pair("llama", tiny_llama_dir)
    table = _table(fast)
    mixed = fast(table, _batch(fast))
    lp_mixed = sequence_logprob(mixed.logits, mixed.labels)
    single = []
    for ex in EXAMPLES:
        o = fast(table, _batch(fast, [ex]))
        single.append(sequence_logprob(o.logits, o.labels))
    torch.testing.assert_close(lp_mixed, torch.cat(single), atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_keeps_the_prefix(tiny_llama_dir):
    fast, plain = _pair("llama", tiny_llama_dir, gc=True)
    fast.train(), plain.train()
    assert fast.model.training and fast.uses_fast_prefix
    batch, table = _batch(fast), _table(fast)
    a, nll_a, g_a = _losses_and_grad(fast, table, batch)
    b, nll_b, g_b = _losses_and_grad(plain, table, batch)
    torch.testing.assert_close(nll_a, nll_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_a, g_b, atol=1e-5, rtol=1e-4)
    # the per-layer flag that lets checkpointed layers keep the read-only cache is only set during the call
    assert not any("_can_checkpoint_with_cache" in vars(m) for m in fast.model.modules())


def test_models_without_support_fall_back_to_the_plain_path(tiny_llama_dir, caplog):
    # GPT-2 drops every cache under gradient checkpointing; Gemma 3 has sliding-window layers.
    for kind, gc in (("gpt2", True), ("gemma3", False)):
        fast, plain = _pair(kind, tiny_llama_dir, gc=gc)
        fast.train(), plain.train()
        with caplog.at_level(logging.WARNING, logger="mptune.backbone"):
            assert not fast.uses_fast_prefix
        assert "fast prefix path off" in caplog.text
        batch, table = _batch(fast), _table(fast)
        _, nll_a, g_a = _losses_and_grad(fast, table, batch)
        _, nll_b, g_b = _losses_and_grad(plain, table, batch)
        torch.testing.assert_close(nll_a, nll_b)
        torch.testing.assert_close(g_a, g_b)


def test_flag_and_seq2seq_take_the_plain_path(tiny_llama_dir, tiny_t5_dir):
    assert ModelConfig(name="x").fast_prefix is True
    assert load_backbone(ModelConfig(name=str(tiny_llama_dir))).uses_fast_prefix
    assert not load_backbone(ModelConfig(name=str(tiny_llama_dir), fast_prefix=False)).uses_fast_prefix
    assert not load_backbone(ModelConfig(name=str(tiny_t5_dir))).uses_fast_prefix


def test_rows_with_an_empty_source_use_the_plain_path(tiny_llama_dir):
    # The first target token is predicted from the last prompt position: the fast path would not compute it.
    fast, plain = _pair("llama", tiny_llama_dir)
    enc = TextEncoder(fast.tokenizer, fast.kind)
    feats = [Feature([], enc.target("positive"), 0), enc.feature("sst2 sentence: drags", "negative", 1)]
    batch = collate(feats, fast.kind, fast.pad_id)
    assert not fast._use_fast(batch["attention_mask"], batch["labels"])
    table = _table(fast)
    torch.testing.assert_close(fast(table, batch).logits, plain(table, batch).logits)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2", "gemma", "llama-eager"])
def test_rank_scores_match_plain(kind, tiny_llama_dir):
    fast, plain = _pair(kind.removesuffix("-eager"), tiny_llama_dir)
    if kind.endswith("-eager"):  # the 4D mask is additive, as eager attention adds it
        fast.model.set_attn_implementation("eager")
    enc = TextEncoder(fast.tokenizer, fast.kind)
    # duplicate sources (same task: shared; other task: not), ragged and multi-token choices
    srcs = [("sst2 sentence: a charming movie", 0), ("sst2 sentence: drags", 1), ("sst2 sentence: a charming movie", 0),
            ("sst2 sentence: a charming movie", 2), ("question: who wrote the book ?", 1)]
    feats = [Feature(enc.source(s), [], k) for s, k in srcs]
    choices = [["positive", "negative"], ["positive", "negative", "not_entailment"], ["a", "b c d e"],
               ["entailment", "not_entailment"], ["ada"]]
    ids = [[enc.target(c) for c in ch] for ch in choices]
    batch, rows = collate_choices(feats, ids, fast.kind, fast.pad_id)
    table = _table(fast).detach()
    got, want = fast.score_choices(table, batch), plain.score_choices(table, batch)
    assert fast.tree_choices and got.shape == (len(rows),)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _hf_generated_ids(bb: Backbone, table, batch, n):
    emb, mask = bb._with_prompt(table, batch["task_index"], batch["input_ids"], batch["attention_mask"])
    tok = bb.tokenizer
    with torch.no_grad():
        return bb.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                 num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_generation_matches_hf_generate(kind, tiny_llama_dir):
    fast, plain = _pair(kind, tiny_llama_dir)
    enc = TextEncoder(fast.tokenizer, fast.kind)
    feats = [Feature(enc.source(s), [], k) for s, _, k in EXAMPLES]
    batch = collate_source(feats, fast.kind, fast.pad_id)
    table = _table(fast).detach()
    assert fast.generate(table, batch, 7) == plain.generate(table, batch, 7)
    # make one row stop early: declare its second generated token the EOS
    ids = _hf_generated_ids(plain, table, batch, 7)
    eos = int(ids[0, 1])
    for bb in (fast, plain):
        bb.tokenizer.eos_token = bb.tokenizer.convert_ids_to_tokens(eos)
    try:
        got, want = fast.generate(table, batch, 7), plain.generate(table, batch, 7)
    finally:
        for bb in (fast, plain):
            bb.tokenizer.eos_token = "</s>"
    assert got == want


# sources of different lengths (padded), 2 tasks, one- and multi-token choices, 2 or 3 per example
RANK = [("sst2 sentence: a charming and funny movie that never drags", 0, ["positive", "negative"]),
        ("sst2 sentence: drags", 1, ["positive", "negative", "not_entailment"]),
        ("question: who wrote the book ? context: the book was written by ada", 1, ["ada", "the cat sat on"]),
        ("rte sentence1: the cat sat", 0, ["entailment", "not_entailment"])]


def _rank_batch(bb: Backbone, rank=RANK):
    enc = TextEncoder(bb.tokenizer, bb.kind)
    feats = [Feature(enc.source(s), [], k) for s, k, _ in rank]
    ids = [[enc.target(c) for c in ch] for _, _, ch in rank]
    return feats, ids, collate_choices(feats, ids, bb.kind, bb.pad_id)


@pytest.mark.parametrize("layout", ["tree", "tree_gqa", "two_pass"])
def test_rank_scores_equal_one_row_per_choice(layout, tiny_llama_dir, monkeypatch):
    """Each source once, its choices against the source's keys/values (tree: all in one row under a
    4D mask, GQA keys/values repeated per head or not; two_pass, for kernels without 4D masks: the
    choices against the source's cache) == the per-row scores of [prompt ; source ; choice] rows
    through the plain path (fp32, atol 1e-5)."""
    monkeypatch.setenv(fastpath.SDPA_GQA_FLAG, "1" if layout == "tree_gqa" else "0")
    if layout == "two_pass":
        monkeypatch.setattr(fastpath, "DENSE_MASK_KERNELS", ())
    fast, plain = _pair("llama", tiny_llama_dir)
    feats, ids, (batch, rows) = _rank_batch(fast)
    assert (batch["attention_mask"] == 0).any() and max(len(c) for ch in ids for c in ch) > 3
    table = _table(fast).detach()
    per_row = collate([Feature(feats[e].source, c, feats[e].task_index) for e, ch in enumerate(ids) for c in ch],
                      plain.kind, plain.pad_id)
    with torch.no_grad():
        out = plain(table, per_row)
        want = sequence_logprob(out.logits, out.labels)
    assert fast.uses_fast_prefix
    seen = []
    h = fast.model.base_model.register_forward_pre_hook(
        lambda m, args, kw: seen.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        got = fast.score_choices(table, batch)
    finally:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (B, S), (N, T) = batch["input_ids"].shape, batch["labels"].shape
    assert N == len(rows) > len(feats) == B
    # prompts of the 2 tasks, then every source once with every choice's tokens but its last:
    # tree: in one pass, 3 choice blocks (the most choices of an example) of T - 1 slots after each source
    passes = [(B, S), (N, T - 1)] if layout == "two_pass" else [(B, S + 3 * (T - 1))]
    assert seen == [(2, 4), *passes]


def test_models_ignoring_4d_masks_score_in_two_passes(tiny_llama_dir, monkeypatch, caplog):
    """The probe compares the one-row layout with plain rows: a model that scored it wrongly (here:
    made to) ranks in two passes, with the plain path's scores."""
    tree = fastpath._score_tree
    monkeypatch.setattr(fastpath, "_score_tree", lambda bb, kv, b: tree(bb, kv, b) + 1.0)
    fast, plain = _pair("llama", tiny_llama_dir)
    with caplog.at_level(logging.INFO, logger="mptune.backbone"):
        assert fast.uses_fast_prefix and not fast.tree_choices
    assert "takes two passes" in caplog.text
    _, _, (batch, _) = _rank_batch(fast)
    table = _table(fast).detach()
    torch.testing.assert_close(fast.score_choices(table, batch), plain.score_choices(table, batch), atol=1e-5, rtol=0)
    monkeypatch.setattr(fastpath, "_score_tree", tree)
    assert _pair("llama", tiny_llama_dir)[0].tree_choices


def test_cpu_sdpa_gqa_flag_set_once_unless_the_user_did(monkeypatch):
    flag = fastpath.SDPA_GQA_FLAG
    monkeypatch.setenv(flag, "x")  # (so that the test's end restores the environment)
    monkeypatch.delenv(flag)
    assert not fastpath.cpu_sdpa_gqa(torch.device("cuda")) and flag not in os.environ
    assert fastpath.cpu_sdpa_gqa(torch.device("cpu")) and os.environ[flag] == "1"
    monkeypatch.setenv(flag, "0")  # the user's choice stands
    assert not fastpath.cpu_sdpa_gqa(torch.device("cpu")) and os.environ[flag] == "0"


def test_prompt_keys_values_computed_once_and_reused(tiny_llama_dir):
    fast, plain = _pair("llama", tiny_llama_dir)
    table = _table(fast).detach()
    with torch.no_grad():
        kv = fast.prefix(table)
        parts = [fastpath.prompt_kv(fast, table[i: i + 1]) for i in range(3)]
    assert isinstance(kv, PrefixKV) and kv.num_prompts == 3 and kv.length == 4 and kv.nbytes > table.nbytes
    assert not isinstance(plain.prefix(table), PrefixKV)  # plain path: the table itself
    # one task at a time, assembled into a table (as a server keeps them), == the table at once
    joined = PrefixKV.cat([parts[2], parts[0], parts[1]]).select([1, 2, 0])
    for (k, v), (k2, v2) in zip(kv.layers, joined.layers):
        torch.testing.assert_close(k, k2, atol=1e-6, rtol=0)
        torch.testing.assert_close(v, v2, atol=1e-6, rtol=0)
    # reused by several batches: scores and generations equal the plain path's
    _, _, (rank_batch, _) = _rank_batch(fast)
    for b in (rank_batch, _rank_batch(fast, RANK[1:3])[2][0]):
        torch.testing.assert_close(fast.score_choices(joined, b), plain.score_choices(table, b), atol=1e-5, rtol=0)
    enc = TextEncoder(fast.tokenizer, fast.kind)
    gen = collate_source([Feature(enc.source(s), [], k) for s, _, k in EXAMPLES], fast.kind, fast.pad_id)
    assert fast.generate(kv, gen, 5) == plain.generate(table, gen, 5)
    # a row with an empty source cannot start from the prefix: the plain path runs it from kv.prompts
    empty = collate_source([Feature([], [], 0), Feature(enc.source("drags"), [], 1)], fast.kind, fast.pad_id)
    assert fast.generate(kv, empty, 3) == plain.generate(table, empty, 3)


@pytest.mark.parametrize("name", ["sst2", "squad"])
def test_predict_batches_by_length_and_keeps_example_order(name, tiny_llama_dir):
    fast, plain = _pair("llama", tiny_llama_dir)
    task = get_task(name)
    texts = [s for s, _, _ in EXAMPLES] + ["sst2 sentence: funny and charming", "a"]
    words = ["positive", "negative", "not_entailment"]  # per-example choices, rotated: answers differ
    examples = [Example(source=t, target="", choices=words[i % 3:] + words[: i % 3] if name == "sst2" else None)
                for i, t in enumerate(texts)]
    enc = TextEncoder(fast.tokenizer, fast.kind, max_target_length=4)
    table = _table(fast).detach()
    got = predict(fast, lambda: table, task, examples, enc, batch_size=3, task_index=2, progress=False)
    want = predict(plain, lambda: table, task, examples, enc, batch_size=3, task_index=2, progress=False)
    alone = [predict(plain, lambda: table, task, [e], enc, batch_size=1, task_index=2, progress=False)[0]
             for e in examples]
    assert got == want == alone
    assert len(set(got)) > 1  # not a constant answer: the order really is checked
