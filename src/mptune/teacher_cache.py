"""Teacher cache for MPT distillation: the teachers' outputs the losses need, computed
once per source example and kept memory-mapped on disk instead of being recomputed
every epoch.

What is stored, per target token of every training example (ragged: example i owns
rows ``offsets[i] : offsets[i] + len(target_i)`` of flat arrays):

* ``logp``     [N_tok, k]  float32: the teacher's log-probabilities at temperature T
  of its top-k tokens (k = ``distill.teacher_topk``), or of the whole vocabulary when
  k >= V or k = 0 ("full": then the KL is exactly the live one);
* ``index``    [N_tok, k]  int32: their token ids (top-k only);
* ``log_rest`` [N_tok]     float32: log of the teacher's remaining mass outside the
  top-k (top-k only);
* ``hidden``   [N_tok, d]  the final-layer hidden state at the target positions
  (backbone dtype; bfloat16 kept bit-exact as uint16);
* ``done``     [N]         uint8: which examples are filled.

The cache fills lazily: a batch's missing examples run through the teacher (the
same frozen backbone with the teacher prompt table), are written, and every
example is read back from the file, so the first epoch costs the live teacher
plus a write and later epochs read only. A crash loses nothing written before it.
``meta.json`` records a fingerprint of everything the values depend on (backbone,
teacher prompts, temperature, k, the tokenised features); a mismatch rebuilds the cache.

The loss against these values is losses.TopKLogitKL: with full storage it equals the
live LogitKL exactly; with the top-k it is the KL between the two distributions coarsened
to k+1 outcomes (the top-k tokens and "the rest"), a lower bound of the full KL that is
exact when the teacher's mass outside the top-k is 0. The distill recipe logs the gap
(``kl_topk_gap``: full KL against a live teacher pass minus the bucket KL) every
``train.log_every`` steps; the paper preset stores nothing (``teacher_cache: false``).

Multi-process: processes on one machine share the files (the main process creates
them); each writes only its own examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import IGNORE, TargetOutput
from .utils import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = 1
_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


@dataclass
class CachedTeacher:
    """Teacher outputs for one batch, aligned with its labels [B, T] (what losses.DistillLoss reads).

    logp [B, T, k] (full: k = V), index [B, T, k] or None (full), log_rest [B, T] or None,
    hidden [B, T, d] or None. Padded target positions hold zeros (masked by the losses).
    """

    logp: Optional[torch.Tensor]
    index: Optional[torch.Tensor]
    log_rest: Optional[torch.Tensor]
    hidden: Optional[torch.Tensor]


def fingerprint(*parts) -> str:
    """sha256 over tensors (bytes), sequences of token lists, and plain values."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu", torch.float32).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        elif isinstance(p, (list, tuple)) and p and hasattr(p[0], "source"):  # Features
            for f in p:
                h.update(np.asarray(f.source, dtype=np.int64).tobytes() + b"|")
                h.update(np.asarray(f.target, dtype=np.int64).tobytes() + b"|")
                h.update(str(f.task_index).encode() + b";")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


class TeacherCache:
    """Memory-mapped teacher outputs for `target_lengths[i]` target tokens of example i."""

    def __init__(self, folder: str | Path, target_lengths: Sequence[int], *, vocab_size: int, hidden_size: int,
                 topk: int = 64, temperature: float = 1.0, logits: bool = True, hidden: bool = True,
                 hidden_dtype: torch.dtype = torch.float32, key: str = "", create: bool = True):
        self.folder = Path(folder)
        self.lengths = np.asarray(target_lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.n, self.n_tok = len(self.lengths), int(self.offsets[-1])
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.full = topk <= 0 or topk >= vocab_size
        self.k = vocab_size if self.full else topk
        self.temperature, self.logits, self.hidden = temperature, logits, hidden
        self.hidden_dtype = hidden_dtype
        if hidden_dtype not in _NP_DTYPES:
            raise ValueError(f"teacher cache: unsupported hidden dtype {hidden_dtype}")
        self.meta = {"format": FORMAT, "key": key, "n": self.n, "n_tok": self.n_tok, "k": self.k, "full": self.full,
                     "vocab_size": vocab_size, "hidden_size": hidden_size, "temperature": temperature,
                     "logits": logits, "hidden": hidden, "hidden_dtype": str(hidden_dtype).replace("torch.", "")}
        if create:
            self._create_or_validate()
        self._open()

    # -- files ---------------------------------------------------------------
    def _arrays(self) -> dict[str, tuple[np.dtype, tuple]]:
        a = {"done": (np.uint8, (self.n,))}
        if self.logits:
            a["logp"] = (np.float32, (self.n_tok, self.k))
            if not self.full:
                a["index"] = (np.int32, (self.n_tok, self.k))
                a["log_rest"] = (np.float32, (self.n_tok,))
        if self.hidden:
            a["hidden"] = (_NP_DTYPES[self.hidden_dtype], (self.n_tok, self.hidden_size))
        return a

    def _create_or_validate(self) -> None:
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            try:
                old = json.loads(meta_path.read_text())
            except ValueError:
                old = None
            ok = old == self.meta and all((self.folder / f"{n}.bin").is_file() for n in self._arrays())
            if ok:
                return
            log.info("teacher cache at %s is for other settings or data; rebuilding it", self.folder)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, (dt, shape) in self._arrays().items():
            nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
            with open(self.folder / f"{name}.bin", "wb") as f:  # sparse: zeros cost no disk until written
                f.truncate(nbytes)
        atomic_write_json(meta_path, self.meta)

    def _open(self) -> None:
        self.arrays: dict[str, np.memmap] = {}
        for name, (dt, shape) in self._arrays().items():
            if int(np.prod(shape)) == 0:
                self.arrays[name] = np.zeros(shape, dtype=dt)
            else:
                self.arrays[name] = np.memmap(self.folder / f"{name}.bin", dtype=dt, mode="r+", shape=shape)

    def flush(self) -> None:
        for a in self.arrays.values():
            if isinstance(a, np.memmap):
                a.flush()

    @property
    def nbytes(self) -> int:
        """Size of the cache if every example is filled (the files' logical size)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def disk_bytes(self) -> int:
        """Bytes actually allocated on disk now (sparse files grow as they fill)."""
        return sum((self.folder / f"{n}.bin").stat().st_blocks * 512 for n in self.arrays)

    @property
    def filled(self) -> int:
        return int(self.arrays["done"].sum())

    # -- fill / read ---------------------------------------------------------
    def _rows(self, examples: Sequence[int]) -> np.ndarray:
        return np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in examples]) \
            if len(examples) else np.zeros(0, dtype=np.int64)

    def missing(self, examples: Sequence[int]) -> list[int]:
        """Positions (into `examples`) of the examples not filled yet."""
        done = self.arrays["done"]
        return [j for j, i in enumerate(examples) if not done[i]]

    def write(self, examples: Sequence[int], out: TargetOutput) -> None:
        """Store the teacher's target-position outputs for `examples` (rows of `out`, same order)."""
        mask = out.labels != IGNORE
        counts = mask.sum(1).tolist()
        want = [int(self.lengths[i]) for i in examples]
        if counts != want:
            raise ValueError(f"teacher cache: target lengths {counts} do not match the features' {want}")
        rows = self._rows(examples)
        if self.logits:
            lp = F.log_softmax(out.logits.float() / self.temperature, dim=-1)[mask]  # [n_tok, V]
            if self.full:
                self.arrays["logp"][rows] = lp.cpu().numpy()
            else:
                vals, idx = lp.topk(self.k, dim=-1)
                rest = lp.scatter(-1, idx, float("-inf")).logsumexp(-1)
                self.arrays["logp"][rows] = vals.cpu().numpy()
                self.arrays["index"][rows] = idx.to(torch.int32).cpu().numpy()
                self.arrays["log_rest"][rows] = rest.cpu().numpy()
        if self.hidden:
            h = out.hidden[mask].detach().to(self.hidden_dtype).cpu()
            self.arrays["hidden"][rows] = (h.view(torch.uint16) if self.hidden_dtype == torch.bfloat16 else h).numpy()
        self.arrays["done"][np.asarray(examples, dtype=np.int64)] = 1

    def read(self, examples: Sequence[int], labels: torch.Tensor) -> CachedTeacher:
        """Outputs for `examples`, placed at the target positions of `labels` [B, T]."""
        mask = labels != IGNORE
        rows = self._rows(examples)
        B, T = labels.shape
        dev = labels.device

        def place(arr: np.ndarray, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
            src = torch.from_numpy(np.ascontiguousarray(arr[rows]))
            if dtype == torch.bfloat16:
                src = src.view(torch.bfloat16)
            out = torch.zeros((B, T, *src.shape[1:]), dtype=src.dtype)
            out[mask.cpu()] = src
            return out.to(dev)

        logp = index = rest = hidden = None
        if self.logits:
            logp = place(self.arrays["logp"])
            if not self.full:
                index = place(self.arrays["index"]).long()
                rest = place(self.arrays["log_rest"])
        if self.hidden:
            hidden = place(self.arrays["hidden"], self.hidden_dtype)
        return CachedTeacher(logp, index, rest, hidden)

    def lookup(self, examples: Sequence[int], batch: dict,
               run_teacher: Callable[[dict], TargetOutput]) -> CachedTeacher:
        """Fill the batch's missing examples with `run_teacher(sub_batch)` (no grad), then read all."""
        miss = self.missing(examples)
        if miss:
            sel = torch.tensor(miss, device=batch["input_ids"].device)
            sub = {k: v.index_select(0, sel.to(v.device)) for k, v in batch.items()
                   if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == len(examples)}
            with torch.no_grad():
                out = run_teacher(sub)
            self.write([examples[j] for j in miss], out)
        return self.read(examples, batch["labels"])


def open_for_distillation(folder: str | Path, features: Sequence, teachers: torch.Tensor, backbone, *,
                          topk: int, temperature: float, logits: bool, hidden: bool,
                          accelerator=None) -> TeacherCache:
    """The distillation stage's cache for `features` (created by the main process, shared by the others)."""
    key = fingerprint(backbone.name, str(backbone.dtype), teachers, features)
    kw = dict(vocab_size=backbone.model.get_output_embeddings().weight.shape[0]
              if backbone.model.get_output_embeddings() is not None else backbone.model.config.vocab_size,
              hidden_size=backbone.hidden_size, topk=topk, temperature=temperature, logits=logits, hidden=hidden,
              hidden_dtype=backbone.dtype, key=key)
    lengths = [len(f.target) for f in features]
    main = accelerator is None or accelerator.is_main_process
    cache = TeacherCache(folder, lengths, create=True, **kw) if main else None
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if cache is None:
        cache = TeacherCache(folder, lengths, create=False, **kw)
    return cache
