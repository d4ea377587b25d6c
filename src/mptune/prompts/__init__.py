"""Prompt modules (soft, decomposed) and their safetensors files."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .io import PromptFileError, PromptMeta, load_prompt, save_prompt
from .soft import SoftPrompt, init_prompt_vectors


def load_prompt_module(path: str | Path, backbone, check_backbone: bool = True,
                       allow_pickle: bool = False) -> tuple[nn.Module, PromptMeta]:
    """Load a prompt file (or stage folder) for `backbone`: hidden size and backbone id must match.
    Pickle files are refused unless `allow_pickle` (then read with torch.load(weights_only=True))."""
    tensors, meta = load_prompt(path, dim=backbone.hidden_size, backbone=backbone.name if check_backbone else None,
                                allow_pickle=allow_pickle)
    if meta.kind == "soft":
        return SoftPrompt(meta.length, meta.dim, tensors["prompt"]), meta
    from .decomposed import DecomposedPrompt

    return DecomposedPrompt.from_tensors(tensors, meta), meta


__all__ = ["PromptFileError", "PromptMeta", "SoftPrompt", "init_prompt_vectors", "load_prompt",
           "load_prompt_module", "save_prompt"]
