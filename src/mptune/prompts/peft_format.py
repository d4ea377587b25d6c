"""Decomposed prompts <-> PEFT's MULTITASK_PROMPT_TUNING folders (peft >= 0.15, checked on 0.21).

PEFT's MultitaskPromptEmbedding computes, for a row with task id k,
    prompt = embedding.weight * (prefix_task_cols[k] @ prefix_task_rows[k])
which is mptune's P_k = P* ∘ (u_k v_k) with P* = embedding.weight,
u = prefix_task_cols [K, l, r] and v = prefix_task_rows [K, r, d]. Task ids are
indices into the prompt's task list, passed as ``task_ids=`` to PEFT's forward.

The folder PEFT's save_pretrained writes, reproduced here without importing peft:
* adapter_config.json: peft_type MULTITASK_PROMPT_TUNING, task_type SEQ_2_SEQ_LM or
  CAUSAL_LM, num_virtual_tokens l, token_dim d, num_tasks K, num_ranks r.
* adapter_model.safetensors: ``prompt_embeddings`` [l, d] (PEFT's key for
  embedding.weight), ``prefix_task_cols`` [K, l, r], ``prefix_task_rows`` [K, r, d];
  metadata {"format": "pt"}, plus the task names under "mptune_tasks" (PEFT ignores it).

num_transformer_submodules is written as 1. Left unset, PEFT defaults to 2 for
SEQ_2_SEQ_LM and then also prepends l virtual tokens to the *decoder* input;
mptune prompts only the encoder, so only 1 gives the same model. Importing a
2-submodule folder is refused for the same reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..utils import atomic_write_bytes, atomic_write_json
from .decomposed import DecomposedPrompt
from .io import PromptFileError, PromptMeta

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_TYPE = "MULTITASK_PROMPT_TUNING"
TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}  # mptune ModelKind value -> PEFT TaskType
KEYS = ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")


def peft_task_type(kind) -> str:
    """PEFT task_type for a backbone kind ("seq2seq"/"causal" or a ModelKind)."""
    kind = getattr(kind, "value", kind)
    if kind not in TASK_TYPES:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {sorted(TASK_TYPES)}")
    return TASK_TYPES[kind]


def export_peft(prompt: DecomposedPrompt, output_dir: str | os.PathLike, kind, base_model: str) -> Path:
    """Write a folder that ``PeftModel.from_pretrained(base, output_dir)`` loads."""
    out = Path(output_dir)
    config = {
        "peft_type": PEFT_TYPE,
        "task_type": peft_task_type(kind),
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "num_virtual_tokens": prompt.length,
        "token_dim": prompt.dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": None,
        "num_layers": None,
        "num_tasks": prompt.num_tasks,
        "num_ranks": prompt.rank,
        # RANDOM: loading must not look for a source state dict; the weights below replace the init anyway.
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_state_dict_path": None,
        "prompt_tuning_init_task": 0,
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "modules_to_save": None,
        "revision": None,
    }
    t = prompt.state_tensors()
    tensors = {"prompt_embeddings": t["shared"], "prefix_task_cols": t["task_u"], "prefix_task_rows": t["task_v"]}
    data = save(tensors, metadata={"format": "pt", "mptune_tasks": json.dumps(prompt.tasks)})
    atomic_write_bytes(out / WEIGHTS_FILE, data)
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def import_peft(folder: str | os.PathLike, tasks: Optional[Sequence[str]] = None,
                backbone: Optional[str] = None) -> tuple[DecomposedPrompt, PromptMeta]:
    """Read a PEFT multitask-prompt folder back. Task names: `tasks`, else the names an
    mptune export stored, else task0..task{K-1}. Backbone id: `backbone`, else the
    config's base_model_name_or_path. Only safetensors is read; nothing is unpickled."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptFileError(f"PEFT folder not found: {folder}")
    cfg = _read_config(folder)
    l, d, K, r = (cfg[k] for k in ("num_virtual_tokens", "token_dim", "num_tasks", "num_ranks"))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*")]
        hint = f"; found {pickled}, pickle files are refused (re-save with safe_serialization=True)" if pickled else ""
        raise PromptFileError(f"{folder}: {WEIGHTS_FILE} missing{hint}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            md = f.metadata() or {}
            found = sorted(f.keys())
            if found != sorted(KEYS):
                raise PromptFileError(f"{weights}: tensors {found}, expected {sorted(KEYS)} (PEFT multitask prompt)")
            t = {k: f.get_tensor(k) for k in KEYS}
    except (SafetensorError, OSError) as e:
        raise PromptFileError(f"{weights}: not a readable safetensors file ({e})") from None

    # PEFT defaults num_transformer_submodules to 2 for seq2seq; the tensors say what was trained.
    subs = cfg.get("num_transformer_submodules") or (2 if cfg["task_type"] == "SEQ_2_SEQ_LM" else 1)
    if subs != 1:
        raise PromptFileError(f"{folder}: num_transformer_submodules={subs}: this adapter also prompts the decoder "
                              "(PEFT's seq2seq default); mptune prompts only the encoder, so it cannot be imported")
    want = {"prompt_embeddings": (l, d), "prefix_task_cols": (K, l, r), "prefix_task_rows": (K, r, d)}
    for k, shape in want.items():
        if tuple(t[k].shape) != shape or not t[k].is_floating_point():
            raise PromptFileError(f"{weights}: {k} is {tuple(t[k].shape)} {t[k].dtype}, expected a float tensor "
                                  f"{shape} from {CONFIG_FILE} (l={l}, d={d}, num_tasks={K}, num_ranks={r})")
        if not torch.isfinite(t[k]).all():
            raise PromptFileError(f"{weights}: {k} holds NaN/inf")

    if tasks is None:
        try:
            stored = json.loads(md.get("mptune_tasks", "null"))
        except json.JSONDecodeError:
            stored = None
        ok = isinstance(stored, list) and len(stored) == K and all(isinstance(x, str) for x in stored)
        tasks = stored if ok else [f"task{k}" for k in range(K)]
    if len(tasks) != K:
        raise PromptFileError(f"{folder}: {len(tasks)} task names given for an adapter with num_tasks={K}")
    backbone = backbone or cfg.get("base_model_name_or_path")
    if not isinstance(backbone, str) or not backbone:
        raise PromptFileError(f"{folder}: {CONFIG_FILE} has no base_model_name_or_path; give the backbone id")
    try:
        prompt = DecomposedPrompt(t["prompt_embeddings"], list(tasks), r, t["prefix_task_cols"], t["prefix_task_rows"])
    except ValueError as e:
        raise PromptFileError(f"{folder}: {e}") from None
    return prompt, prompt.meta(backbone)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise PromptFileError(f"{folder}: {CONFIG_FILE} missing (not a PEFT adapter folder?)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptFileError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise PromptFileError(f"{path}: expected a JSON object")
    if cfg.get("peft_type") != PEFT_TYPE:
        raise PromptFileError(f"{path}: peft_type is {cfg.get('peft_type')!r}, expected {PEFT_TYPE!r}")
    if cfg.get("task_type") not in TASK_TYPES.values():
        raise PromptFileError(f"{path}: task_type {cfg.get('task_type')!r} is not one of {sorted(TASK_TYPES.values())}")
    for k in ("num_virtual_tokens", "token_dim", "num_tasks", "num_ranks"):
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PromptFileError(f"{path}: {k} must be a positive integer, got {v!r}")
    return cfg
