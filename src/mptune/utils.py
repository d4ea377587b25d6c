"""Small shared helpers: atomic file writes, JSON/JSONL, seeding, the software and device a stage ran on."""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch


def _atomic(path: str | os.PathLike, write) -> Path:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "value"):  # str enums
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (a log; a torn last line is tolerated by readers)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name() -> str:
    """The accelerator's name where there is one, else the CPU's."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()


def environment() -> dict:
    """What a result's numerics depend on besides its config and seed: the library versions and the
    device (recorded in every stage.json, so runs of different machines or installs are told apart)."""
    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "device": device_name()}
