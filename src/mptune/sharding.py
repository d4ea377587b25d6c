"""Sharding the frozen backbone over processes (FSDP2); no training loop here.

When the accelerate config is FSDP (or MPTUNE_SHARD_BACKBONE=1, e.g. to try it on
CPU), :func:`shard_frozen_backbone` shards the frozen model's transformer blocks
with FSDP2 ``fully_shard`` while the small trainable prompt stays replicated under
plain DDP (engine.py: its gradient is all-reduced; optimizer state is per process
and identical). Evaluation asks :func:`is_sharded` to keep every process making the
same number of passes.
"""

from __future__ import annotations

import logging
import os

import torch.nn as nn

from .errors import TrainingError

log = logging.getLogger(__name__)

SHARD_ENV = "MPTUNE_SHARD_BACKBONE"


def sharding_requested(accelerator) -> bool:
    """Shard the frozen backbone? Under an accelerate FSDP config (on CPU accelerate itself ignores
    FSDP, but its launcher still sets ACCELERATE_USE_FSDP), or MPTUNE_SHARD_BACKBONE=1."""
    if accelerator is None or accelerator.num_processes < 2:
        return False
    from accelerate.utils import DistributedType

    on = lambda k: os.environ.get(k, "").strip().lower() in {"1", "true", "yes"}  # noqa: E731
    return on(SHARD_ENV) or on("ACCELERATE_USE_FSDP") or accelerator.distributed_type == DistributedType.FSDP


def check_distributed_type(accelerator) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise TrainingError(
            "DeepSpeed is not supported by mptune's trainer: it would partition the small trainable prompt "
            "and leave the frozen backbone whole. To shard a backbone that does not fit one device use "
            "configs/accelerate/fsdp.yaml (FSDP2 shards the frozen blocks, the prompt stays replicated); "
            "see configs/accelerate/README.md.")


def shard_frozen_backbone(model: nn.Module, accelerator) -> int:
    """Shard a frozen HF model's transformer blocks over all processes with FSDP2.

    Blocks are the model's ``_no_split_modules`` classes (T5Block,
    LlamaDecoderLayer, ...). Embeddings, final norm and LM head stay replicated,
    so mptune can still embed input ids and prepend the prompt outside the
    model's forward. Each block's parameters are all-gathered just before it
    runs and freed after (also in backward, where only the prompt gets a
    gradient). Generation runs with ``synced_gpus`` so processes that finish
    early keep joining the collectives. Returns the number of sharded blocks.
    """
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard

    if any(p.requires_grad for p in model.parameters()):
        raise TrainingError("shard_frozen_backbone: the backbone must be frozen (no parameter requires grad)")
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if type(m).__name__ in names and not any(name.startswith(b + ".") for b, _ in blocks):
            blocks.append((name, m))
    if not blocks:
        raise TrainingError(f"cannot shard {type(model).__name__}: it names no transformer block class "
                            "(_no_split_modules); run it replicated (ddp config) instead")
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for _, m in blocks:
        fully_shard(m, mesh=mesh, reshard_after_forward=True)
    model._is_fsdp_managed_module = True  # transformers' generate() then uses synced_gpus
    model._mptune_sharded = True
    log.info("sharded %d %s blocks over %d processes", len(blocks), sorted(names), accelerator.num_processes)
    return len(blocks)


def is_sharded(model: nn.Module) -> bool:
    return bool(getattr(model, "_mptune_sharded", False))
