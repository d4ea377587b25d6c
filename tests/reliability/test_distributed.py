"""Several processes (2, gloo on CPU) reproduce one process.

One module-scoped fixture runs the single-process references in this process
and then one 2-process group (dist_worker.py) that runs the same stages with the
same global batch: prompt tuning on T5 and Llama (replicated backbone = DDP, and
sharded backbone = FSDP2 blocks with the prompt replicated), MPT distillation and
target adaptation, plus distributed evaluation of 7 examples (uneven shards and
an uneven last batch). The tests then compare the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mptune.backbone import load_backbone
from mptune.cli import main
from mptune.config import ModelConfig
from mptune.data import TextEncoder
from mptune.evaluation import predict
from mptune.prompts.io import PromptMeta, save_prompt
from mptune.prompts.soft import SoftPrompt
from mptune.tasks import get_task
from synthetic import write_glue_rte, write_glue_stsb, write_squad

from .launch import HERE, run_group

COMMON = ["prompt.length=4", "train.batch_size=4", "train.max_steps=3", "train.eval_every=2", "train.eval_limit=3",
          "train.eval_batch_size=4", "train.checkpoint_every=2", "train.log_every=1", "data.max_source_length=32",
          "data.max_target_length=4", "train.lr=0.3"]
MPT = ["prompt.length=4", "train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.eval_limit=3",
       "train.eval_batch_size=4", "data.max_source_length=32", "data.max_target_length=4", "train.lr=0.3"]
TOL = dict(rtol=1e-4, atol=1e-5)


def _stages(root: Path, t5: Path, llama: Path, data: Path, teachers: Path, source: Path) -> dict[str, list[str]]:
    d = f"data.data_dir={data}"
    return {
        "pt_t5": ["prompt-tune", f"model.name={t5}", "task=rte", f"output_dir={root / 'pt_t5'}", d, *COMMON],
        "pt_llama": ["prompt-tune", f"model.name={llama}", "task=stsb", f"output_dir={root / 'pt_llama'}", d, *COMMON],
        "distill": ["distill", f"model.name={llama}", "tasks=[rte,stsb]", f"teachers_dir={teachers}",
                    f"output_dir={root / 'distill'}", d, *MPT],
        "adapt": ["adapt", f"source={source}", "tasks=[rte]", f"output_dir={root / 'adapt'}", d, *MPT],
    }


def _teachers(root: Path, model: Path) -> Path:
    g = torch.Generator().manual_seed(3)
    for task in ("rte", "stsb"):
        save_prompt(root / task / "prompt.safetensors", {"prompt": torch.randn(4, 32, generator=g) * 0.3},
                    PromptMeta(kind="soft", backbone=str(model), length=4, dim=32, tasks=[task]))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_t5_dir, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    write_glue_rte(data, n_train=16, n_dev=8)
    write_glue_stsb(data, n_train=16, n_dev=8)
    write_squad(data, n_train=8, n_dev=8)
    teachers = _teachers(tmp / "teachers", tiny_llama_dir)
    single = _stages(tmp / "single", tiny_t5_dir, tiny_llama_dir, data, teachers, tmp / "single" / "distill")
    import time
    t0 = time.perf_counter()
    for argv in single.values():  # references: one process, same global batch
        assert main(argv) == 0, argv
    print(f"\n[dist] single-process references {time.perf_counter() - t0:.1f}s", flush=True)
    multi = _stages(tmp / "multi", tiny_t5_dir, tiny_llama_dir, data, teachers, tmp / "single" / "distill")
    del multi["pt_llama"]  # llama runs replicated in distill/adapt and sharded below
    shard = {"MPTUNE_SHARD_BACKBONE": "1"}
    sharded = {f"{k}_sharded": [a.replace(str(tmp / "single"), str(tmp / "sharded")) for a in single[k]]
               for k in ("pt_t5", "pt_llama")}
    jobs = [{"name": k, "kind": "cli", "argv": v} for k, v in multi.items()]
    # T5 sharded through mptune's switch, Llama through the variable accelerate's launcher sets from fsdp.yaml
    jobs += [{"name": "pt_t5_sharded", "kind": "cli", "argv": sharded["pt_t5_sharded"], "env": shard},
             {"name": "pt_llama_sharded", "kind": "cli", "argv": sharded["pt_llama_sharded"],
              "env": {"ACCELERATE_USE_FSDP": "true"}}]
    pt = tmp / "single" / "pt_t5"
    inp = tmp / "predict_in.jsonl"
    inp.write_text("".join(json.dumps({"sentence1": f"A cat sat {i}.", "sentence2": "A cat sits."}) + "\n"
                           for i in range(5)))
    for where in ("single", "multi"):  # evaluate / predict a saved prompt, 1 process here, 2 in the group
        ev_argv = ["evaluate", f"prompt={pt}", "split=test", f"data.data_dir={data}", "batch_size=3",
                   f"output_dir={tmp / where / 'evaluate'}"]
        pr_argv = ["predict", f"prompt={pt}", f"input={inp}", f"output={tmp / where / 'predict.jsonl'}",
                   "batch_size=2"]
        if where == "single":
            assert main(ev_argv) == 0 and main(pr_argv) == 0
        else:
            jobs += [{"name": "evaluate", "kind": "cli", "argv": ev_argv},
                     {"name": "predict", "kind": "cli", "argv": pr_argv}]
    ev = {"data_dir": str(data), "tasks": ["rte", "squad"], "n": 7, "batch_size": 2}
    jobs += [{"name": "eval_t5", "kind": "eval_gather", "model": str(tiny_t5_dir), **ev},
             {"name": "eval_llama_sharded", "kind": "eval_gather", "model": str(tiny_llama_dir), "env": shard, **ev},
             {"name": "gather_dup", "kind": "gather_dup"}]
    spec = tmp / "jobs.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    t0 = time.perf_counter()
    codes = run_group(HERE / "dist_worker.py", [str(spec)], nproc=2, timeout=420, log_dir=tmp)
    print(f"[dist] 2-process group {time.perf_counter() - t0:.1f}s", flush=True)
    logs = "\n".join((tmp / f"rank{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], f"worker exit codes {codes}\n{logs}"
    return {"tmp": tmp, "data": data, "results": json.loads((tmp / "results.json").read_text()),
            "t5": tiny_t5_dir, "llama": tiny_llama_dir}


def _prompt(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "prompt.safetensors"))


def test_runs_under_two_gloo_processes(runs):
    r = runs["results"]
    assert r["world"] == 2 and r["distributed_type"].endswith("MULTI_CPU")
    assert all(j.get("rc", 0) == 0 for j in r["jobs"].values())


@pytest.mark.parametrize("stage", ["pt_t5", "distill", "adapt"])
def test_two_processes_equal_one_process(runs, stage):
    one, two = _prompt(runs["tmp"] / "single" / stage), _prompt(runs["tmp"] / "multi" / stage)
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], **TOL)
    m1 = json.loads((runs["tmp"] / "single" / stage / "metrics.json").read_text())
    m2 = json.loads((runs["tmp"] / "multi" / stage / "metrics.json").read_text())
    assert m1["best_step"] == m2["best_step"]
    assert [h["step"] for h in m1["dev_history"]] == [h["step"] for h in m2["dev_history"]]
    for a, b in zip(m1["dev_history"], m2["dev_history"]):
        assert a["dev_score"] == pytest.approx(b["dev_score"], abs=1e-6)


@pytest.mark.parametrize("stage", ["pt_t5", "pt_llama"])
def test_sharded_backbone_equals_one_process(runs, stage):
    """FSDP2-sharded frozen backbone + replicated prompt on CPU (MPTUNE_SHARD_BACKBONE=1 for T5,
    ACCELERATE_USE_FSDP=true -- what `accelerate launch --config_file fsdp.yaml` sets -- for Llama)."""
    one, two = _prompt(runs["tmp"] / "single" / stage), _prompt(runs["tmp"] / "sharded" / stage)
    torch.testing.assert_close(two["prompt"], one["prompt"], **TOL)
    # the multi-process run wrote checkpoints (with both processes' RNG) and one log row per step
    ck = sorted((runs["tmp"] / "sharded" / stage / "checkpoints").glob("step-*"))
    assert [p.name for p in ck] == ["step-000000002"]
    tensors = load_file(str(ck[0] / "tensors.safetensors"))
    assert {"rng.0.torch", "rng.1.torch"} <= set(tensors)
    rows = [json.loads(x) for x in (runs["tmp"] / "sharded" / stage / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss" in x] == [1, 2, 3]


@pytest.mark.parametrize("job,model", [("eval_t5", "t5"), ("eval_llama_sharded", "llama")])
def test_distributed_eval_gathers_every_example_once(runs, job, model):
    res = runs["results"]["jobs"][job]
    backbone = load_backbone(ModelConfig(name=str(runs[model])))
    enc = TextEncoder(backbone.tokenizer, backbone.kind, 48, 8)
    g = torch.Generator().manual_seed(0)
    prompt = SoftPrompt(4, backbone.hidden_size, torch.randn(4, backbone.hidden_size, generator=g) * 0.5)
    for task_name in ("rte", "squad"):
        task = get_task(task_name)
        examples = task.load_raw("validation", runs["data"])[:7]
        assert len(examples) == 7
        ref = predict(backbone, prompt, task, examples, enc, batch_size=2, progress=False)
        got = res[task_name]
        assert got["predictions"] == ref  # every example, in order, once
        per = {int(k): v for k, v in got["batches_per_process"].items()}
        if job.endswith("sharded"):  # same number of passes everywhere; the short shard repeats one example
            assert per == {0: [2, 2], 1: [2, 2]}
        else:  # strided shards 4 + 3, last batch uneven (2, 2 | 2, 1)
            assert per == {0: [2, 2], 1: [2, 1]}


def test_evaluate_and_predict_under_two_processes(runs):
    tmp = runs["tmp"]
    one = (tmp / "single" / "evaluate" / "predictions_test.jsonl").read_text()
    assert (tmp / "multi" / "evaluate" / "predictions_test.jsonl").read_text() == one
    m1, m2 = (json.loads((tmp / w / "evaluate" / "metrics.json").read_text()) for w in ("single", "multi"))
    assert m1["metrics"] == m2["metrics"] and m1["examples"] == m2["examples"] == 4
    assert (tmp / "multi" / "predict.jsonl").read_text() == (tmp / "single" / "predict.jsonl").read_text()
    assert len((tmp / "multi" / "predict.jsonl").read_text().splitlines()) == 5


def test_gather_refuses_duplicates_and_gaps(runs):
    res = runs["results"]["jobs"]["gather_dup"]
    assert res["refused"] and "1 duplicated, 1 missing" in res["message"]
