"""Resumable training checkpoints without pickle.

A checkpoint is a folder ``checkpoints/step-000123/`` with
  tensors.safetensors  trainable tensors, best-so-far tensors, optimizer state, torch RNG
  state.json           step, scheduler, data order, python/numpy RNG, best score,
                       optimizer param groups, and the sha256 of tensors.safetensors
Writes go to a temp folder that is renamed when complete, so a killed run never
leaves a half checkpoint that looks whole; the checksum catches later damage, and
loading falls back to the previous good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
KEEP = 2


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def optimizer_to_flat(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in rest["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = rest["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = rest["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint `step` under root atomically; keep the newest KEEP."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    state = dict(state, step=step, tensors_sha256=_sha256(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load one checkpoint folder; raise CheckpointError if truncated or corrupted."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable state.json ({e})") from None
    tfile = path / "tensors.safetensors"
    if not tfile.is_file() or _sha256(tfile) != state.get("tensors_sha256"):
        raise CheckpointError(f"{path}: tensors.safetensors is missing or fails its sha256 check")
    return load_file(str(tfile)), state


def latest_checkpoint(root: Path) -> Optional[tuple[Path, dict[str, torch.Tensor], dict]]:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    for path in sorted(root.glob("step-*"), reverse=True):
        try:
            tensors, state = load_checkpoint(path)
            return path, tensors, state
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
    return None
