"""Recipe: export a trained prompt to a PEFT adapter folder, or import one.

export, mode=prompt_tuning (default): any prompt (a prompt-tune folder, or one task of a
decomposed prompt, materialised as P_t = P* ∘ (u_t v_t)) becomes a plain PROMPT_TUNING
adapter, one folder per task: <output_dir>/<task>/{adapter_config.json,
adapter_model.safetensors}. ``PeftModel.from_pretrained(base, <output_dir>/<task>)``
loads it, no task ids needed. See docs/export.md for what equals mptune exactly.

export, mode=multitask: a decomposed prompt becomes one MULTITASK_PROMPT_TUNING folder,
run with ``task_ids=`` = indices into the prompt's task list (stage.json "tasks").

import: reads either kind of PEFT folder (the type is in its adapter_config.json) and
writes an mptune stage folder (prompt.safetensors, config.yaml, stage.json) that
evaluate/predict/adapt read. See mptune.prompts.peft_format for the layouts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

from ..backbone import resolve_model_source
from ..config import ConfigError, ModelConfig
from ..prompts import load_module, load_prompt, save_module
from ..prompts.decomposed import DecomposedPrompt
from ..prompts.peft_format import PeftExportMode, export_multitask, export_prompt_tuning, import_peft
from ..tasks.resolve import copy_definitions
from . import common
from .evaluate import _folder, _model_for


@dataclass
class ExportPeftConfig:
    """Convert a trained prompt to/from PEFT adapter folders (PROMPT_TUNING per task, or MULTITASK_PROMPT_TUNING)."""

    prompt: str
    """export: stage folder or .safetensors prompt (any kind); import: PEFT adapter folder."""
    output_dir: str
    """export: folder to write (prompt_tuning: one sub-folder per task); import: mptune stage folder to write."""
    direction: Literal["export", "import"] = "export"
    """export (mptune -> PEFT) or import (PEFT -> mptune)."""
    mode: PeftExportMode = PeftExportMode.prompt_tuning
    """export format: prompt_tuning (a PROMPT_TUNING folder per task, <output_dir>/<task>) or multitask (one
    MULTITASK_PROMPT_TUNING folder, decomposed prompts only). import reads the type from adapter_config.json."""
    model: Optional[ModelConfig] = None
    """Backbone (export default: the prompt folder's config.yaml, else the prompt's backbone id;
    import default: the adapter's base_model_name_or_path)."""
    tasks: Optional[list[str]] = None
    """export (prompt_tuning): the tasks to write (default: all of the prompt's); import: task names in task-id
    order (default: those an mptune export stored, else task0, task1, ... for multitask, none for a single prompt)."""

    def __post_init__(self) -> None:
        try:
            self.mode = PeftExportMode(self.mode)
        except ValueError:
            raise ConfigError(f"mode: {self.mode!r} is not one of {[m.value for m in PeftExportMode]}") from None


def _model_config(cfg: ModelConfig):
    from transformers import AutoConfig

    name, gguf = resolve_model_source(cfg)
    kw = {"gguf_file": gguf} if gguf else {}
    return AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **kw)


def _folder_name(task: str) -> str:
    if not task or task in (".", "..") or "/" in task or "\\" in task:
        raise ConfigError(f"tasks: {task!r} cannot name an adapter folder (one path component, not . or ..)")
    return task


def run(cfg: ExportPeftConfig) -> dict:
    out = Path(cfg.output_dir)
    if cfg.direction == "import":
        prompt, meta = import_peft(cfg.prompt, cfg.tasks, cfg.model.name if cfg.model else None)
        save_module(out / "prompt.safetensors", prompt, meta.backbone)
        model, written = cfg.model or ModelConfig(name=meta.backbone), meta.tasks
    else:
        try:
            model = _model_for(cfg.prompt, cfg.model)
        except ConfigError:  # a bare prompt file: its metadata names the backbone
            model = ModelConfig(name=load_prompt(cfg.prompt)[1].backbone)
        hf = _model_config(model)
        prompt, meta = load_module(cfg.prompt, dim=hf.get_text_config().hidden_size)
        kind = "seq2seq" if hf.is_encoder_decoder else "causal"
        if cfg.mode == PeftExportMode.multitask:
            if not isinstance(prompt, DecomposedPrompt):
                raise ConfigError(f"mode: multitask needs a decomposed prompt; {cfg.prompt} holds a {meta.kind} one "
                                  "(use mode=prompt_tuning)")
            if cfg.tasks is not None:
                raise ConfigError("tasks: mode=multitask exports every task of the prompt; leave tasks unset")
            export_multitask(prompt, out, kind, base_model=model.name)
            written = meta.tasks
        else:
            names = meta.tasks or ["task0"]  # a soft prompt of unknown task
            written = names if cfg.tasks is None else list(cfg.tasks)
            unknown = [t for t in written if t not in names]
            if unknown or not written:
                raise ConfigError(f"tasks: {unknown or written} not among the prompt's tasks {names}")
            folders = {task: out / _folder_name(task) for task in written}  # all checked before anything is written
            with torch.no_grad():
                table = prompt()  # [K, l, d]: each task's prompt, materialised
            for task, folder in folders.items():
                export_prompt_tuning(table[names.index(task)], folder, kind, model.name, task)
                copy_definitions(_folder(cfg.prompt), folder, [task])
    copy_definitions(_folder(cfg.prompt), out, written)  # user tasks' definitions travel with the prompt
    mode = {"mode": cfg.mode.value} if cfg.direction == "export" else {}
    summary = {"direction": cfg.direction, **mode, "output_dir": str(out), "tasks": written, "kind": meta.kind,
               "length": meta.length, "dim": meta.dim, "rank": meta.rank, "backbone": model.name}
    common.write_stage(out, "export-peft" if cfg.direction == "export" else "import-peft",
                       dataclasses.replace(cfg, model=model), extra={"tasks": written, **mode})
    return summary
