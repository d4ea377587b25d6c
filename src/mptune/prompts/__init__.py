"""Prompt methods (PromptModule: soft, decomposed; one registry of kinds) and their safetensors files."""

from __future__ import annotations

from pathlib import Path

from .base import PromptFileError, PromptMeta, PromptModule
from .io import load_module, load_prompt, save_module, save_prompt
from .registry import PROMPT_KINDS
from .init import init_prompt_vectors
from .soft import SoftPrompt


def load_prompt_module(path: str | Path, backbone, check_backbone: bool = True,
                       allow_pickle: bool = False) -> tuple[PromptModule, PromptMeta]:
    """Load a prompt file (or stage folder) for `backbone`: hidden size and backbone id must match.
    Pickle files are refused unless `allow_pickle` (then read with torch.load(weights_only=True))."""
    return load_module(path, dim=backbone.hidden_size, backbone=backbone.name if check_backbone else None,
                       allow_pickle=allow_pickle)


__all__ = ["PROMPT_KINDS", "PromptFileError", "PromptMeta", "PromptModule", "SoftPrompt", "init_prompt_vectors",
           "load_module", "load_prompt", "load_prompt_module", "save_module", "save_prompt"]
