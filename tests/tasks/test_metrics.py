"""Metrics against values computed by hand (comments show the arithmetic)."""

import math

import pytest

from mptune.tasks import metrics as M


def approx(x):
    return pytest.approx(x, abs=1e-6)


def test_accuracy():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == approx(50.0)
    assert M.accuracy([-1, 1], [0, 1]) == approx(50.0)  # invalid counts as wrong


def test_binary_f1():
    # TP = 2 (0, 2), FP = 1 (3), FN = 1 (1): P = R = 2/3
    assert M.f1([1, 0, 1, 1], [1, 1, 1, 0]) == approx(200 / 3)
    # invalid (-1) becomes the wrong label: TP = 1, FN = 1 -> P = 1, R = 1/2, F1 = 2/3
    assert M.f1([-1, 1], [1, 1]) == approx(200 / 3)
    assert M.f1([0, 0], [0, 0]) == approx(0.0)


def test_macro_f1():
    # class 0: P 1 R 1/2 -> 2/3; class 1: 0; class 2: P 1/2 R 1 -> 2/3; mean 4/9
    assert M.macro_f1([0, 2, 2, 1], [0, 1, 2, 0]) == approx(400 / 9)


def test_matthews():
    # TP 1, TN 2, FP 0, FN 1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3)
    assert M.matthews([1, 0, 0, 0], [1, 1, 0, 0]) == approx(100 * 2 / math.sqrt(12))


def test_pearson_spearman():
    # dp = (-1, 0, 1), dg = (-4/3, -1/3, 5/3): cov 3, |dp| sqrt 2, |dg| sqrt(42)/3
    assert M.pearson([1, 2, 3], [1, 2, 4]) == approx(100 * 9 / math.sqrt(84))
    # ranks (1,2,3) vs (3,1,2): sum d^2 = 6 -> 1 - 6*6 / (3*8) = -0.5
    assert M.spearman([1, 2, 3], [3, 1, 2]) == approx(-50.0)
    assert M.pearson([2, 2, 2], [1, 2, 3]) == 0.0  # undefined -> 0


def test_squad_normalisation_em_f1():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.normalize_answer("an apple a day") == "apple day"
    # pred tokens {cat, sat}, gold {cat, sat, on, mat}: P 1, R 1/2 -> 2/3
    assert M.f1_score("the cat sat", "a cat sat on mat") == approx(2 / 3)
    assert M.exact_match_score("Denver Broncos!", "denver broncos") == 1.0
    assert M.squad_em(["Denver Broncos", "x"], [["denver broncos."], ["y", "z"]]) == approx(50.0)
    # max over answers: 1.0 for the 2nd answer; second example 0
    assert M.squad_f1(["cat sat", "q"], [["dog", "the cat sat"], ["r"]]) == approx(50.0)
    # repeated tokens count with multiplicity: pred (a b b), gold (b b c) -> same 2, P 2/3 R 2/3
    assert M.f1_score("x y y", "y y z") == approx(2 / 3)
    with pytest.raises(ValueError):
        M.squad_em(["a"], [[]])


def test_multirc_em_f1a():
    preds, golds = [1, 0, 1, 0], [1, 0, 0, 0]
    groups = ["q1", "q1", "q2", "q2"]
    assert M.multirc_em(preds, golds, groups) == approx(50.0)  # q1 all right, q2 not
    assert M.multirc_f1a(preds, golds, groups) == approx(200 / 3)  # TP 1 FP 1 FN 0


def test_record_is_max_over_answers():
    assert M.METRICS["record_em"][0](["Obama"], [["Barack Obama", "Obama"]]) == approx(100.0)
    assert M.METRICS["record_f1"][0](["Barack"], [["Barack Obama"]]) == approx(100 * 2 / 3)


def test_string_to_float_like_t5():
    assert M.string_to_float(" 3.8") == 3.8
    assert M.string_to_float("three") == -1.0


def test_length_mismatch():
    with pytest.raises(ValueError, match="predictions"):
        M.accuracy([1], [1, 0])
