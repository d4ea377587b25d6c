"""Property tests: split cuts partition their input; few-shot and SQuAD scores stay in range."""

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
