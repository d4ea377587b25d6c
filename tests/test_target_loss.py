"""train.target_loss=labels: L_PLM as the cross-entropy of the gold label among the label strings, each
scored by its summed token log-prob, against a plain one-row-at-a-time reference on tiny models;
gradients reach the prompt only; other tasks keep the vocabulary loss."""

import math

import pytest
import torch

from mptune.backbone import LabelScores, TargetOutput, load_backbone, sequence_logprob
from mptune.config import ModelConfig
from mptune.data import TextEncoder, collate
from mptune.losses import DistillLoss, TokenNLL, label_nll

# (source, label strings or None for a generation example, gold index / answer, task_index)
EXAMPLES = [("sst2 sentence: a charming movie", ["negative", "positive"], 1, 0),
            ("rte sentence1: the cat sat sentence2: a cat", ["entailment", "not_entailment"], 0, 1),
            ("question: who wrote the book ? context: ada wrote it", None, "ada", 2),
            ("sst2 sentence: it drags", ["negative", "positive"], 0, 0)]


def test_label_nll_by_hand():
    s = torch.tensor([-1.0, -2.0, -0.5, -3.0, -4.0])
    scores = LabelScores(s, torch.tensor([0, 0, 2, 2, 2]), torch.tensor([0, 1, 0, 0, 1]))
    loss, has = label_nll(scores, 3)
    lse0, lse2 = math.log(math.exp(-1) + math.exp(-2)), math.log(math.exp(-0.5) + math.exp(-3) + math.exp(-4))
    torch.testing.assert_close(loss, torch.tensor([lse0 + 2.0, 0.0, lse2 + 4.0]))
    assert has.tolist() == [True, False, True]


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request, tiny_t5_dir, tiny_llama_dir):
    bb = load_backbone(ModelConfig(name=str(tiny_t5_dir if request.param == "t5" else tiny_llama_dir)))
    enc = TextEncoder(bb.tokenizer, bb.kind)
    g = torch.Generator().manual_seed(0)
    prompt = torch.nn.Parameter(torch.randn(3, 4, bb.hidden_size, generator=g))
    return bb, enc, prompt


def _features(enc, with_labels=True):
    return [enc.feature(s, ch[gold] if ch else gold, k, ch if with_labels else None, gold if ch else None)
            for s, ch, gold, k in EXAMPLES]


def test_labels_loss_equals_a_one_row_reference(setup):
    bb, enc, prompt = setup
    batch = collate(_features(enc), bb.kind, bb.pad_id)
    got = TokenNLL("mean", "labels")(bb(prompt, batch))
    for b, (s, ch, gold, k) in enumerate(EXAMPLES):
        if ch is None:  # not a classification example: the vocabulary loss, as without label rows
            one = collate([enc.feature(s, gold, k)], bb.kind, bb.pad_id)
            ref = TokenNLL("mean")(bb(prompt, one))[0]
        else:  # each label string alone: summed log-prob of its tokens (EOS included), then softmax over them
            rows = [bb(prompt, collate([enc.feature(s, c, k)], bb.kind, bb.pad_id)) for c in ch]
            lp = torch.stack([sequence_logprob(r.logits, r.labels)[0] for r in rows])
            ref = -torch.log_softmax(lp, 0)[gold]
        torch.testing.assert_close(got[b], ref, atol=2e-5, rtol=1e-5)


def test_labels_loss_moves_the_prompt_only(setup):
    bb, enc, prompt = setup
    prompt.grad = None
    batch = collate(_features(enc), bb.kind, bb.pad_id)
    TokenNLL("sum", "labels")(bb(prompt, batch)).sum().backward()
    assert prompt.grad is not None and prompt.grad[:2].abs().sum() > 0  # the tasks with label rows
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())


def test_vocab_loss_ignores_label_rows_and_teachers_skip_them(setup):
    bb, enc, prompt = setup
    with torch.no_grad():
        with_rows = collate(_features(enc), bb.kind, bb.pad_id)
        plain = collate(_features(enc, with_labels=False), bb.kind, bb.pad_id)
        assert "choice_labels" in with_rows and "choice_labels" not in plain
        assert with_rows["choice_gold"].tolist() == [0, 1, 1, 0, 1, 0]
        out = bb(prompt, with_rows)
        torch.testing.assert_close(TokenNLL("mean")(out), TokenNLL("mean")(bb(prompt, plain)))
        assert bb(prompt, with_rows, with_labels=False).label_scores is None
        # in distillation the labels term replaces L_PLM only
        teacher = bb(prompt * 0.5, with_rows, with_labels=False)
        loss, terms = DistillLoss(0.5, hidden=False, target_loss="labels")(out, teacher)
        torch.testing.assert_close(terms["plm"], TokenNLL("mean", "labels")(out))
        torch.testing.assert_close(loss, terms["plm"] + 0.5 * terms["kl"])


def _reference(bb, enc, prompt, examples):
    """Each label string alone, one plain row each: -log softmax over the strings' summed log-probs."""
    out = []
    for s, ch, gold, k in examples:
        rows = [bb._forward_plain(prompt, collate([enc.feature(s, c, k)], bb.kind, bb.pad_id)) for c in ch]
        lp = torch.stack([sequence_logprob(r.logits, r.labels)[0] for r in rows])
        out.append(-torch.log_softmax(lp, 0)[gold])
    return torch.stack(out)


@pytest.mark.parametrize("tree", [True, False])
def test_labels_only_batches_skip_the_vocabulary_pass(setup, tree):
    """vocab=False on a batch whose every example has label rows: no vocabulary logits, the same loss and
    prompt gradient as one plain row per label string (decoder-only: one tree-masked row per example where
    the backbone takes 4D masks, `tree`; else the label rows)."""
    bb, enc, prompt = setup
    examples = [e for e in EXAMPLES if e[1] is not None]
    feats = [enc.feature(s, ch[gold], k, ch, gold) for s, ch, gold, k in examples]
    batch = collate(feats, bb.kind, bb.pad_id)
    was = bb._tree_ok
    bb._tree_ok = was and tree
    try:
        assert bb.tree_choices == (bb.kind == "causal" and tree)  # T5 never: no shared prefix
        prompt.grad = None
        out = bb(prompt, batch, vocab=False)
        assert out.logits is None and out.label_scores is not None
        got = TokenNLL("mean", "labels")(out)
        got.sum().backward()
        grad, prompt.grad = prompt.grad.clone(), None
        ref = _reference(bb, enc, prompt, examples)
        ref.sum().backward()
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(grad, prompt.grad, atol=1e-5, rtol=1e-4)
        assert grad.abs().sum() > 0
    finally:
        bb._tree_ok, prompt.grad = was, None


def test_vocab_false_keeps_the_vocabulary_pass_for_examples_without_label_rows(setup):
    bb, enc, prompt = setup
    with torch.no_grad():
        batch = collate(_features(enc), bb.kind, bb.pad_id)  # the QA example has no label rows
        out = bb(prompt, batch, vocab=False)
        assert out.logits is not None
        torch.testing.assert_close(TokenNLL("mean", "labels")(out), TokenNLL("mean", "labels")(bb(prompt, batch)))
    with pytest.raises(ValueError, match="no vocabulary logits"):  # the vocabulary loss cannot use label scores
        TokenNLL("mean")(TargetOutput(None, batch["labels"], label_scores=out.label_scores))


def test_one_row_label_scores_under_gradient_checkpointing(tiny_llama_dir):
    """The tree-masked label pass keeps the read-only prompt cache through checkpointed layers: the same
    loss and prompt gradient as without checkpointing."""
    grads = []
    for gc in (False, True):
        bb = load_backbone(ModelConfig(name=str(tiny_llama_dir), gradient_checkpointing=gc))
        bb.train()
        enc = TextEncoder(bb.tokenizer, bb.kind)
        prompt = torch.nn.Parameter(torch.randn(3, 4, bb.hidden_size, generator=torch.Generator().manual_seed(0)))
        feats = [enc.feature(s, ch[gold], k, ch, gold) for s, ch, gold, k in EXAMPLES if ch is not None]
        out = bb(prompt, collate(feats, bb.kind, bb.pad_id), vocab=False)
        assert bb.tree_choices and out.logits is None
        loss = TokenNLL("mean", "labels")(out)
        loss.sum().backward()
        grads.append((loss.detach(), prompt.grad))
        assert not any("_can_checkpoint_with_cache" in vars(m) for m in bb.model.modules())
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)
