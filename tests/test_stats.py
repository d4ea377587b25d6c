"""The paired bootstrap (mptune.stats) on cases whose answer can be worked out by hand."""

import numpy as np
import pytest

from mptune.stats import paired_bootstrap


def _accuracy_diff(right_a: dict, right_b: dict):
    """diff(task, seed, idx) for 0/1 correctness vectors per task (and seed)."""
    def diff(t, s, idx):
        a, b = np.asarray(right_a[t][s]), np.asarray(right_b[t][s])
        return 100.0 * (a[idx].mean() - b[idx].mean())
    return diff


def test_two_examples_give_the_three_possible_resamples():
    # A is right on example 0 only, B on neither: a resample holds example 0 twice (diff 100, p = 1/4),
    # once (50, p = 1/2) or never (0, p = 1/4), so the 95 % interval is [0, 100] around 50
    avg, tasks = paired_bootstrap({"t": 2}, 1, _accuracy_diff({"t": [[1, 0]]}, {"t": [[0, 0]]}), resamples=2000)
    assert (avg.estimate, avg.low, avg.high) == (50.0, 0.0, 100.0)
    assert tasks["t"] == avg and not avg.excludes_zero


def test_a_constant_difference_has_no_spread_and_ties_have_none_either():
    same = {"t": [[1, 0, 1, 1, 0]]}
    avg, _ = paired_bootstrap({"t": 5}, 1, _accuracy_diff(same, same))
    assert (avg.estimate, avg.low, avg.high, avg.excludes_zero) == (0.0, 0.0, 0.0, False)
    avg, _ = paired_bootstrap({"t": 5}, 1, _accuracy_diff({"t": [[1] * 5]}, {"t": [[0] * 5]}))
    assert (avg.low, avg.high, avg.excludes_zero) == (100.0, 100.0, True)


def test_interval_matches_the_normal_approximation():
    # 100 paired examples: A alone right on 20, B alone right on 10, 70 ties. Per-example difference
    # d in {+1, -1, 0}: mean 0.1, var 0.3 - 0.01 = 0.29, so 10 ± 1.96 * 100 * sqrt(0.29 / 100) = 10 ± 10.56
    a = [1] * 20 + [0] * 10 + [1] * 35 + [0] * 35
    b = [0] * 20 + [1] * 10 + [1] * 35 + [0] * 35
    avg, _ = paired_bootstrap({"t": 100}, 1, _accuracy_diff({"t": [a]}, {"t": [b]}), resamples=4000, seed=3)
    assert avg.estimate == pytest.approx(10.0)
    assert avg.low == pytest.approx(-0.56, abs=1.5) and avg.high == pytest.approx(20.56, abs=1.5)


def test_seeds_are_resampled_and_tasks_averaged():
    # seed 0: no difference; seed 1: A right everywhere, B nowhere. Drawing 2 seeds from 2 gives
    # {0, 0} (diff 0), one of each (50) or {1, 1} (100): the interval spans [0, 100] around 50
    a = {"t": [[1, 1, 1], [1, 1, 1]]}
    b = {"t": [[1, 1, 1], [0, 0, 0]]}
    avg, _ = paired_bootstrap({"t": 3}, 2, _accuracy_diff(a, b), resamples=2000)
    assert (avg.estimate, avg.low, avg.high) == (50.0, 0.0, 100.0)
    # two tasks: the average of their differences (100 and 0) is 50 in every resample
    avg, tasks = paired_bootstrap({"x": 4, "y": 4}, 1, _accuracy_diff({"x": [[1] * 4], "y": [[0] * 4]},
                                                                      {"x": [[0] * 4], "y": [[0] * 4]}))
    assert (avg.estimate, avg.low, avg.high) == (50.0, 50.0, 50.0)
    assert tasks["x"].estimate == 100.0 and tasks["y"].estimate == 0.0


def test_the_metric_is_recomputed_on_each_resample():
    # a non-decomposable statistic (the max over the drawn examples) goes through unchanged
    vals = np.array([0.0, 0.0, 0.0, 10.0])
    avg, _ = paired_bootstrap({"t": 4}, 1, lambda t, s, idx: float(vals[idx].max()), resamples=500)
    assert avg.estimate == 10.0 and (avg.low, avg.high) == (0.0, 10.0)  # P(no draw of example 3) = 0.32


def test_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap({"t": 0}, 1, lambda *a: 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap({"t": 3}, 0, lambda *a: 0.0)


def test_compare_records_is_the_bootstrap_of_the_records_and_refuses_unpaired_runs():
    """quickstart.compare_records (compare()'s core and pair.py's): a mean record's resample is its
    examples' mean, a label record's metric is recomputed per resample; runs must be on the same examples."""
    from mptune.config import ConfigError
    from mptune.recipes.quickstart import compare_records
    from mptune.tasks import metrics as M

    uids = [str(i) for i in range(6)]
    a = {"t": [{"uids": uids, "metrics": ["accuracy"], "scores": [100.0, 100.0, 0.0, 100.0, 0.0, 100.0]}],
         "m": [{"uids": uids, "metrics": ["matthews"], "input": "label", "columns": [[1, 0, 1, 1, 0, 0], [1, 0, 1, 0, 0, 1]]}]}
    b = {"t": [{"uids": uids, "metrics": ["accuracy"], "scores": [0.0] * 6}],
         "m": [{"uids": uids, "metrics": ["matthews"], "input": "label", "columns": [[0, 0, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1]]}]}
    got = compare_records(a, b, ["t", "m"], resamples=200, average_over=["t"])

    def diff(t, s, idx):
        return M.record_score(a[t][s], idx) - M.record_score(b[t][s], idx)

    avg, per_task = paired_bootstrap({"t": 6, "m": 6}, 1, diff, 200, average_over=["t"])
    assert got["average"] == avg.as_dict() and got["tasks"]["m"] == per_task["m"].as_dict()
    assert got["tasks"]["t"]["diff"] == pytest.approx(400 / 6) and got["n_test"] == {"t": 6, "m": 6}
    assert got["tasks"]["m"]["diff"] == pytest.approx(M.matthews(*a["m"][0]["columns"]) - M.matthews(*b["m"][0]["columns"]))
    other = {"t": [{**b["t"][0], "uids": uids[::-1]}], "m": b["m"]}
    with pytest.raises(ConfigError, match="t: mpt and pt were tested on different examples"):
        compare_records(a, other, ["t", "m"], names=("mpt", "pt"))
    with pytest.raises(ConfigError, match="a different number of runs: 1 against 2"):
        compare_records(a, {**b, "t": b["t"] * 2}, ["t"])
