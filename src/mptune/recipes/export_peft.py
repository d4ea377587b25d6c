"""Recipe: export a decomposed prompt to PEFT's multitask prompt tuning format, or import one.

export: reads a stage folder (prompt.safetensors of kind "decomposed" + config.yaml)
or a prompt file, and writes a folder ``PeftModel.from_pretrained(base, folder)``
loads; run it with ``task_ids=`` = indices into the prompt's task list (written
to stage.json as "tasks"). See mptune.prompts.peft_format for the layout.

import: reads such a PEFT folder and writes an mptune stage folder
(prompt.safetensors, config.yaml, stage.json) that evaluate/predict/adapt read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..backbone import resolve_model_source
from ..config import ConfigError, ModelConfig
from ..prompts import load_prompt, save_prompt
from ..prompts.decomposed import DecomposedPrompt
from ..prompts.peft_format import export_peft, import_peft
from ..tasks.resolve import copy_definitions
from . import common
from .evaluate import _folder, _model_for


@dataclass
class ExportPeftConfig:
    """Convert a decomposed prompt to/from a PEFT MULTITASK_PROMPT_TUNING adapter folder."""

    prompt: str
    """export: stage folder or .safetensors decomposed prompt; import: PEFT adapter folder."""
    output_dir: str
    """export: PEFT folder to write; import: mptune stage folder to write."""
    direction: Literal["export", "import"] = "export"
    """export (mptune -> PEFT) or import (PEFT -> mptune)."""
    model: Optional[ModelConfig] = None
    """Backbone (export default: the prompt folder's config.yaml, else the prompt's backbone id;
    import default: the adapter's base_model_name_or_path)."""
    tasks: Optional[list[str]] = None
    """import: task names in task-id order (default: those an mptune export stored, else task0, task1, ...)."""


def _model_config(cfg: ModelConfig):
    from transformers import AutoConfig

    name, gguf = resolve_model_source(cfg)
    kw = {"gguf_file": gguf} if gguf else {}
    return AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **kw)


def run(cfg: ExportPeftConfig) -> dict:
    out = Path(cfg.output_dir)
    if cfg.direction == "import":
        prompt, meta = import_peft(cfg.prompt, cfg.tasks, cfg.model.name if cfg.model else None)
        save_prompt(out / "prompt.safetensors", prompt.state_tensors(), meta)
        model = cfg.model or ModelConfig(name=meta.backbone)
    else:
        if cfg.tasks is not None:
            raise ConfigError("tasks: only used by direction=import (an export keeps the prompt's task names)")
        try:
            model = _model_for(cfg.prompt, cfg.model)
        except ConfigError:  # a bare prompt file: its metadata names the backbone
            _, meta = load_prompt(cfg.prompt, kind="decomposed")
            model = ModelConfig(name=meta.backbone)
        hf = _model_config(model)
        hidden = hf.get_text_config().hidden_size
        tensors, meta = load_prompt(cfg.prompt, dim=hidden, kind="decomposed")
        kind = "seq2seq" if hf.is_encoder_decoder else "causal"
        export_peft(DecomposedPrompt.from_tensors(tensors, meta), out, kind, base_model=model.name)
    summary = {"direction": cfg.direction, "output_dir": str(out), "tasks": meta.tasks, "length": meta.length,
               "dim": meta.dim, "rank": meta.rank, "backbone": model.name}
    copy_definitions(_folder(cfg.prompt), out, meta.tasks)  # user tasks' definitions travel with the prompt
    common.write_stage(out, "export-peft" if cfg.direction == "export" else "import-peft",
                       dataclasses.replace(cfg, model=model), extra={"tasks": meta.tasks})
    return summary
