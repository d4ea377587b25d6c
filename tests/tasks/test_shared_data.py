"""Every GLUE / SuperGLUE / SQuAD file in ../shared/data loads through its entry.

Row counts come from MANIFEST.tsv (read in place); labels must cover exactly the
task's label set on labelled splits and be absent on the released test splits.
Skipped when the data folder is absent.
"""

import csv

import pytest

from mptune.tasks import get_task

# MANIFEST path -> (task, raw split). MultiRC's manifest rows count paragraphs; its
# note gives the answer-option counts, which are what the entry yields.
FILES = {
    **{f"glue/{d}/{f}.tsv": (t, s) for d, t in [("CoLA", "cola"), ("SST-2", "sst2"), ("MRPC", "mrpc"),
                                               ("STS-B", "stsb"), ("RTE", "rte"), ("WNLI", "wnli")]
       for f, s in [("train", "train"), ("dev", "validation"), ("test", "test")]},
    "glue/QNLI/dev.tsv": ("qnli", "validation"), "glue/QNLI/test.tsv": ("qnli", "test"),
    **{f"superglue/{d}/{f}.jsonl": (t, s) for d, t in [("RTE", "superglue_rte"), ("WSC", "wsc"),
                                                       ("MultiRC", "multirc"), ("COPA", "copa")]
       for f, s in [("train", "train"), ("val", "validation"), ("test", "test")]},
    "bigbench/squad_shifts/squaddev_v1.1.json": ("squad", "validation"),
}
MULTIRC_OPTIONS = {"train": 27243, "validation": 4848, "test": 9693}
NOT_TASK_FILES = ("glue/MRPC/dev_ids.tsv", "glue/MRPC/msr_paraphrase", "glue/STS-B/LICENSE", "glue/STS-B/readme")


@pytest.fixture(scope="module")
def manifest(shared_data):
    with open(shared_data / "MANIFEST.tsv", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


def test_every_glue_superglue_file_is_covered(manifest):
    ours = [p for p in manifest if p.startswith(("glue/", "superglue/")) and not p.startswith(NOT_TASK_FILES)]
    assert sorted(ours) == sorted(p for p in FILES if not p.startswith("bigbench/"))


@pytest.mark.parametrize("path", sorted(FILES))
def test_file_loads_with_manifest_rows_and_labels(path, shared_data, manifest):
    name, raw = FILES[path]
    task = get_task(name)
    exs = task.load_raw(raw, data_dir=shared_data)
    expected = MULTIRC_OPTIONS[raw] if name == "multirc" else int(manifest[path]["rows"])
    assert len(exs) == expected
    assert all(ex.uid.startswith(path + ":") and ex.task == name and ex.source for ex in exs)
    assert len({ex.uid for ex in exs}) == len(exs)
    if task.kind.value == "generation":
        assert all(ex.answers and ex.target == ex.answers[0] for ex in exs)
    elif raw == "test":
        assert all(ex.label is None and ex.target == "" for ex in exs)
    elif task.kind.value == "regression":
        assert all(0.0 <= ex.label <= 5.0 for ex in exs) and len({ex.label for ex in exs}) > 10
    else:
        n = len(task.choices(exs[0]))
        assert {ex.label for ex in exs} == set(range(n))
        assert all(ex.target == task.choices(ex)[ex.label] for ex in exs)


def test_missing_train_file_is_a_clear_error(shared_data):
    from mptune.tasks import DataError

    with pytest.raises(DataError, match=r"qnli: train file not found under .*glue/QNLI/train\.tsv"):
        get_task("qnli").load("dev", data_dir=shared_data)


def test_env_var_points_at_the_data(shared_data, monkeypatch):
    monkeypatch.setenv("MPTUNE_DATA_DIR", str(shared_data))
    assert len(get_task("rte").load_raw("validation")) == 277


def test_templates_on_real_rows(shared_data):
    ex = get_task("sst2").load_raw("validation", shared_data)[0]
    assert ex.source.startswith("sst2 sentence: it 's a charming") and ex.target == "positive"
    ex = get_task("rte").load_raw("train", shared_data)[0]
    assert ex.source.startswith("rte sentence1: No Weapons") and ex.target == "not_entailment" and ex.label == 1
    ex = get_task("stsb").load_raw("train", shared_data)[1]
    assert ex.label == 3.8 and ex.target == "3.8"
    ex = get_task("cola").load_raw("train", shared_data)[0]
    assert ex.source.startswith("cola sentence: Our friends") and ex.target == "acceptable"
    ex = get_task("mrpc").load_raw("train", shared_data)[0]
    assert ex.source.startswith("mrpc sentence1: Amrozi") and ex.label == 1
    ex = get_task("wsc").load_raw("train", shared_data)[0]
    assert ex.source.startswith("wsc text: * Mark * told Pete many lies about himself") and "# He #" in ex.source
    ex = get_task("copa").load_raw("validation", shared_data)[0]
    assert ex.choices == ["The toilet filled with water.", "Water flowed from the spout."] and ex.label == 1
    exs = get_task("multirc").load_raw("validation", shared_data)
    assert exs[0].group == exs[1].group and exs[0].source.startswith("multirc question: Would the mass")


def test_wsc_marks_every_row(shared_data):
    task = get_task("wsc")
    for raw in ("train", "validation", "test"):
        for ex in task.load_raw(raw, shared_data):
            assert ex.source.count("*") >= 2 and ex.source.count("#") >= 2, ex.uid


# --- paper splits -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sst2(shared_data):
    task = get_task("sst2")
    return {s: task.load(s, shared_data) for s in ("train", "dev", "test")}


def test_large_split_holds_out_1000_train(sst2):
    assert [len(sst2[s]) for s in ("train", "dev", "test")] == [67349 - 1000, 1000, 872]
    assert not {e.uid for e in sst2["train"]} & {e.uid for e in sst2["dev"]}
    assert all(e.uid.startswith("glue/SST-2/train.tsv") for e in sst2["dev"])
    assert all(e.uid.startswith("glue/SST-2/dev.tsv") for e in sst2["test"])
    assert get_task("sst2").sizes() == {"train": 66349, "dev": 1000, "test": 872}


@pytest.mark.parametrize("name,n", [("rte", 277), ("stsb", 1500), ("cola", 1043), ("mrpc", 408), ("wsc", 104)])
def test_small_split_halves_validation(name, n, shared_data):
    task = get_task(name)
    dev, test = task.load("dev", shared_data), task.load("test", shared_data)
    assert (len(dev), len(test)) == (n // 2, n - n // 2) == (task.sizes()["dev"], task.sizes()["test"])
    val = {e.uid for e in task.load_raw("validation", shared_data)}
    assert {e.uid for e in dev} | {e.uid for e in test} == val
    assert not {e.uid for e in dev} & {e.uid for e in test}
    assert len(task.load("train", shared_data)) == task.raw_sizes["train"]


def test_splits_are_deterministic_and_seeded(shared_data):
    task = get_task("rte")
    a, b = task.load("dev", shared_data), task.load("dev", shared_data, seed=42)
    assert [e.uid for e in a] == [e.uid for e in b]
    assert {e.uid for e in task.load("dev", shared_data, seed=1)} != {e.uid for e in a}
    # ATTEMPT's shuffle: torch.randperm with a generator seeded 42, first half = dev
    import torch

    g = torch.Generator()
    g.manual_seed(42)
    perm = torch.randperm(277, generator=g).tolist()
    val = task.load_raw("validation", shared_data)
    assert [e.uid for e in a] == [val[i].uid for i in perm[:138]]


def test_limit(shared_data):
    task = get_task("rte")
    assert [e.uid for e in task.load("dev", shared_data, limit=5)] == [e.uid for e in task.load("dev", shared_data)[:5]]
    train5 = task.load("train", shared_data, limit=5)
    assert len(train5) == 5 and [e.uid for e in train5] == [e.uid for e in task.load("train", shared_data, limit=5)]


def test_multirc_split_by_question(shared_data):
    task = get_task("multirc")
    dev, test = task.load("dev", shared_data), task.load("test", shared_data)
    assert len(dev) + len(test) == 4848
    assert not {e.group for e in dev} & {e.group for e in test}
    groups = {e.group for e in task.load_raw("validation", shared_data)}
    assert len({e.group for e in dev}) == len(groups) // 2


def test_squad_test_split_is_validation(shared_data):
    exs = get_task("squad").load("test", shared_data)
    assert len(exs) == 10565
    scores = get_task("squad").score(exs[:10], [e.answers[-1] for e in exs[:10]])
    assert scores["squad_em"] == scores["squad_f1"] == scores["score"] == 100.0


def test_sizes_counted_from_files(shared_data):
    assert get_task("squad").sizes() == {"train": 86599, "dev": 1000, "test": 10570}  # Hub numbers
    assert get_task("squad").sizes(shared_data)["test"] == 10565  # BIG-bench's copy of dev
    assert get_task("multirc").sizes()["dev"] is None  # cut by question: unknown without the data
    mr = get_task("multirc").sizes(shared_data)
    assert mr["train"] == 27243 and mr["dev"] + mr["test"] == 4848
    assert get_task("qnli").sizes(shared_data) == {"train": 103743, "dev": 1000, "test": 5463}  # no train file
