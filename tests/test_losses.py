"""Losses against plain reference computations."""

import torch
import torch.nn.functional as F

from mptune.backbone import IGNORE, TargetOutput
from mptune.losses import HiddenMSE, LogitKL, TokenNLL


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
