"""Property tests: split cuts partition their input; few-shot and SQuAD scores stay in range; examples'
own scores average to a resample's score where the bootstrap relies on it."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptune.tasks import Example, few_shot
from mptune.tasks import metrics as M
from mptune.tasks.splits import cut


def exs(groups):
    return [Example(source=str(i), target="", uid=str(i), group=g) for i, g in enumerate(groups)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from("abcdef")), min_size=1, max_size=40), st.integers(0, 99))
def test_cut_partitions_and_keeps_groups_whole(groups, seed):
    data = exs(groups)
    head, rest = cut(data, None, seed)
    assert sorted(e.uid for e in head + rest) == sorted(e.uid for e in data)
    named = lambda xs: {e.group for e in xs if e.group}  # noqa: E731
    assert not named(head) & named(rest)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(1, 5), st.integers(0, 9))
def test_few_shot_counts(labels, k, seed):
    data = [Example(source=str(i), target="", label=y, uid=str(i)) for i, y in enumerate(labels)]
    got = few_shot(data, k, seed)
    for y in set(labels):
        assert sum(e.label == y for e in got) == min(k, labels.count(y))
    assert len({e.uid for e in got}) == len(got)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_squad_scores_in_range(pred, answers):
    em, f1 = M.squad_em([pred], [answers]), M.squad_f1([pred], [answers])
    assert 0.0 <= em <= 100.0 and 0.0 <= f1 <= 100.0
    if em == 100.0 and M.normalize_answer(pred):
        assert f1 == 100.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["the cat", "a dog", "cat", ""]), st.sampled_from(["the cat", "dog"]),
                          st.integers(0, 1), st.integers(-1, 1)), min_size=1, max_size=12),
       st.lists(st.integers(0, 11), min_size=1, max_size=12))
def test_example_scores_average_to_the_score_of_any_resample(rows, pick):
    """The bootstrap's shortcut: where a task's score is a mean over examples, the mean of the examples'
    own scores is the task's score of every resample (repeats included)."""
    from mptune.tasks import get_task

    pick = [i % len(rows) for i in pick]
    qa = [Example(source="q", target=gold, answers=[gold], uid=str(i)) for i, (_, gold, _, _) in enumerate(rows)]
    cls = [Example(source="s", target="", label=y, uid=str(i)) for i, (_, _, y, _) in enumerate(rows)]
    for task, examples, preds in ((get_task("squad"), qa, [p for p, *_ in rows]),
                                  (get_task("sst2"), cls, [p for *_, p in rows])):
        per = M.example_scores(task, examples, preds)
        got = task.score([examples[i] for i in pick], [preds[i] for i in pick])["score"]
        assert sum(per[i] for i in pick) / len(pick) == pytest.approx(got)
    for name in ("cola", "mrpc", "stsb"):  # Matthews, F1 over the set, correlations: no shortcut
        assert M.example_scores(get_task(name), cls, [p for *_, p in rows]) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["the cat", "a dog", "cat", ""]), st.sampled_from(["the cat", "dog"]),
                          st.integers(0, 1), st.integers(-1, 1), st.floats(0, 5), st.sampled_from("pq")),
                min_size=2, max_size=12),
       st.lists(st.integers(0, 11), min_size=2, max_size=12))
def test_text_free_records_rescore_any_resample_as_the_task_does(rows, pick):
    """What records.json keeps per run (pair.py re-makes intervals from it): a JSON round trip of the
    record scores every resample as task.score does, for means, label metrics, correlations and MultiRC's
    groups alike, and holds none of the examples' texts."""
    import json

    from mptune.tasks import get_task

    pick = [i % len(rows) for i in pick]
    qa = [Example(source="q", target=gold, answers=[gold], uid=str(i)) for i, (_, gold, *_) in enumerate(rows)]
    cls = [Example(source="s", target="", label=y, uid=str(i), group=g) for i, (_, _, y, _, _, g) in enumerate(rows)]
    reg = [Example(source="s", target="", label=v, uid=str(i)) for i, (*_, v, _) in enumerate(rows)]
    for name, examples, preds in (("squad", qa, [p for p, *_ in rows]), ("sst2", cls, [p for _, _, _, p, _, _ in rows]),
                                  ("cola", cls, [p for _, _, _, p, _, _ in rows]),
                                  ("mrpc", cls, [p for _, _, _, p, _, _ in rows]),
                                  ("multirc", cls, [p for _, _, _, p, _, _ in rows]),
                                  ("stsb", reg, [str(p + 0.5) for _, _, _, p, _, _ in rows])):
        task = get_task(name)
        text = json.dumps(M.example_record(task, examples, preds))
        assert "cat" not in text and "dog" not in text
        record = json.loads(text)
        assert ("scores" in record) == (name in ("squad", "sst2"))
        want = task.score([examples[i] for i in pick], [preds[i] for i in pick])["score"]
        assert M.record_score(record, pick) == pytest.approx(want, nan_ok=True)


def test_a_metric_on_texts_that_is_no_mean_has_no_text_free_record():
    from dataclasses import replace

    from mptune.tasks import get_task

    task = replace(get_task("cola"), metrics=("matthews", "squad_f1"))  # label and text inputs, not means
    with pytest.raises(ValueError, match="cola: no text-free record"):
        M.example_record(task, [Example(source="s", target="no", label=0, uid="0")], [0])
