"""The server's parts in process: the dynamic batcher, the resident keys/values (LRU under a budget),
mixed-task batches against one task at a time, the no-prompt floor."""

from __future__ import annotations

import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")

from mptune.backbone import load_backbone, sequence_logprob  # noqa: E402
from mptune.config import ModelConfig  # noqa: E402
from mptune.data import Feature, collate_choices  # noqa: E402
from mptune.serve.batcher import Batcher, Closed, QueueFull  # noqa: E402
from mptune.serve.engine import Engine, InputError, Limits  # noqa: E402
from mptune.serve.store import read_source  # noqa: E402
from test_serve import INPUTS, make_folders  # noqa: E402


# -- batcher ---------------------------------------------------------------------------------

def test_batcher_batches_waits_bounded_and_isolates_failures():
    seen: list[list] = []

    def run(items):
        seen.append(list(items))
        if "bad" in items:
            raise RuntimeError("boom")
        return [x.upper() for x in items]

    b = Batcher(run, max_batch=4, max_wait_s=0.2, max_queue=6)
    t0 = time.monotonic()
    fs = b.submit(["a", "b"]) + b.submit(["c"])
    assert [f.result(5) for f in fs] == ["A", "B", "C"]
    assert seen[0] == ["a", "b", "c"]  # separate requests, one batch
    assert 0.15 < time.monotonic() - t0 < 3  # a batch that does not fill waits max_wait_s, not longer
    fs = b.submit(["d", "bad", "e", "f"])  # full batch: runs at once; the failure stays with its input
    assert fs[0].result(5) == "D" and fs[2].result(5) == "E" and fs[3].result(5) == "F"
    with pytest.raises(RuntimeError, match="boom"):
        fs[1].result(5)
    with pytest.raises(QueueFull):
        b.submit(["x"] * 7)
    assert b.call(lambda: threading.current_thread().name).result(5) == "mptune-batcher"  # jobs: the model's thread
    assert b.submit(["alive"])[0].result(5) == "ALIVE"
    b.close()


def test_batcher_close_answers_everything_queued():
    b = Batcher(lambda items: [x * 2 for x in items], max_batch=2, max_wait_s=5.0, max_queue=100)
    fs = b.submit([1]) + b.submit([2, 3, 4, 5])
    b.close()  # the last input would have waited 5 s for a partner
    assert [f.result(0) for f in fs] == [2, 4, 6, 8, 10]
    with pytest.raises(Closed):
        b.submit([6])


# -- engine --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("serve-units")
    folders = make_folders(root, tiny_llama_dir)
    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir)))
    tasks = {t.name: t for f in ("sst2", "multi", "stsb") for t in read_source(folders[f], bb)[1]}
    return bb, tasks


def _items(engine, tasks, pairs):
    return [engine.encode(tasks[t], INPUTS[t][i] if t in INPUTS else {"sentence1": "a", "sentence2": "b"}, "x")
            for t, i in pairs]


def test_mixed_task_batch_equals_one_task_at_a_time(served):
    bb, tasks = served
    engine = Engine(bb, Limits(48, 400, 6), 2**20)
    pairs = [("sst2", 0), ("rte", 1), ("squad", 0), ("sst2", 3), ("stsb", 0), ("rte", 0), ("squad", 1)]
    mixed = engine.run(_items(engine, tasks, pairs))
    assert engine.mixed_task_batches == 1
    for (t, i), got in zip(pairs, mixed):
        alone = engine.run(_items(engine, tasks, [(t, i)]))[0]
        if "label" in got:
            assert got["label"] == alone["label"]
            for lab, s in got["scores"].items():
                assert s["logprob"] == pytest.approx(alone["scores"][lab]["logprob"], abs=1e-4)
        else:
            assert got["text"] == alone["text"]


def test_resident_kv_lru_under_a_budget(served):
    bb, tasks = served
    one = Engine(bb, Limits(48, 400, 6), 2**30).adapter.compute(tasks["sst2"].prompt[None])[0].nbytes
    engine = Engine(bb, Limits(48, 400, 6), int(2.5 * one))  # room for two tasks of length 4
    cache = engine.cache
    assert engine.warm([tasks["sst2"], tasks["rte"], tasks["squad"]]) == 2  # warming stops at the budget
    assert cache.stats()["resident_tasks"] == 2
    before = engine.run(_items(engine, tasks, [("squad", 0)]))  # not resident: computed, least recent dropped
    lru = list(cache._lru)
    assert lru == [tasks["rte"].uid, tasks["squad"].uid] and cache.bytes <= cache.budget
    engine.run(_items(engine, tasks, [("sst2", 1)]))  # recomputed on demand
    assert list(cache._lru) == [tasks["squad"].uid, tasks["sst2"].uid]
    assert engine.run(_items(engine, tasks, [("squad", 0)])) == before  # same answer from resident keys/values
    engine.forget([tasks["squad"]])
    assert list(cache._lru) == [tasks["sst2"].uid]
    zero = Engine(bb, Limits(48, 400, 6), 0)  # no budget: computed per batch, nothing kept
    assert zero.warm(list(tasks.values())) == 0
    assert zero.run(_items(zero, tasks, [("squad", 0)])) == before and zero.cache.stats()["resident_tasks"] == 0


def test_empty_prefix_is_the_backbone_alone(served):
    """The benchmark's floor: a zero-length prefix through the same scoring = the model without a prompt."""
    bb, _ = served
    engine = Engine(bb, Limits(48, 400, 6), 0)
    tok = bb.tokenizer
    feats = [Feature(tok(s)["input_ids"], [], 0) for s in ("a charming movie", "the cat sat on the mat")]
    choices = [[engine.encoder.target("positive"), engine.encoder.target("negative")]] * 2
    batch, _ = collate_choices(feats, choices, bb.kind, bb.pad_id)
    got = bb.score_choices(engine.adapter.empty(), batch)
    want = []
    for f, ch in zip(feats, choices):
        for c in ch:
            ids = torch.tensor([f.source + c])
            logits = bb.model(input_ids=ids).logits[:, len(f.source) - 1: -1]
            want.append(sequence_logprob(logits, torch.tensor([c])))
    assert torch.allclose(got, torch.cat(want), atol=1e-4)


def test_inputs_are_checked(served):
    bb, tasks = served
    engine = Engine(bb, Limits(16, 100, 6), 0)
    with pytest.raises(InputError, match=r"inputs\[0\]: \d+ tokens; the limit is data.max_source_length=16"):
        engine.encode(tasks["sst2"], " ".join(["cat"] * 20), "inputs[0]")
    with pytest.raises(InputError, match="missing field 'sentence2'"):
        engine.encode(tasks["rte"], {"sentence1": "a"}, "inputs[0]")
    with pytest.raises(InputError, match="got array"):
        engine.encode(tasks["rte"], ["a"], "inputs[0]")
    item = engine.encode(tasks["rte"], {"sentence1": "a", "sentence2": 3}, "inputs[0]")  # numbers format like predict
    assert bb.tokenizer.decode(item.ids, skip_special_tokens=True) == "rte sentence1: a sentence2: 3"
