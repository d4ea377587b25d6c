"""The training loop every stage shares (prompt tuning, distillation, adaptation).

A stage hands the Trainer its trainable prompt module, a batch plan (which
examples form each global batch), a loss function returning per-example losses,
and a dev-evaluation callback. The Trainer owns accelerate, the optimizer
(AdamW, warmup + linear decay), accumulation, clipping, logging, best-prompt
keeping and resumable checkpoints.

Loss scaling: each process's loss is sum(per-example loss) / (its examples), and
accelerate averages gradients over processes; with the global batch split evenly
this is the mean over the global batch, so N processes reproduce 1 process.

Exact resume: a checkpoint holds the prompt, optimizer, scheduler, data-plan
position, every process's RNG, the best prompt/score and the eval history; on
resume the JSONL log is cut back to the checkpoint's step, so a run killed at any
point and resumed ends with the same prompt (bit for bit on CPU) and the same log
as an uninterrupted run. A fresh start (resume=false, or no good checkpoint)
clears old checkpoints and log rows so they can never mix with the new run.

Numerical guards: a non-finite loss (or, without fp16 loss scaling, a non-finite
gradient norm) stops the run with TrainingError before the update is applied;
the last good checkpoint is left untouched. fp16 on GPU uses accelerate's
GradScaler (an overflowing step is skipped, the LR schedule does not advance);
on CPU, mixed precision is unavailable and the run stays in float32 (a warning
says so).

Sharded backbones (FSDP): see sharding.py; the trainer keeps the small prompt
replicated under plain DDP when the backbone is sharded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import BatchPlan, shard
from .errors import TrainingError
from .sharding import check_distributed_type, sharding_requested
from .utils import append_jsonl, atomic_write_text

log = logging.getLogger(__name__)

# Settings a checkpoint must agree on to be resumed exactly (others, e.g. eval_every, may change).
RESUME_KEYS = ("batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "max_steps", "seed",
               "max_grad_norm", "token_reduction", "target_loss")  # keys a checkpoint lacks are not compared


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


# -- the trainer -----------------------------------------------------------------

class Trainer:
    def __init__(self, *, accelerator, module: nn.Module, param_groups: list[dict], cfg: TrainConfig,
                 plan: BatchPlan, make_batch: Callable[[list[int]], dict],
                 loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
                 evaluate: Optional[Callable[[], Optional[float]]], out_dir: Path, resume: bool = True,
                 desc: str = "train", backbone: Optional[nn.Module] = None,
                 settings: Optional[dict] = None):
        # backbone: the frozen model the loss runs, put in train mode for the steps like the prompt (what
        # that means is its own business: Backbone.train keeps dropout or checkpointing as configured)
        self.backbone = backbone
        self.settings = dict(settings or {})  # other sections' keys that change the run ("data.format": ...)
        self.acc, self.cfg, self.plan = accelerator, cfg, plan
        self.make_batch, self.loss_fn, self.evaluate = make_batch, loss_fn, evaluate
        self.out_dir, self.desc = Path(out_dir), desc
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.log_path = self.out_dir / "log.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        check_distributed_type(accelerator)
        world = accelerator.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise TrainingError(f"train.batch_size={cfg.batch_size} must be divisible by processes ({world}) "
                                f"x train.grad_accum ({cfg.grad_accum})")
        if cfg.mixed_precision != "no" and accelerator.mixed_precision == "no":
            log.warning("train.mixed_precision=%s needs a GPU; on %s the run stays in float32 "
                        "(no autocast, no loss scaling)", cfg.mixed_precision, accelerator.device.type)
        # The setting behind each group's lr, for the resume check: a group may name it (e.g. "lr_task").
        self.lr_keys = [g.get("name") or ("train.lr" if "lr" not in g else f"param group {i} lr")
                        for i, g in enumerate(param_groups)]
        opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.replicated = sharding_requested(accelerator)
        if self.replicated:
            # The backbone is sharded (FSDP2); the prompt stays whole on every process under plain DDP,
            # outside accelerate's FSDP wrapping (which would shard the prompt instead of the backbone).
            from torch.nn.parallel import DistributedDataParallel

            dev = accelerator.device
            self.module = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
            self.opt = opt
            self.scaler = getattr(accelerator, "scaler", None)
        else:
            self.module, self.opt = accelerator.prepare(module, opt)
            self.scaler = None  # accelerate's optimizer wrapper drives its GradScaler
        self.fp16_scaling = accelerator.mixed_precision == "fp16" and getattr(accelerator, "scaler", None) is not None
        # The scheduler is stepped by hand: accelerate would step it once per process.
        self.sched = torch.optim.lr_scheduler.LambdaLR(self._inner_opt(),
                                                       linear_schedule(cfg.warmup_steps, cfg.max_steps))
        self.step, self.best_score, self.best_step, self.history = 0, None, 0, []
        self.best_tensors = self._snapshot()
        self.resumed_from: Optional[Path] = None
        if resume:
            self._try_resume()
        accelerator.wait_for_everyone()  # every process has read the checkpoint before files move
        if accelerator.is_main_process:
            if self.resumed_from is None:
                ckpt.remove_checkpoints(self.ckpt_dir)  # fresh start: never resume into an older run's files
            else:
                self._set_aside_refused()
            self._trim_log(self.step)
        accelerator.wait_for_everyone()

    # -- state ------------------------------------------------------------
    def _raw(self) -> nn.Module:
        return self.acc.unwrap_model(self.module)

    def _inner_opt(self) -> torch.optim.Optimizer:
        return self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._raw().state_dict().items()}

    def _fingerprint(self) -> dict:
        return {**{k: getattr(self.cfg, k) for k in RESUME_KEYS}, **self.settings}

    def _rng_all(self) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Every process's RNG state (a collective when several processes run)."""
        tensors, rest = ckpt.rng_state()
        if self.acc.num_processes > 1:
            from accelerate.utils import gather_object

            mine = (self.acc.process_index, {k: v.tolist() for k, v in tensors.items()}, rest)
            parts = sorted(gather_object([mine]), key=lambda x: x[0])
        else:
            parts = [(0, {k: v.tolist() for k, v in tensors.items()}, rest)]
        flat = {f"rng.{r}.{k}": torch.tensor(v, dtype=torch.uint8) for r, t, _ in parts for k, v in t.items()}
        return flat, [p[2] for p in parts]

    def _save(self) -> None:
        rtensors, rrest = self._rng_all()
        if self.acc.is_main_process:
            otensors, orest = ckpt.optimizer_to_flat(self._inner_opt().state_dict())
            tensors = {**{f"module.{k}": v for k, v in self._snapshot().items()},
                       **{f"best.{k}": v for k, v in self.best_tensors.items()}, **otensors, **rtensors}
            state = {"optimizer": orest, "rng": rrest, "scheduler": self.sched.state_dict(),
                     "plan": self.plan.state_dict(), "best_score": self.best_score, "best_step": self.best_step,
                     "history": self.history, "train": self._fingerprint(), "world_size": self.acc.num_processes}
            ckpt.save_checkpoint(self.ckpt_dir, self.step, tensors, state)
        self.acc.wait_for_everyone()

    def _try_resume(self) -> None:
        found = ckpt.latest_checkpoint(self.ckpt_dir)
        if found is None:
            return
        path, tensors, state = found
        saved, now = state.get("train", {}), self._fingerprint()
        diff = {k if "." in k else f"train.{k}": (saved[k], now[k])  # other sections' keys are dotted already
                for k in now if k in saved and saved[k] != now[k]}
        # Per-group lrs: loading the optimizer would silently put the checkpoint's back.
        was, lrs = state.get("optimizer", {}).get("param_groups", []), [g["initial_lr"] for g in self._inner_opt().param_groups]
        if len(was) == len(lrs):  # else loading fails below, naming the mismatch
            for key, g, lr in zip(self.lr_keys, was, lrs):
                if g.get("initial_lr", lr) != lr:
                    diff.setdefault(key, (g["initial_lr"], lr))
        if diff:
            what = ", ".join(f"{k}={a} (now {b})" for k, (a, b) in diff.items())
            raise ckpt.CheckpointError(f"{path}: checkpoint was written with {what}; resuming would not continue "
                                       "the same run. Restore those settings, set resume=false to start over, "
                                       "or use a new output_dir.")
        take = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            self._raw().load_state_dict(take("module."))
            best = take("best.")
            if set(best) != set(self.best_tensors) or any(best[k].shape != v.shape for k, v in self.best_tensors.items()):
                raise ValueError("best-prompt tensors do not match the prompt")
            self._inner_opt().load_state_dict(ckpt.optimizer_from_flat(tensors, state["optimizer"]))
            self.sched.load_state_dict(state["scheduler"])
            self.plan.load_state_dict(state["plan"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ckpt.CheckpointError(f"{path}: checkpoint does not fit this run's prompt/optimizer ({e}); "
                                       "set resume=false to start over or use a new output_dir") from None
        rank = self.acc.process_index if int(state.get("world_size", 1)) == self.acc.num_processes else 0
        ckpt.set_rng_state({k[len(f"rng.{rank}."):]: v for k, v in tensors.items() if k.startswith(f"rng.{rank}.")},
                           state["rng"][rank])
        self.best_tensors = best
        self.step, self.best_score, self.best_step = int(state["step"]), state["best_score"], state["best_step"]
        self.history = list(state["history"])
        self.resumed_from = path
        log.info("resumed from %s (step %d)", path, self.step)

    def _set_aside_refused(self) -> None:
        """Checkpoints newer than the one resumed from were refused (damaged): rename them out of the
        way (kept for inspection) so later saves and pruning never mix them with this run's."""
        for p in ckpt.list_checkpoints(self.ckpt_dir):
            if p.name > self.resumed_from.name:
                refused = p.with_name("refused-" + p.name)
                shutil.rmtree(refused, ignore_errors=True)
                p.rename(refused)

    def _trim_log(self, step: int) -> None:
        """Keep only log rows up to `step` (rows a killed run wrote after its last checkpoint go)."""
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                keep.append(line + "\n")
        atomic_write_text(self.log_path, "".join(keep))

    # -- loop --------------------------------------------------------------
    def _fail(self, what: str) -> None:
        self.opt.zero_grad(set_to_none=True)
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        where = f"last good checkpoint: {last[0]} (step {last[2]['step']}; resume from it after fixing the cause)" \
            if last else "no checkpoint was written yet"
        msg = (f"{what} at step {self.step + 1}; the update was not applied and training stopped; {where}. "
               "Lower train.lr, check the data, or use bf16/float32 instead of fp16.")
        if self.acc.is_main_process:
            append_jsonl(self.log_path, {"step": self.step + 1, "error": what})
        raise TrainingError(msg)

    def _clip_and_step(self) -> tuple[float, bool]:
        """Unscale (fp16), clip, step. Returns (grad norm, step skipped by the loss scaler)."""
        cfg, acc = self.cfg, self.acc
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        if self.replicated:
            if self.scaler is not None:
                self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        else:
            norm = acc.clip_grad_norm_(self.module.parameters(), max_norm)
        norm = float(norm) if norm is not None else 0.0
        if not math.isfinite(norm) and not self.fp16_scaling:
            self._fail(f"non-finite gradient norm ({norm})")
        if self.replicated and self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            skipped = self.scaler.get_scale() < before
        else:
            self.opt.step()
            skipped = bool(getattr(self.opt, "step_was_skipped", False))
        return norm, skipped

    def fit(self) -> FitResult:
        cfg, acc = self.cfg, self.acc
        rank, world = acc.process_index, acc.num_processes
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc, disable=not acc.is_main_process,
                   dynamic_ncols=True)
        post: dict = {}
        t0 = time.perf_counter()
        if self.evaluate and cfg.eval_at_start and self.step == 0:
            self._eval_and_keep(post)  # the start is a candidate too (best_step 0)
        while self.step < cfg.max_steps:
            local = shard(self.plan.next(), rank, world)
            micro = [local[i::cfg.grad_accum] for i in range(cfg.grad_accum)]
            total, logs = torch.zeros((), device=acc.device), {}
            self._train_mode(True)
            for j, idx in enumerate(micro):
                sync = contextlib.nullcontext() if j == len(micro) - 1 else acc.no_sync(self.module)
                with sync, acc.autocast():
                    per_example, logs = self.loss_fn(self.make_batch(idx))
                    loss = per_example.float().sum() / len(local)
                acc.backward(loss)
                total += loss.detach()
            total = acc.reduce(total, reduction="mean")
            if not torch.isfinite(total):
                self._fail(f"non-finite loss ({total.item()})")
            norm, skipped = self._clip_and_step()
            if not skipped:  # an fp16 overflow skips the update; the schedule waits for a real one
                with warnings.catch_warnings():  # accelerate's GradScaler swaps optimizer.step; harmless here
                    warnings.filterwarnings("ignore", message=".*optimizer.step\\(\\)` has been overridden.*")
                    self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            post["loss"] = f"{total.item():.4f}"
            if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                row = {"step": self.step, "loss": total.item(), "lr": self.sched.get_last_lr()[0],
                       "grad_norm": norm, "elapsed_s": round(time.perf_counter() - t0, 3),
                       **{k: float(v) for k, v in logs.items()}}
                if skipped:
                    row["skipped_fp16_overflow"] = True
                append_jsonl(self.log_path, row)
            if self.evaluate and ((cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps):
                self._eval_and_keep(post)
            bar.set_postfix(post)
            bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._save()
        bar.close()
        self._train_mode(False)
        if self.evaluate is None:  # nothing to select on: the last prompt is the result
            self.best_tensors, self.best_step = self._snapshot(), self.step
        return FitResult(self.best_tensors, self.best_score, self.best_step, self.history)

    def _train_mode(self, on: bool) -> None:
        for m in (self.module, self.backbone):
            if m is not None:
                m.train(on)

    def _eval_and_keep(self, post: dict) -> None:
        if self.history and self.history[-1]["step"] == self.step:
            return  # already evaluated at this step (resumed right after an eval)
        self._train_mode(False)
        score = self.evaluate()
        self._train_mode(True)
        if score is None or math.isnan(score):
            return
        self.history.append({"step": self.step, "dev_score": score})
        if self.acc.is_main_process:
            append_jsonl(self.log_path, {"step": self.step, "dev_score": score})
        post["dev"] = f"{score:.2f}"
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step, self.best_tensors = score, self.step, self._snapshot()
