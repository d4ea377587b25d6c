"""What every prompt method is (the PromptModule protocol) and the metadata its file carries.

A prompt method is an ``nn.Module`` whose ``forward()`` returns the prompt table
[K, l, d], one row per task; the backbone gathers each batch row's task from it.
Its class attributes tell file I/O what a file of that kind holds, and four
methods convert to and from that file. The kinds are listed once, in
``prompts/registry.py``; file I/O, loading and export all derive from that list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Protocol, runtime_checkable

import torch

from ..errors import MptuneError

FORMAT = "mptune-prompt"
FORMAT_VERSION = 1


class PromptFileError(MptuneError, ValueError):
    """A prompt file is missing, corrupt, or made for another backbone/shape."""


@dataclass
class PromptMeta:
    kind: str  # a key of prompts.registry.PROMPT_KINDS
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
        """Parse a file's string metadata (the kind is checked against the registry by the caller)."""
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
        if not isinstance(meta.tasks, list) or not all(isinstance(t, str) for t in meta.tasks):
            raise PromptFileError(f"{path}: metadata 'tasks' must be a JSON list of names")
        return meta


@runtime_checkable
class PromptModule(Protocol):
    """A prompt method. Implemented by SoftPrompt and DecomposedPrompt; registered in prompts/registry.py."""

    kind: ClassVar[str]
    """The name written as the file's "kind"."""
    tensor_ranks: ClassVar[dict[str, int]]
    """The tensors a file of this kind holds, with their number of dimensions."""
    tasks: list[str]
    """Task names, in the order of the table's rows (may be empty for a one-row prompt of unknown task)."""

    @property
    def length(self) -> int: ...  # l

    @property
    def dim(self) -> int: ...  # d

    def __call__(self) -> torch.Tensor:
        """The prompt table [K, l, d]."""
        ...

    def task_index(self, name: str) -> int:
        """The table row that serves task `name` (KeyError if this prompt cannot serve it)."""
        ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save (names as in tensor_ranks), detached, on CPU."""
        ...

    def meta(self, backbone: str) -> PromptMeta:
        """The file metadata of this prompt for backbone id `backbone`."""
        ...

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: PromptMeta) -> "PromptModule":
        """Rebuild from a validated file."""
        ...

    @classmethod
    def shapes(cls, meta: PromptMeta) -> Optional[dict[str, tuple[int, ...]]]:
        """The tensor shapes a file with this metadata must hold (None: the metadata is incomplete)."""
        ...

    @classmethod
    def meta_from_tensors(cls, tensors: dict[str, torch.Tensor], backbone: str) -> PromptMeta:
        """Metadata for tensors that came without any (a trusted pickle), read off their shapes."""
        ...
