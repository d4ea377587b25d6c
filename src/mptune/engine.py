"""The training loop every stage shares (prompt tuning, distillation, adaptation).

A stage hands the Trainer its trainable prompt module, a batch plan (which
examples form each global batch), a loss function returning per-example losses,
and a dev-evaluation callback. The Trainer owns accelerate, the optimizer
(AdamW, warmup + linear decay), accumulation, clipping, logging, best-prompt
keeping and resumable checkpoints.

Loss scaling: each process's loss is sum(per-example loss) / (its examples), and
accelerate averages gradients over processes; with the global batch split evenly
this is the mean over the global batch, so N processes reproduce 1 process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import BatchPlan, shard
from .utils import append_jsonl

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


@dataclass
class FitResult:
    best_tensors: dict[str, torch.Tensor]
    best_score: Optional[float]
    best_step: int
    history: list[dict] = field(default_factory=list)  # one row per dev evaluation


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


class Trainer:
    def __init__(self, *, accelerator, module: nn.Module, param_groups: list[dict], cfg: TrainConfig,
                 plan: BatchPlan, make_batch: Callable[[list[int]], dict],
                 loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
                 evaluate: Optional[Callable[[], Optional[float]]], out_dir: Path, resume: bool = True,
                 desc: str = "train"):
        self.acc, self.cfg, self.plan = accelerator, cfg, plan
        self.make_batch, self.loss_fn, self.evaluate = make_batch, loss_fn, evaluate
        self.out_dir, self.desc = Path(out_dir), desc
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.log_path = self.out_dir / "log.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        world = accelerator.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise TrainingError(f"train.batch_size={cfg.batch_size} must be divisible by processes ({world}) "
                                f"x train.grad_accum ({cfg.grad_accum})")
        opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.module, self.opt = accelerator.prepare(module, opt)
        # The scheduler is stepped by hand: accelerate would step it once per process.
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt,
                                                       linear_schedule(cfg.warmup_steps, cfg.max_steps))
        self.step, self.best_score, self.best_step, self.history = 0, None, 0, []
        self.best_tensors = self._snapshot()
        if resume:
            self._try_resume()

    # -- state ------------------------------------------------------------
    def _raw(self) -> nn.Module:
        return self.acc.unwrap_model(self.module)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._raw().state_dict().items()}

    def _save(self) -> None:
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return
        inner = self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt
        otensors, orest = ckpt.optimizer_to_flat(inner.state_dict())
        rtensors, rrest = ckpt.rng_state()
        tensors = {**{f"module.{k}": v for k, v in self._snapshot().items()},
                   **{f"best.{k}": v for k, v in self.best_tensors.items()}, **otensors, **rtensors}
        state = {"optimizer": orest, "rng": rrest, "scheduler": self.sched.state_dict(),
                 "plan": self.plan.state_dict(), "best_score": self.best_score, "best_step": self.best_step,
                 "history": self.history}
        ckpt.save_checkpoint(self.ckpt_dir, self.step, tensors, state)
        self.acc.wait_for_everyone()

    def _try_resume(self) -> None:
        found = ckpt.latest_checkpoint(self.ckpt_dir) if self.ckpt_dir.is_dir() else None
        if found is None:
            return
        path, tensors, state = found
        take = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        self._raw().load_state_dict(take("module."))
        self.best_tensors = take("best.")
        inner = self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt
        inner.load_state_dict(ckpt.optimizer_from_flat(tensors, state["optimizer"]))
        self.sched.load_state_dict(state["scheduler"])
        self.plan.load_state_dict(state["plan"])
        ckpt.set_rng_state(tensors, state["rng"])
        self.step, self.best_score, self.best_step = state["step"], state["best_score"], state["best_step"]
        self.history = state["history"]
        log.info("resumed from %s (step %d)", path, self.step)

    # -- loop --------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, acc = self.cfg, self.acc
        rank, world = acc.process_index, acc.num_processes
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc, disable=not acc.is_main_process,
                   dynamic_ncols=True)
        post: dict = {}
        t0 = time.perf_counter()
        while self.step < cfg.max_steps:
            local = shard(self.plan.next(), rank, world)
            micro = [local[i::cfg.grad_accum] for i in range(cfg.grad_accum)]
            total, logs = torch.zeros((), device=acc.device), {}
            self.module.train()
            for j, idx in enumerate(micro):
                sync = contextlib.nullcontext() if j == len(micro) - 1 else acc.no_sync(self.module)
                with sync, acc.autocast():
                    per_example, logs = self.loss_fn(self.make_batch(idx))
                    loss = per_example.sum() / len(local)
                acc.backward(loss)
                total += loss.detach()
            total = acc.reduce(total, reduction="mean")
            if not torch.isfinite(total):
                self.opt.zero_grad(set_to_none=True)
                last = ckpt.latest_checkpoint(self.ckpt_dir) if self.ckpt_dir.is_dir() else None
                where = f"last good checkpoint: {last[0]}" if last else "no checkpoint was written yet"
                raise TrainingError(f"non-finite loss ({total.item()}) at step {self.step + 1}; the update was "
                                    f"not applied; {where}. Lower train.lr or use bf16 instead of fp16.")
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            post["loss"] = f"{total.item():.4f}"
            if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                row = {"step": self.step, "loss": total.item(), "lr": self.sched.get_last_lr()[0],
                       "elapsed_s": round(time.perf_counter() - t0, 3),
                       **{k: float(v) for k, v in logs.items()}}
                append_jsonl(self.log_path, row)
            if self.evaluate and ((cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps):
                self._eval_and_keep(post)
            bar.set_postfix(post)
            bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._save()
        bar.close()
        if self.evaluate is None:  # nothing to select on: the last prompt is the result
            self.best_tensors, self.best_step = self._snapshot(), self.step
        return FitResult(self.best_tensors, self.best_score, self.best_step, self.history)

    def _eval_and_keep(self, post: dict) -> None:
        if self.history and self.history[-1]["step"] == self.step:
            return  # already evaluated at this step (resumed right after an eval)
        self.module.eval()
        score = self.evaluate()
        self.module.train()
        if score is None or math.isnan(score):
            return
        self.history.append({"step": self.step, "dev_score": score})
        if self.acc.is_main_process:
            append_jsonl(self.log_path, {"step": self.step, "dev_score": score})
        post["dev"] = f"{score:.2f}"
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step, self.best_tensors = score, self.step, self._snapshot()
