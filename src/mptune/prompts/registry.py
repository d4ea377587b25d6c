"""The prompt kinds, listed once: a prompt file's "kind" names its class here.

File I/O (validation, pickle import), loading and export all go through this
table, so adding a prompt method = one PromptModule class + one entry below.
"""

from __future__ import annotations

from pathlib import Path

from .base import PromptFileError, PromptModule
from .decomposed import DecomposedPrompt
from .soft import SoftPrompt

PROMPT_KINDS: dict[str, type[PromptModule]] = {cls.kind: cls for cls in (SoftPrompt, DecomposedPrompt)}


def prompt_kind(kind: str, path: Path | str) -> type[PromptModule]:
    """The class of prompt kind `kind` (read from file `path`, named in the error)."""
    try:
        return PROMPT_KINDS[kind]
    except KeyError:
        raise PromptFileError(f"{path}: unknown prompt kind {kind!r}; valid: {sorted(PROMPT_KINDS)}") from None
