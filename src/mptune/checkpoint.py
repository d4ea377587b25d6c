"""Resumable training checkpoints without pickle.

A checkpoint is a folder ``checkpoints/step-000000123/`` with
  tensors.safetensors  trainable tensors, best-so-far tensors, optimizer state, torch RNG
                       (one CPU/CUDA state per process)
  state.json           step, scheduler, data order, python/numpy RNG per process, best score,
                       eval history, optimizer param groups, the run's train settings,
                       the sha256 of tensors.safetensors and a sha256 of its own content
Writes go to a temp folder (fsynced) that is renamed when complete, so a killed
run never leaves a half checkpoint that looks whole; the checksums catch later
damage (truncation, bit flips), and loading falls back to the previous good
checkpoint with a warning that says why the newer one was refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import MptuneError

log = logging.getLogger(__name__)
KEEP = 2
FORMAT_VERSION = 2


class CheckpointError(MptuneError, RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_digest(state: dict) -> str:
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


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
    """This process's RNG states: (tensors, JSON-able rest)."""
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted((t for t in tensors if t.startswith("cuda.")),
                                             key=lambda t: int(t.split(".")[1]))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    py = rest["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = rest["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint `step` under root atomically; keep the newest KEEP."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tfile = tmp / "tensors.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tfile))
    state = dict(state, format_version=FORMAT_VERSION, step=step, tensors_sha256=_sha256(tfile))
    state["state_sha256"] = _state_digest(state)
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(state))
        f.flush()
        os.fsync(f.fileno())
    with open(tfile, "rb+") as f:
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # same step written again (should not happen): move the old one aside first
        old = root / f".old-step-{step:09d}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load one checkpoint folder; raise CheckpointError if truncated or corrupted."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: state.json is missing (checkpoint incomplete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: state.json is unreadable or truncated ({e})") from None
    if not isinstance(state, dict) or "tensors_sha256" not in state:
        raise CheckpointError(f"{path}: state.json is not an mptune checkpoint state")
    version = state.get("format_version", 1)
    if "state_sha256" not in state and version != 1:  # v2+ always carries it: a damaged key name
        raise CheckpointError(f"{path}: state.json has no state_sha256 (corrupted)")
    if "state_sha256" in state and _state_digest(state) != state["state_sha256"]:
        raise CheckpointError(f"{path}: state.json fails its sha256 check (edited or corrupted)")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is newer than this "
                              f"mptune ({FORMAT_VERSION})")
    tfile = path / "tensors.safetensors"
    if not tfile.is_file():
        raise CheckpointError(f"{path}: tensors.safetensors is missing (checkpoint incomplete)")
    try:
        got = _sha256(tfile)
    except OSError as e:
        raise CheckpointError(f"{path}: tensors.safetensors is unreadable ({e})") from None
    if got != state["tensors_sha256"]:
        raise CheckpointError(f"{path}: tensors.safetensors fails its sha256 check (truncated or corrupted: "
                              f"expected {state['tensors_sha256'][:12]}…, got {got[:12]}…)")
    try:
        tensors = load_file(str(tfile))
    except Exception as e:  # checksum matched but the file is not safetensors: written by something else
        raise CheckpointError(f"{path}: tensors.safetensors is not readable ({e})") from None
    return tensors, state


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root, newest first (temp folders of killed writes excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def latest_checkpoint(root: Path) -> Optional[tuple[Path, dict[str, torch.Tensor], dict]]:
    """The newest checkpoint that verifies; damaged ones are refused with a warning and skipped."""
    for path in list_checkpoints(root):
        try:
            tensors, state = load_checkpoint(path)
            return path, tensors, state
        except CheckpointError as e:
            log.warning("refusing damaged checkpoint: %s; falling back to the previous one", e)
    return None


def remove_checkpoints(root: Path) -> None:
    """Remove every checkpoint under root (a fresh start must not resume from an older run)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(("step-", "refused-step-", ".tmp-step-", ".old-step-")):
                shutil.rmtree(p, ignore_errors=True)
