"""One process of a multi-process (gloo, CPU) run, started by test_distributed.py.

Usage: python dist_worker.py jobs.json   (RANK, WORLD_SIZE, MASTER_* set by the test)

Runs each job in order inside the same process group and writes, from rank 0,
``results.json`` next to jobs.json:
  cli          run ``mptune.cli.main(argv)`` (optionally with extra env, e.g. MPTUNE_SHARD_BACKBONE=1)
  eval_gather  distributed evaluation of a handful of examples (uneven shards, uneven last
               batch); records what every process scored and the gathered predictions
  gather_dup   two processes claim the same example: the gather must refuse it
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def eval_gather(job: dict, acc) -> dict:
    import torch

    from mptune.backbone import load_backbone
    from mptune.config import ModelConfig
    from mptune.data import TextEncoder
    from mptune.sharding import shard_frozen_backbone, sharding_requested
    from mptune.evaluation import predict
    from mptune.prompts.soft import SoftPrompt
    from mptune.tasks import get_task

    backbone = load_backbone(ModelConfig(name=job["model"]))
    if sharding_requested(acc):
        shard_frozen_backbone(backbone.model, acc)
        backbone.fast_prefix = False
    enc = TextEncoder(backbone.tokenizer, backbone.kind, 48, 8)
    g = torch.Generator().manual_seed(0)
    prompt = SoftPrompt(4, backbone.hidden_size, torch.randn(4, backbone.hidden_size, generator=g) * 0.5)
    out = {}
    for task_name in job["tasks"]:
        task = get_task(task_name)
        examples = task.load_raw("validation", job["data_dir"])[: job["n"]]
        seen: list[int] = []  # examples per batch this process ran (the batch's source rows)
        orig_score, orig_gen = backbone.score_choices, backbone.generate

        def score(table, batch, _o=orig_score):
            seen.append(int(batch["input_ids"].shape[0]))
            return _o(table, batch)

        def gen(table, batch, n, _o=orig_gen):
            seen.append(int(batch["input_ids"].shape[0]))
            return _o(table, batch, n)

        backbone.score_choices, backbone.generate = score, gen
        preds = predict(backbone, prompt, task, examples, enc, batch_size=job["batch_size"], accelerator=acc,
                        progress=False)
        backbone.score_choices, backbone.generate = orig_score, orig_gen
        from accelerate.utils import gather_object

        batches = gather_object([(acc.process_index, seen)])
        out[task_name] = {"predictions": preds, "batches_per_process": dict(batches)}
    return out


def gather_dup(acc) -> dict:
    from mptune.evaluation import gather_in_order

    try:  # both processes claim example 0; example 1 is never scored
        gather_in_order([0], ["x"], 2)
    except RuntimeError as e:
        return {"refused": True, "message": str(e)}
    return {"refused": False}


def main() -> int:
    jobs_file = Path(sys.argv[1])
    spec = json.loads(jobs_file.read_text())
    import torch

    torch.set_num_threads(1)
    from accelerate import Accelerator

    from mptune.cli import main as cli

    acc = Accelerator()
    results = {"world": acc.num_processes, "distributed_type": str(acc.distributed_type), "jobs": {}}
    for job in spec["jobs"]:
        saved = dict(os.environ)
        os.environ.update(job.get("env", {}))
        try:
            if job["kind"] == "cli":
                res = {"rc": cli(job["argv"])}
            elif job["kind"] == "eval_gather":
                res = eval_gather(job, acc)
            elif job["kind"] == "gather_dup":
                res = gather_dup(acc)
            else:
                raise ValueError(job["kind"])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        results["jobs"][job["name"]] = res
        acc.wait_for_everyone()
    if acc.is_main_process:
        (jobs_file.parent / "results.json").write_text(json.dumps(results))
    acc.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:
        traceback.print_exc()
        code = 1  # and do not wait on peers stuck in a collective
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: results.json is written and the group destroyed, and tearing down
    # gloo's C++ threads there has aborted a worker ("terminate called without an active exception",
    # SIGABRT) about once in four full runs; cf. pytorch/pytorch#179291, #190489.
    os._exit(code)
