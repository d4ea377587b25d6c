"""The server's one adapter onto the backbone's shared-prefix fast path (mptune.fastpath).

A frozen prompt's keys/values under causal attention do not depend on the input, so
the server computes them once per task (``compute``, via Backbone.prefix) and keeps
them; a mixed-task batch gets one table of its tasks' keys/values (``table``), which
Backbone.score_choices / generate take in place of a prompt table (rows that cannot
take the fast path fall back to the prompts the table carries). Everything the
server needs from the fast path goes through this class.
"""

from __future__ import annotations

import torch

from ..backbone import Backbone
from ..fastpath import PrefixKV, cpu_sdpa_gqa


class PrefixAdapter:
    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.sdpa_gqa = cpu_sdpa_gqa(backbone.device)  # a CPU server: GQA keys/values not repeated per head

    @property
    def cached(self) -> bool:
        """True when prompt keys/values can be computed once and reused (decoder-only, fast path works)."""
        return self.backbone.uses_fast_prefix

    @torch.no_grad()
    def compute(self, prompts: torch.Tensor) -> list[PrefixKV]:
        """prompts [m, l, d] -> one PrefixKV per prompt, each with its own storage (dropped alone)."""
        kv = self.backbone.prefix(prompts.to(self.backbone.device))
        return [kv.select([i]) for i in range(prompts.shape[0])]

    @staticmethod
    def table(kvs: list[PrefixKV]) -> PrefixKV:
        """One table of several tasks' keys/values (row i = kvs[i]) for a mixed-task batch."""
        return kvs[0] if len(kvs) == 1 else PrefixKV.cat(kvs)

    def empty(self) -> PrefixKV:
        """No prompt at all (a zero-length prefix): the backbone on the input alone, same code path."""
        cfg, bb = self.backbone.model.config, self.backbone
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        z = torch.zeros(1, heads, 0, dim, dtype=bb.dtype, device=bb.device)
        return PrefixKV([(z, z) for _ in range(cfg.num_hidden_layers)],
                        torch.zeros(1, 0, bb.hidden_size, device=bb.device))
