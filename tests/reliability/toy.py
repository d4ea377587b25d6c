"""A tiny Trainer workload (no backbone): runs in milliseconds, so every fault can be injected
at every step. Its loss draws from the torch, python and numpy RNGs and its dev score from
python's, so a resume that restored any state wrongly (RNG, data order, optimizer, scheduler,
best prompt, eval history, log) ends with different numbers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from mptune.config import TrainConfig
from mptune.data import ShuffledBatches
from mptune.engine import Trainer
from mptune.utils import seed_everything


class Killed(BaseException):
    """An in-process stand-in for a kill, raised inside the run (a BaseException, so nothing in mptune
    catches it); the process lives on and the test resumes from the files on disk. The real kill is
    test_checkpoint_resume's SIGKILL of a `mptune prompt-tune` process."""


class ToyPrompt(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))

    def forward(self):
        return self.weight.unsqueeze(0)


def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def toy_config(**kw) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, lr=0.05, warmup_steps=2, eval_every=3, checkpoint_every=2,
                log_every=1, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _one_group(module: nn.Module) -> list[dict]:
    return [{"params": list(module.parameters())}]


def make(out: Path, cfg: TrainConfig, resume: bool = True, loss_hook: Optional[Callable] = None,
         eval_hook: Optional[Callable] = None, per_example_hook: Optional[Callable] = None,
         param_groups: Optional[Callable] = None) -> Trainer:
    """A Trainer over the toy workload. Hooks: loss_hook(trainer) runs before each loss (raise
    Killed there to 'kill' the run), per_example_hook(trainer, losses) may replace the losses,
    eval_hook(trainer) runs before each dev evaluation; param_groups(module) gives the optimizer's groups."""
    seed_everything(cfg.seed)  # as every recipe does before building anything
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(22, 4, generator=g), torch.randn(22, generator=g)
    module = ToyPrompt()
    holder: dict = {}

    def make_batch(idx):
        return {"x": X[idx], "y": y[idx]}

    def loss_fn(b):
        t = holder["t"]
        if loss_hook is not None:
            loss_hook(t)
        w = t.module()[0].sum(0)
        noise = 1 + 0.1 * torch.rand(len(b["y"]))
        extra = 0.01 * random.random() + 0.01 * float(np.random.rand())
        per = ((b["x"] @ w - b["y"]) ** 2) * noise + extra
        if per_example_hook is not None:
            per = per_example_hook(t, per)
        return per, {"extra": extra}

    def evaluate():
        t = holder["t"]
        if eval_hook is not None:
            eval_hook(t)
        w = t.module().detach()
        return float(-(w.sum() - 1.0).abs()) + 0.001 * random.random()

    t = Trainer(accelerator=accelerator(), module=module, param_groups=(param_groups or _one_group)(module),
                cfg=cfg, plan=ShuffledBatches(22, cfg.batch_size, cfg.seed), make_batch=make_batch,
                loss_fn=loss_fn, evaluate=evaluate, out_dir=out, resume=resume, desc="toy")
    holder["t"] = t
    return t


def log_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s", None)
    return rows


def outcome(t: Trainer, result) -> dict:
    return {"weight": t._raw().weight.detach().clone(), "best": {k: v.clone() for k, v in result.best_tensors.items()},
            "best_step": result.best_step, "best_score": result.best_score, "history": list(result.history),
            "log": log_rows(t.out_dir)}


def same(a: dict, b: dict) -> None:
    assert torch.equal(a["weight"], b["weight"]), (a["weight"] - b["weight"]).abs().max()
    assert a["best"].keys() == b["best"].keys() and all(torch.equal(a["best"][k], b["best"][k]) for k in a["best"])
    assert (a["best_step"], a["best_score"], a["history"]) == (b["best_step"], b["best_score"], b["history"])
    assert a["log"] == b["log"]
