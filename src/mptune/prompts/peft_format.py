"""mptune prompts <-> PEFT adapter folders (written without importing peft; checked on peft 0.21).

Two PEFT formats, chosen by PeftExportMode:

* PROMPT_TUNING (mode prompt_tuning, the default): one plain soft prompt per task,
  ``adapter_model.safetensors`` holding ``prompt_embeddings`` [l, d]. Any prompt kind
  exports to it: task t's row of the prompt table, so a decomposed prompt is materialised
  as P_t = P* ∘ (u_t v_t). Loaded with ``PeftModel.from_pretrained(base, folder)`` and
  called without task ids; this is what lm-evaluation-harness (``peft=``), plain PEFT
  users and prompt-embedding inputs of serving engines expect. See docs/export.md.
* MULTITASK_PROMPT_TUNING (mode multitask; decomposed prompts only): PEFT's
  MultitaskPromptEmbedding computes, for a row with task id k,
      prompt = embedding.weight * (prefix_task_cols[k] @ prefix_task_rows[k])
  which is P_k = P* ∘ (u_k v_k) with P* = embedding.weight (saved as ``prompt_embeddings``),
  u = prefix_task_cols [K, l, r], v = prefix_task_rows [K, r, d]. Task ids are indices
  into the prompt's task list, passed as ``task_ids=`` to PEFT's forward.

Both write adapter_config.json (task_type SEQ_2_SEQ_LM or CAUSAL_LM, num_virtual_tokens l,
token_dim d) and the weights with metadata {"format": "pt"} plus the task names under
"mptune_tasks" (PEFT ignores it), so an import gets the names back.

num_transformer_submodules is written as 1. Left unset, PEFT defaults it to 2 for
SEQ_2_SEQ_LM: the embedding then holds 2l rows, and the multitask forward also prepends
l virtual tokens to the *decoder* input, while mptune prompts only the encoder. Importing
a 2-submodule multitask folder is therefore refused; a 2-submodule PROMPT_TUNING seq2seq
folder imports its first l rows, the only ones PEFT's seq2seq PROMPT_TUNING forward and
generate use (``prompts[:, :num_virtual_tokens]`` in PeftModelForSeq2SeqLM).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..utils import atomic_write_bytes, atomic_write_json
from .base import PromptFileError, PromptMeta
from .decomposed import DecomposedPrompt
from .soft import SoftPrompt

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}  # mptune ModelKind value -> PEFT TaskType


class PeftExportMode(str, Enum):
    """Which PEFT format an export writes."""

    # Member names equal their values, so YAML/CLI spell them the same way.
    prompt_tuning = "prompt_tuning"  # PROMPT_TUNING: one folder per task, <output_dir>/<task>/
    multitask = "multitask"  # MULTITASK_PROMPT_TUNING: one folder, task_ids= at every call (decomposed only)


# PEFT type -> (tensor keys, the config's positive-integer fields)
PEFT_TYPES = {
    "PROMPT_TUNING": (("prompt_embeddings",), ("num_virtual_tokens", "token_dim")),
    "MULTITASK_PROMPT_TUNING": (("prompt_embeddings", "prefix_task_cols", "prefix_task_rows"),
                                ("num_virtual_tokens", "token_dim", "num_tasks", "num_ranks")),
}


def peft_task_type(kind) -> str:
    """PEFT task_type for a backbone kind ("seq2seq"/"causal" or a ModelKind)."""
    kind = getattr(kind, "value", kind)
    if kind not in TASK_TYPES:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {sorted(TASK_TYPES)}")
    return TASK_TYPES[kind]


def export_prompt_tuning(prompt: torch.Tensor, output_dir: str | os.PathLike, kind, base_model: str,
                         task: Optional[str] = None) -> Path:
    """Write one task's prompt [l, d] as a PROMPT_TUNING folder ``PeftModel.from_pretrained(base, output_dir)`` loads."""
    if prompt.ndim != 2:
        raise ValueError(f"a PROMPT_TUNING adapter holds one prompt [l, d], got shape {tuple(prompt.shape)}")
    return _write(output_dir, "PROMPT_TUNING", kind, base_model, {"prompt_embeddings": prompt},
                  [task] if task is not None else [], num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1])


def export_multitask(prompt: DecomposedPrompt, output_dir: str | os.PathLike, kind, base_model: str) -> Path:
    """Write a decomposed prompt as one MULTITASK_PROMPT_TUNING folder (task ids = indices into prompt.tasks)."""
    t = prompt.state_tensors()
    tensors = {"prompt_embeddings": t["shared"], "prefix_task_cols": t["task_u"], "prefix_task_rows": t["task_v"]}
    return _write(output_dir, "MULTITASK_PROMPT_TUNING", kind, base_model, tensors, prompt.tasks,
                  num_virtual_tokens=prompt.length, token_dim=prompt.dim, num_tasks=prompt.num_tasks,
                  num_ranks=prompt.rank, prompt_tuning_init_state_dict_path=None, prompt_tuning_init_task=0)


def _write(output_dir, peft_type: str, kind, base_model: str, tensors: dict[str, torch.Tensor], tasks: Sequence[str],
           **fields) -> Path:
    out = Path(output_dir)
    config = {
        "peft_type": peft_type,
        "task_type": peft_task_type(kind),
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "num_transformer_submodules": 1,  # the encoder only (see the module docstring)
        "num_attention_heads": None,
        "num_layers": None,
        # RANDOM: loading must not look for init text or a source state dict; the weights replace the init anyway.
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "modules_to_save": None,
        "revision": None,
        **fields,
    }
    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
                metadata={"format": "pt", "mptune_tasks": json.dumps(list(tasks))})
    atomic_write_bytes(out / WEIGHTS_FILE, data)
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def import_peft(folder: str | os.PathLike, tasks: Optional[Sequence[str]] = None,
                backbone: Optional[str] = None) -> tuple[SoftPrompt | DecomposedPrompt, PromptMeta]:
    """Read a PROMPT_TUNING folder (-> SoftPrompt) or a MULTITASK_PROMPT_TUNING one (-> DecomposedPrompt).

    Task names: `tasks`, else the names an mptune export stored, else none for a soft prompt and
    task0..task{K-1} for a multitask one. Backbone id: `backbone`, else the config's
    base_model_name_or_path. Only safetensors is read; nothing is unpickled."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptFileError(f"PEFT folder not found: {folder}")
    cfg = _read_config(folder)
    keys, _ = PEFT_TYPES[cfg["peft_type"]]
    t, stored = _read_weights(folder, keys)
    l, d = cfg["num_virtual_tokens"], cfg["token_dim"]
    seq2seq = cfg["task_type"] == TASK_TYPES["seq2seq"]
    # PEFT defaults num_transformer_submodules to 2 for seq2seq; the tensors say what was trained.
    subs = cfg.get("num_transformer_submodules") or (2 if seq2seq else 1)
    multitask = cfg["peft_type"] == "MULTITASK_PROMPT_TUNING"
    first_rows_only = not multitask and seq2seq and subs == 2  # PEFT's seq2seq PROMPT_TUNING uses rows :l only
    if subs != 1 and not first_rows_only:
        raise PromptFileError(f"{folder}: num_transformer_submodules={subs}: this adapter also prompts the decoder "
                              "(PEFT's seq2seq default); mptune prompts only the encoder, so it cannot be imported")
    K, r = (cfg["num_tasks"], cfg["num_ranks"]) if multitask else (1, None)
    want = {"prompt_embeddings": (l * subs, d), "prefix_task_cols": (K, l, r), "prefix_task_rows": (K, r, d)}
    for k in keys:
        if tuple(t[k].shape) != want[k] or not t[k].is_floating_point():
            raise PromptFileError(f"{folder / WEIGHTS_FILE}: {k} is {tuple(t[k].shape)} {t[k].dtype}, expected a float "
                                  f"tensor {want[k]} from {CONFIG_FILE} (l={l}, d={d}, num_tasks={K}, num_ranks={r})")
        if not torch.isfinite(t[k]).all():
            raise PromptFileError(f"{folder / WEIGHTS_FILE}: {k} holds NaN/inf")

    def fits(names) -> bool:  # K names for a multitask adapter; one or none for a single prompt
        return len(names) == K if multitask else len(names) <= 1

    if tasks is None:
        ok = isinstance(stored, list) and all(isinstance(x, str) for x in stored) and fits(stored)
        tasks = stored if ok else [f"task{k}" for k in range(K)] if multitask else []
    if not fits(tasks):
        raise PromptFileError(f"{folder}: {len(tasks)} task names given for an adapter with num_tasks={K}")
    backbone = backbone or cfg.get("base_model_name_or_path")
    if not isinstance(backbone, str) or not backbone:
        raise PromptFileError(f"{folder}: {CONFIG_FILE} has no base_model_name_or_path; give the backbone id")
    try:
        if multitask:
            prompt = DecomposedPrompt(t["prompt_embeddings"], list(tasks), r, t["prefix_task_cols"],
                                      t["prefix_task_rows"])
        else:  # rows l..2l-1 of a 2-submodule seq2seq adapter are never used by PEFT (module docstring)
            prompt = SoftPrompt(l, d, t["prompt_embeddings"][:l], list(tasks))
    except ValueError as e:
        raise PromptFileError(f"{folder}: {e}") from None
    return prompt, prompt.meta(backbone)


def _read_weights(folder: Path, keys: Sequence[str]) -> tuple[dict[str, torch.Tensor], object]:
    """The adapter's tensors (exactly `keys`) and the task names an mptune export stored (None if absent)."""
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*")]
        hint = f"; found {pickled}, pickle files are refused (re-save with safe_serialization=True)" if pickled else ""
        raise PromptFileError(f"{folder}: {WEIGHTS_FILE} missing{hint}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            md = f.metadata() or {}
            found = sorted(f.keys())
            if found != sorted(keys):
                raise PromptFileError(f"{weights}: tensors {found}, expected {sorted(keys)}")
            t = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError) as e:
        raise PromptFileError(f"{weights}: not a readable safetensors file ({e})") from None
    try:
        stored = json.loads(md.get("mptune_tasks", "null"))
    except json.JSONDecodeError:
        stored = None
    return t, stored


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        inside = sorted(p.parent.name for p in folder.glob(f"*/{CONFIG_FILE}"))
        hint = f"; it holds one adapter per task {inside}: import one of those folders" if inside else ""
        raise PromptFileError(f"{folder}: {CONFIG_FILE} missing (not a PEFT adapter folder?){hint}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptFileError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise PromptFileError(f"{path}: expected a JSON object")
    if cfg.get("peft_type") not in PEFT_TYPES:
        raise PromptFileError(f"{path}: peft_type is {cfg.get('peft_type')!r}, expected one of {sorted(PEFT_TYPES)}")
    if cfg.get("task_type") not in TASK_TYPES.values():
        raise PromptFileError(f"{path}: task_type {cfg.get('task_type')!r} is not one of {sorted(TASK_TYPES.values())}")
    for k in PEFT_TYPES[cfg["peft_type"]][1]:
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PromptFileError(f"{path}: {k} must be a positive integer, got {v!r}")
    return cfg
