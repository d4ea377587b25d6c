"""The server's one adapter onto the backbone's shared-prefix fast path.

A frozen prompt's keys/values under causal attention do not depend on the input,
so the server computes them once per task (``compute``) and runs every mixed-task
batch against them (``score``, ``generate``). Everything the server needs from the
fast path goes through this class, so a change of the backbone's API touches only
this file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from ..backbone import Backbone

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, l, head_dim]


@dataclass
class PromptKV:
    """One task's prompt keys/values, ready to be a read-only prefix cache."""

    layers: KV

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


class PrefixAdapter:
    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @property
    def cached(self) -> bool:
        """True when prompt keys/values can be computed once and reused (decoder-only, fast path works)."""
        return self.backbone.uses_fast_prefix

    @torch.no_grad()
    def compute(self, prompts: torch.Tensor) -> list[PromptKV]:
        """prompts [m, l, d] -> one PromptKV per row (own storage, so each can be dropped alone)."""
        kv = self.backbone._prompt_kv(prompts.to(self.backbone.device, self.backbone.dtype))
        return [PromptKV([(k[i: i + 1].clone(), v[i: i + 1].clone()) for k, v in kv]) for i in range(prompts.shape[0])]

    def empty(self) -> PromptKV:
        """No prompt at all (zero-length prefix): the backbone on the input alone, same code path."""
        cfg = self.backbone.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        z = torch.zeros(1, heads, 0, dim, dtype=self.backbone.dtype, device=self.backbone.device)
        return PromptKV([(z, z) for _ in range(cfg.num_hidden_layers)])

    def usable(self, batch: dict) -> bool:
        """This batch can run against cached keys/values (every row has a source token)."""
        return self.cached and self.backbone._use_fast(batch["attention_mask"], batch.get("labels"))

    @torch.no_grad()
    def score(self, kvs: list[PromptKV], batch: dict) -> torch.Tensor:
        """Rank-classification scores [N] for a collate_choices batch whose task_index indexes `kvs`."""
        with self._prefix(kvs):
            return self.backbone._score_choices_fast(None, batch)

    @torch.no_grad()
    def generate(self, kvs: list[PromptKV], batch: dict, max_new_tokens: int) -> Optional[list[str]]:
        """Greedy texts from the cached prompts, or None where the model's generation config needs
        HF generate() (the caller then takes the plain path)."""
        if not self.backbone._plain_greedy_config():
            return None
        with self._prefix(kvs):
            return self.backbone._generate_fast(None, batch, max_new_tokens)

    @contextlib.contextmanager
    def _prefix(self, kvs: list[PromptKV]):
        """The fast path asks `_prefix_kv(prompts, task_index)` for every row's prompt keys/values;
        answer from the cache instead of running the prompts."""

        def gather(_prompts, task_index: torch.Tensor) -> KV:
            rows = task_index.tolist()
            if len(set(rows)) == 1:
                B = len(rows)
                return [(k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])) for k, v in kvs[rows[0]].layers]
            return [(torch.cat([kvs[r].layers[i][0] for r in rows]), torch.cat([kvs[r].layers[i][1] for r in rows]))
                    for i in range(len(kvs[rows[0]].layers))]

        self.backbone._prefix_kv = gather  # instance attribute: shadows the method for this call only
        try:
            yield
        finally:
            del self.backbone._prefix_kv
