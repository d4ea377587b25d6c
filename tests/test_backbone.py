"""Backbone: frozen, prompt enters via inputs_embeds, padding/positions right for both kinds."""

import pytest
import torch
import torch.nn.functional as F

from mptune.backbone import IGNORE, ModelKind, load_backbone, sequence_logprob
from mptune.config import ModelConfig
from mptune.data import TextEncoder, collate, collate_choices, collate_source


@pytest.fixture(scope="module")
def backbones(tiny_t5_dir, tiny_llama_dir):
    return {k: load_backbone(ModelConfig(name=str(p))) for k, p in (("t5", tiny_t5_dir), ("llama", tiny_llama_dir))}


def _examples():
    return [("sst2 sentence: a charming and funny movie", "positive"), ("sst2 sentence: drags", "negative")]


def _reference_target_logprobs(bb, prompt, source, target):
    """One unpadded example through the plain HF forward."""
    enc = TextEncoder(bb.tokenizer, bb.kind)
    src, tgt = torch.tensor([enc.source(source)]), torch.tensor([enc.target(target)])
    emb_p = prompt.unsqueeze(0)
    if bb.kind == ModelKind.SEQ2SEQ:
        emb = torch.cat([emb_p, bb.embed(src)], 1)
        logits = bb.model(inputs_embeds=emb, labels=tgt).logits
    else:
        ids = torch.cat([src, tgt], 1)
        emb = torch.cat([emb_p, bb.embed(ids)], 1)
        logits = bb.model(inputs_embeds=emb).logits[:, -tgt.shape[1] - 1:-1]
    return F.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum()


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_padded_batch_matches_unpadded_reference(backbones, kind):
    bb = backbones[kind]
    enc = TextEncoder(bb.tokenizer, bb.kind)
    torch.manual_seed(0)
    prompt = torch.randn(4, bb.hidden_size) * 0.5
    feats = [enc.feature(s, t) for s, t in _examples()]
    out = bb(prompt.unsqueeze(0), collate(feats, bb.kind, bb.pad_id))
    got = sequence_logprob(out.logits, out.labels)
    want = torch.stack([_reference_target_logprobs(bb, prompt, s, t) for s, t in _examples()])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_backbone_is_frozen_and_gradients_reach_the_prompt(backbones, kind):
    bb = backbones[kind]
    assert not any(p.requires_grad for p in bb.model.parameters())
    enc = TextEncoder(bb.tokenizer, bb.kind)
    prompt = torch.randn(1, 3, bb.hidden_size, requires_grad=True)
    out = bb(prompt, collate([enc.feature(s, t) for s, t in _examples()], bb.kind, bb.pad_id))
    F.cross_entropy(out.logits.transpose(1, 2), out.labels.clamp(min=0)).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.model.parameters())


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_rank_scores_equal_teacher_forced_logprobs(backbones, kind):
    bb = backbones[kind]
    enc = TextEncoder(bb.tokenizer, bb.kind)
    prompt = torch.randn(1, 3, bb.hidden_size)
    feats = [enc.feature(s, "") for s, _ in _examples()]
    choices = [[enc.target("positive"), enc.target("negative")]] * 2
    batch, rows = collate_choices(feats, choices, bb.kind, bb.pad_id)
    scores = bb.score_choices(prompt, batch)
    assert scores.shape == (4,) and rows.tolist() == [0, 0, 1, 1]
    for r, (i, c) in enumerate([(0, "positive"), (0, "negative"), (1, "positive"), (1, "negative")]):
        ref = _reference_target_logprobs(bb, prompt[0], _examples()[i][0], c)
        assert abs(scores[r].item() - ref.item()) < 1e-4


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_generation_is_batch_invariant(backbones, kind):
    bb = backbones[kind]
    enc = TextEncoder(bb.tokenizer, bb.kind, max_target_length=6)
    prompt = torch.randn(1, 3, bb.hidden_size)
    feats = [enc.feature(s, "") for s, _ in _examples()]
    both = bb.generate(prompt, collate_source(feats, bb.kind, bb.pad_id), 6)
    alone = [bb.generate(prompt, collate_source([f], bb.kind, bb.pad_id), 6)[0] for f in feats]
    assert both == alone and all(isinstance(t, str) for t in both)


def test_mixed_task_rows_gather_their_own_prompt(backbones):
    bb = backbones["llama"]
    enc = TextEncoder(bb.tokenizer, bb.kind)
    table = torch.randn(2, 3, bb.hidden_size)
    f0, f1 = (enc.feature(s, t, i) for i, (s, t) in enumerate(_examples()))
    mixed = bb(table, collate([f0, f1], bb.kind, bb.pad_id))
    lp_mixed = sequence_logprob(mixed.logits, mixed.labels)
    single = [sequence_logprob(*(lambda o: (o.logits, o.labels))(bb(table, collate([f], bb.kind, bb.pad_id))))
              for f in (f0, f1)]
    torch.testing.assert_close(lp_mixed, torch.cat(single), atol=1e-4, rtol=1e-4)


def test_gguf_path_is_split_into_folder_and_file(tmp_path):
    from mptune.backbone import resolve_model_source

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model_source(ModelConfig(name=str(f))) == (str(tmp_path), "m.gguf")
    with pytest.raises(FileNotFoundError):
        resolve_model_source(ModelConfig(name=str(tmp_path / "missing.gguf")))


def test_kind_specs_lay_out_batches():
    from mptune.data import Feature
    from mptune.kinds import spec_for

    f = [Feature([5, 6, 7], [8, 1], 0), Feature([9], [1], 1)]
    causal, s2s = spec_for("causal"), spec_for(ModelKind.SEQ2SEQ)
    b = causal.collate(f, 0)  # [pad* ; source ; target], left-padded: targets end every row
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 1], [0, 0, 0, 9, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert b["labels"].tolist() == [[8, 1], [IGNORE, 1]] and b["task_index"].tolist() == [0, 1]
    b = s2s.collate(f, 0)  # source for the encoder, target for the decoder, right-padded
    assert b["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]] and b["labels"].tolist() == [[8, 1], [1, IGNORE]]
    # rank classification: sources once, one right-padded label row per choice, for both kinds
    for spec in (causal, s2s):
        c = spec.collate_choices(f, [[[8, 1], [4, 4, 1]], [[3, 1]]], 0)
        assert c["input_ids"].tolist() == spec.collate_source(f, 0)["input_ids"].tolist()
        assert c["labels"].tolist() == [[8, 1, IGNORE], [4, 4, 1], [3, 1, IGNORE]]
        assert c["row_example"].tolist() == [0, 0, 1]
    rows = causal.choice_rows(causal.collate_choices(f, [[[8, 1], [4, 4, 1]], [[3, 1]]], 0), 0)
    want = causal.collate([Feature([5, 6, 7], [8, 1], 0), Feature([5, 6, 7], [4, 4, 1], 0), Feature([9], [3, 1], 1)], 0)
    assert all(torch.equal(rows[k], want[k]) for k in want)


def test_text_encoder_follows_the_kind_spec(backbones):
    for bb in backbones.values():
        enc = TextEncoder(bb.tokenizer, bb.kind, max_source_length=4)
        long = enc.tok("sst2 sentence: a charming and funny movie")["input_ids"]
        assert enc.source("sst2 sentence: a charming and funny movie") == \
            long[: 4 - bb.spec.source_tail] + long[len(long) - bb.spec.source_tail:]
        assert enc.target("positive")[:-1] == enc.tok(bb.spec.target_prefix + "positive",
                                                      add_special_tokens=False)["input_ids"]
    assert backbones["t5"].spec.source_tail == 1 and backbones["llama"].spec.target_prefix == " "


def test_evaluation_does_not_import_the_training_loop():
    from test_import_layers import import_graph, reachable

    below = reachable(import_graph(), "mptune.evaluation")
    assert "mptune.sharding" in below and "mptune.engine" not in below
