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

import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..utils import atomic_write_bytes
from .base import FORMAT, FORMAT_VERSION, PromptFileError, PromptMeta, PromptModule
from .registry import PROMPT_KINDS, prompt_kind

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

__all__ = ["FORMAT", "FORMAT_VERSION", "PICKLE_SUFFIXES", "PromptFileError", "PromptMeta", "load_module",
           "load_prompt", "save_module", "save_prompt"]


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
    for cls in PROMPT_KINDS.values():
        if set(tensors) == set(cls.tensor_ranks) and all(tensors[k].ndim == n for k, n in cls.tensor_ranks.items()):
            return tensors, cls.meta_from_tensors(tensors, backbone if backbone is not None else "unknown (pickle)")
    kinds = ", ".join(f"{k} {sorted(c.tensor_ranks)}" for k, c in PROMPT_KINDS.items())
    raise PromptFileError(f"{path}: tensors {sorted(tensors)} fit no prompt kind ({kinds})")


def _validate(tensors: dict[str, torch.Tensor], meta: PromptMeta, path: Path) -> None:
    want = prompt_kind(meta.kind, path).tensor_ranks
    if set(tensors) != set(want):
        raise PromptFileError(f"{path}: tensors {sorted(tensors)} do not match kind {meta.kind!r} {sorted(want)}")
    for name, ndim in want.items():
        t = tensors[name]
        if t.ndim != ndim or not t.is_floating_point():
            raise PromptFileError(f"{path}: tensor {name!r} must be a {ndim}-d float tensor, got {tuple(t.shape)} {t.dtype}")
        if not torch.isfinite(t).all():
            raise PromptFileError(f"{path}: tensor {name!r} holds NaN/inf")
    shapes = PROMPT_KINDS[meta.kind].shapes(meta)
    if shapes is None or any(tuple(tensors[k].shape) != s for k, s in shapes.items()):
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise PromptFileError(f"{path}: tensor shapes {found} disagree with metadata (l={meta.length}, d={meta.dim}, "
                              f"tasks={len(meta.tasks)}, rank={meta.rank})")


def load_module(path: str | os.PathLike, **kw) -> tuple[PromptModule, PromptMeta]:
    """load_prompt (same checks and arguments), rebuilt as its kind's PromptModule."""
    tensors, meta = load_prompt(path, **kw)
    try:
        return PROMPT_KINDS[meta.kind].from_tensors(tensors, meta), meta
    except ValueError as e:  # e.g. duplicate task names, a rank the shapes cannot hold
        raise PromptFileError(f"{path}: {e}") from None


def save_module(path: str | os.PathLike, module: PromptModule, backbone: str) -> Path:
    """Write `module` as a prompt file for backbone id `backbone`."""
    return save_prompt(path, module.state_tensors(), module.meta(backbone))
