"""Prompt files: safetensors tensors + validated string metadata. Nothing is unpickled."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..utils import atomic_write_bytes

FORMAT = "mptune-prompt"
FORMAT_VERSION = 1
# Tensors each prompt kind must carry, with their ranks.
KIND_TENSORS = {"soft": {"prompt": 2}, "decomposed": {"shared": 2, "task_u": 3, "task_v": 3}}


class PromptFileError(ValueError):
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
                kind: Optional[str] = None) -> tuple[dict[str, torch.Tensor], PromptMeta]:
    """Load and validate; refuse files made for another backbone or hidden size."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    if path.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}:
        raise PromptFileError(f"{path}: pickle files are refused; prompts are .safetensors")
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
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
