"""Prompt files: safetensors tensors + validated string metadata.

Nothing is unpickled by default: ``.bin`` / ``.pt`` / ``.pth`` / ``.pkl`` /
``.ckpt`` files are refused, because loading a pickle can run arbitrary code.
With an explicit ``allow_pickle=True`` such a file is read with
``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and
plain containers only, any other global -- ``os.system``, ``eval``, ... -- is
refused before it is called) and then validated exactly like a safetensors
prompt (names, ranks, shapes, finite values). A pickle carries no mptune
metadata, so its backbone cannot be checked; its hidden size still is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import MptuneError
from ..utils import atomic_write_bytes

FORMAT = "mptune-prompt"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Tensors each prompt kind must carry, with their ranks.
KIND_TENSORS = {"soft": {"prompt": 2}, "decomposed": {"shared": 2, "task_u": 3, "task_v": 3}}


class PromptFileError(MptuneError, ValueError):
    """A prompt file is missing, corrupt, or made for another backbone/shape."""


@dataclass
class PromptMeta:
    kind: str  # "soft" | "decomposed"
    backbone: str
    length: int
    dim: int
    tasks: list[str] = field(default_factory=list)
    rank: Optional[int] = None
    format_version: int = FORMAT_VERSION

    def to_strings(self) -> dict[str, str]:
        d = {"format": FORMAT, "format_version": str(self.format_version), "kind": self.kind,
             "backbone": self.backbone, "length": str(self.length), "dim": str(self.dim),
             "tasks": json.dumps(self.tasks)}
        if self.rank is not None:
            d["rank"] = str(self.rank)
        return d

    @classmethod
    def from_strings(cls, md: dict[str, str], path: Path) -> "PromptMeta":
        def need(k: str) -> str:
            if k not in md:
                raise PromptFileError(f"{path}: metadata key {k!r} missing (not an mptune prompt file?)")
            return md[k]

        if need("format") != FORMAT:
            raise PromptFileError(f"{path}: metadata format is {md['format']!r}, expected {FORMAT!r}")
        try:
            version = int(need("format_version"))
            meta = cls(kind=need("kind"), backbone=need("backbone"), length=int(need("length")),
                       dim=int(need("dim")), tasks=json.loads(need("tasks")),
                       rank=int(md["rank"]) if "rank" in md else None, format_version=version)
        except (ValueError, json.JSONDecodeError) as e:
            raise PromptFileError(f"{path}: malformed metadata: {e}") from None
        if version > FORMAT_VERSION:
            raise PromptFileError(f"{path}: format_version {version} is newer than this mptune ({FORMAT_VERSION})")
        if meta.kind not in KIND_TENSORS:
            raise PromptFileError(f"{path}: unknown prompt kind {meta.kind!r}; valid: {sorted(KIND_TENSORS)}")
        if not isinstance(meta.tasks, list) or not all(isinstance(t, str) for t in meta.tasks):
            raise PromptFileError(f"{path}: metadata 'tasks' must be a JSON list of names")
        return meta


def save_prompt(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: PromptMeta) -> Path:
    _validate(tensors, meta, Path(path))
    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
                metadata=meta.to_strings())
    return atomic_write_bytes(path, data)


def load_prompt(path: str | os.PathLike, backbone: Optional[str] = None, dim: Optional[int] = None,
                kind: Optional[str] = None, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], PromptMeta]:
    """Load and validate; refuse files made for another backbone or hidden size.

    Pickle files are refused unless ``allow_pickle`` (then loaded with
    ``torch.load(weights_only=True)``; see the module docstring).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PromptFileError(f"{path}: pickle files ({path.suffix}) can run code when loaded and are refused; "
                                  "prompts are .safetensors. If you trust this file, pass allow_pickle=true "
                                  "(it is then read with torch.load(weights_only=True)).")
        tensors, meta = _load_pickle(path, backbone)
    else:
        if not path.is_file():
            raise PromptFileError(f"prompt file not found: {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise PromptFileError(f"{path}: not a readable safetensors file ({e})") from None
        meta = PromptMeta.from_strings(md, path)
    _validate(tensors, meta, path)
    if kind is not None and meta.kind != kind:
        raise PromptFileError(f"{path}: holds a {meta.kind} prompt, expected {kind}")
    if dim is not None and meta.dim != dim:
        raise PromptFileError(f"{path}: prompt hidden size is {meta.dim}, but the backbone's is {dim}")
    if backbone is not None and meta.backbone != backbone:
        raise PromptFileError(f"{path}: prompt was trained for backbone {meta.backbone!r}, not {backbone!r}")
    return tensors, meta


def _load_pickle(path: Path, backbone: Optional[str]) -> tuple[dict[str, torch.Tensor], PromptMeta]:
    """A trusted pickle through torch's weights-only unpickler -> (tensors, metadata inferred from shapes)."""
    import pickle

    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, UnicodeDecodeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PromptFileError(f"{path}: refused by the weights-only unpickler or unreadable ({first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if torch.is_tensor(obj):
        obj = {"prompt": obj}
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise PromptFileError(f"{path}: expected a mapping of tensor names to tensors, got {type(obj).__name__}")
    tensors = dict(obj)
    if set(tensors) == {"prompt_embeddings"}:  # PEFT prompt-tuning adapter_model.bin
        tensors = {"prompt": tensors["prompt_embeddings"]}
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    who = backbone if backbone is not None else "unknown (pickle)"
    if set(tensors) == set(KIND_TENSORS["soft"]) and tensors["prompt"].ndim == 2:
        l, d = tensors["prompt"].shape
        return tensors, PromptMeta(kind="soft", backbone=who, length=l, dim=d)
    if set(tensors) == set(KIND_TENSORS["decomposed"]) and tensors["task_u"].ndim == 3 and tensors["shared"].ndim == 2:
        (l, d), (K, _, r) = tensors["shared"].shape, tensors["task_u"].shape
        return tensors, PromptMeta(kind="decomposed", backbone=who, length=l, dim=d,
                                   tasks=[f"task{k}" for k in range(K)], rank=r)
    raise PromptFileError(f"{path}: tensors {sorted(tensors)} are neither a soft prompt ['prompt'] nor a "
                          f"decomposed one {sorted(KIND_TENSORS['decomposed'])}")


def _validate(tensors: dict[str, torch.Tensor], meta: PromptMeta, path: Path) -> None:
    want = KIND_TENSORS.get(meta.kind)
    if want is None:
        raise PromptFileError(f"{path}: unknown prompt kind {meta.kind!r}")
    if set(tensors) != set(want):
        raise PromptFileError(f"{path}: tensors {sorted(tensors)} do not match kind {meta.kind!r} {sorted(want)}")
    for name, ndim in want.items():
        t = tensors[name]
        if t.ndim != ndim or not t.is_floating_point():
            raise PromptFileError(f"{path}: tensor {name!r} must be a {ndim}-d float tensor, got {tuple(t.shape)} {t.dtype}")
        if not torch.isfinite(t).all():
            raise PromptFileError(f"{path}: tensor {name!r} holds NaN/inf")
    l, d = meta.length, meta.dim
    if meta.kind == "soft":
        shape_ok = tuple(tensors["prompt"].shape) == (l, d)
    else:
        K, r = len(meta.tasks), meta.rank
        shape_ok = (r is not None and tuple(tensors["shared"].shape) == (l, d)
                    and tuple(tensors["task_u"].shape) == (K, l, r) and tuple(tensors["task_v"].shape) == (K, r, d))
    if not shape_ok:
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise PromptFileError(f"{path}: tensor shapes {shapes} disagree with metadata (l={l}, d={d}, "
                              f"tasks={len(meta.tasks)}, rank={meta.rank})")
