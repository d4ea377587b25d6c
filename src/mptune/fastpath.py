"""Shared-prefix fast path for decoder-only backbones: a frozen prompt's keys/values, once.

Under causal attention the hidden states at the prompt's positions 0..l-1 do not depend
on the text that follows, so a prompt's per-layer keys/values can be computed once (per
task, not per row) and every text row run with them as a read-only prefix cache
(attention mask [ones(l) ; mask], positions continuing from l as in the plain
[prompt ; text] pass of kinds.py's causal layout). Same logits, hidden states and prompt
gradients as the plain path, at about the cost of the text alone. They do not depend on
the input at all, so a caller may compute them once and reuse them across batches
(evaluation does per call; a server can keep them resident per task).

Shapes: K prompts (tasks), l prompt length, d width, B rows, S text tokens, h key/value
heads, hd head dim, N choice rows, T target tokens, V vocabulary.

    kv = prompt_kv(bb, prompts)             # prompts [K, l, d] -> PrefixKV, per layer [K, h, l, hd]
    PrefixKV.cat([kv_a, kv_b]), kv.select([i])   # assemble / slice a table of tasks
    score_choices(bb, kv, batch)            # rank classification -> [N] sums of log p(choice tokens)
                                            #   (each source and all its choices in one row, a tree mask)
    generate_ids(bb, kv, batch, n)          # greedy decoding -> [B, <= n] token ids
    run_text(bb, kv, task_index, embeds, mask)   # any text after its prompt -> HF output
    cpu_sdpa_gqa(device)                    # a CPU process: HF's sdpa takes GQA keys/values unrepeated
batch["task_index"] [B] picks each row's prompt in `kv`. Every text row needs >= 1 token
(Backbone falls back to the plain path otherwise). `bb` is a Backbone (backbone.py).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from .kinds import IGNORE, position_ids, sequence_logprob

if TYPE_CHECKING:
    from .backbone import Backbone

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [rows, h, positions, hd]


@dataclass
class PrefixKV:
    """A prompt table's keys/values: layers[i] = (keys, values) [K, h, l, hd], and the prompts
    [K, l, d] they were computed from (rows that cannot take the fast path run plain with them)."""

    layers: Layers
    prompts: torch.Tensor

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    @property
    def length(self) -> int:
        return self.prompts.shape[1]

    @property
    def nbytes(self) -> int:
        """Memory held, keys/values and prompts (a server's residency budget counts this)."""
        return sum(k.nbytes + v.nbytes for k, v in self.layers) + self.prompts.nbytes

    def rows(self, task_index: torch.Tensor) -> Layers:
        """Each row's prompt keys/values [B, h, l, hd] (differentiable; a view for a one-prompt table)."""
        B = task_index.shape[0]
        if self.num_prompts == 1:  # no copy: the cache concatenation materialises it anyway
            return [(k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])) for k, v in self.layers]
        return [(k.index_select(0, task_index), v.index_select(0, task_index)) for k, v in self.layers]

    def select(self, index: Sequence[int] | torch.Tensor) -> "PrefixKV":
        """The table of prompts `index` (in that order)."""
        i = torch.as_tensor(index, dtype=torch.long, device=self.prompts.device)
        return PrefixKV([(k.index_select(0, i), v.index_select(0, i)) for k, v in self.layers],
                        self.prompts.index_select(0, i))

    @staticmethod
    def cat(parts: Sequence["PrefixKV"]) -> "PrefixKV":
        """One table of all parts' prompts, in order (e.g. the tasks of a mixed batch)."""
        layers = [(torch.cat([p.layers[j][0] for p in parts]), torch.cat([p.layers[j][1] for p in parts]))
                  for j in range(len(parts[0].layers))]
        return PrefixKV(layers, torch.cat([p.prompts for p in parts]))


def prompt_kv(bb: "Backbone", prompts: torch.Tensor) -> PrefixKV:
    """Run the prompts [K, l, d] alone (positions 0..l-1) and keep each layer's keys/values.
    Differentiable w.r.t. `prompts` unless called under no_grad (do that to keep them)."""
    from transformers import DynamicCache

    rows = prompts.to(bb.dtype)
    n, l = rows.shape[:2]
    cache = DynamicCache(config=bb.model.config)
    pos = torch.arange(l, device=rows.device).expand(n, l)
    mask = torch.ones(n, l, dtype=torch.long, device=rows.device)
    # HF drops caches inside checkpointed layers, so the prompt pass (K x l positions) is never
    # checkpointed; gradient checkpointing still applies to the text pass.
    with _checkpointing_off(bb):
        bb.model.base_model(inputs_embeds=rows, attention_mask=mask, position_ids=pos, use_cache=True,
                            **{_cache_kw(type(bb.model)): cache})
    return PrefixKV([(layer.keys, layer.values) for layer in cache.layers], prompts)


def prompt_kv_for(bb: "Backbone", prompts: torch.Tensor, task_index: torch.Tensor) -> tuple[PrefixKV, torch.Tensor]:
    """Keys/values of only the tasks in `task_index` [B] (each run once) and the rows' index into them."""
    tasks, inv = torch.unique(task_index, return_inverse=True)
    return prompt_kv(bb, prompts.index_select(0, tasks)), inv


def keep_last(n: int, length: int, device) -> torch.Tensor:
    """HF's logits_to_keep for the last n of `length` positions, given as positions: HF then gathers the
    hidden states into a contiguous [B, n, d] copy, which the LM head multiplies as one matrix. (An int
    keeps a strided view, which torch multiplies by a frozen head as B products, reading the head's
    weight once per row: ~4x the time on CPU.)"""
    return torch.arange(max(length - n, 0), length, device=device)


def run_text(bb: "Backbone", kv: PrefixKV, task_index: torch.Tensor, embeds: torch.Tensor,
             attention_mask: torch.Tensor, **kw):
    """Text rows embeds [B, S, d] (mask [B, S], left-padded) after their prompts kv.rows(task_index);
    returns the model's output over the S text positions. HF keyword arguments pass through."""
    mask = torch.cat([attention_mask.new_ones(embeds.shape[0], kv.length), attention_mask], dim=1)
    return _extend(bb, kv.rows(task_index), embeds, mask, **kw)


DENSE_MASK_KERNELS = ("sdpa", "eager")  # attention kernels that take any 4D additive mask


@torch.no_grad()
def score_choices(bb: "Backbone", kv: PrefixKV, batch: dict) -> torch.Tensor:
    """Sum of log-probs of every choice's tokens: [N]. batch = kinds' choices layout: sources
    input_ids/attention_mask [B, S], task_index [B]; labels [N, T] right-padded, row_example [N].
    One row per example under a 4D mask where the backbone takes it (Backbone.tree_choices), else
    two passes."""
    return (_score_tree if bb.tree_choices else _score_two_pass)(bb, kv, batch)


@torch.no_grad()
def _score_tree(bb: "Backbone", kv: PrefixKV, batch: dict) -> torch.Tensor:
    return score_tree(bb, kv, batch)


def score_tree(bb: "Backbone", kv: PrefixKV, batch: dict) -> torch.Tensor:
    """One pass, one row per example (tree attention): [source ; choice 0 ; choice 1 ; ...], each choice
    a block of W = T - 1 slots holding its tokens but the last (which predicts nothing). A 4D mask lets a
    choice's tokens see the prompt, the real source tokens and the earlier tokens of their own choice,
    at the positions that follow the source: each choice scores as its own [prompt ; source ; choice]
    row would, while the prompt's and source's keys/values are shared, never copied per choice.
    Differentiable (the label-restricted training loss calls it with grad through `kv`)."""
    ids, am, labels, ex = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["row_example"]
    (B, S), (N, T), l, dev = ids.shape, labels.shape, kv.length, ids.device
    W = T - 1
    slot = (torch.nn.functional.one_hot(ex, B).cumsum(0) - 1).gather(1, ex[:, None])[:, 0]  # [N] # in its example
    C = int(slot.max()) + 1 if N else 0
    M, Q = C * W, S + C * W
    real = labels[:, :W] != IGNORE  # [N, W]
    tok = ids.new_full((B, C, W), bb.pad_id)
    tok[ex, slot] = labels[:, :W].masked_fill(~real, bb.pad_id)
    seen = torch.zeros(B, C, W, dtype=torch.bool, device=dev)
    seen[ex, slot] = real
    seen = torch.cat([am.bool(), seen.view(B, M)], 1)  # [B, Q] keys that exist
    group = torch.cat([torch.full((S,), -1, device=dev), torch.arange(C, device=dev).repeat_interleave(W)])  # [Q]
    col = torch.arange(Q, device=dev)
    tree = (col[None] <= col[:, None]) & ((group[None] == -1) | (group[None] == group[:, None]))  # [Q, Q]; -1: source
    see = seen[:, None] & tree | torch.eye(Q, dtype=torch.bool, device=dev)  # [B, Q, Q]; a pad sees itself
    see = torch.cat([see.new_ones(B, Q, l), see], 2)[:, None]  # [B, 1, Q, l + Q]: every prompt position
    mask = torch.zeros(see.shape, dtype=bb.dtype, device=dev).masked_fill_(~see, torch.finfo(bb.dtype).min)
    pos = position_ids(torch.cat([am.new_ones(B, l), am], 1))[:, l:]  # [B, S] as the plain row's
    pos = torch.cat([pos, pos[:, -1:] + 1 + torch.arange(W, device=dev).repeat(C)], 1)  # [B, Q]
    checkpointing = bb.gradient_checkpointing and bb.model.training and torch.is_grad_enabled()
    with _checkpoint_with_cache(bb, checkpointing):
        out = bb.model(inputs_embeds=bb.embed(torch.cat([ids, tok.view(B, M)], 1)), attention_mask=mask,
                       position_ids=pos, use_cache=not checkpointing, logits_to_keep=keep_last(M + 1, Q, dev),
                       **{_cache_kw(type(bb.model)): _prefix_cache(kv.layers, batch["task_index"])})
    # logits [B, M + 1, V]: column 0 (the source's last token) predicts every choice's first token,
    # column 1 + slot * W + t the choice's token t + 1
    at = torch.cat([ex.new_zeros(N, 1), 1 + slot[:, None] * W + torch.arange(W, device=dev)], 1) + ex[:, None] * (M + 1)
    return sequence_logprob(out.logits.flatten(0, 1).index_select(0, at.flatten()).view(N, T, -1), labels)


def _score_two_pass(bb: "Backbone", kv: PrefixKV, batch: dict) -> torch.Tensor:
    """score_choices without a 4D mask (flash / flex attention kernels take none): each source runs once
    after its prompt (keeping its cache); its last position predicts every choice's first token. The
    choices' other tokens run together against their source's cache (gathered per choice row)."""
    from transformers import DynamicCache

    ids, am, labels, ex = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["row_example"]
    B, l = ids.shape[0], kv.length
    mask = torch.cat([am.new_ones(B, l), am], dim=1)  # [B, l + S]
    cache = DynamicCache(ddp_cache_data=kv.rows(batch["task_index"]))
    out = bb.model(inputs_embeds=bb.embed(ids), attention_mask=mask, position_ids=position_ids(mask)[:, l:],
                   use_cache=True, logits_to_keep=keep_last(1, ids.shape[1], ids.device),
                   **{_cache_kw(type(bb.model)): cache})
    logits = out.logits[:, -1:].index_select(0, ex)  # [N, 1, V]: each choice's first token
    if labels.shape[1] > 1:
        cont = labels[:, :-1]  # [N, T - 1]
        real = cont != IGNORE
        full = torch.cat([mask.index_select(0, ex), real.to(mask.dtype)], dim=1)  # [N, l + S + T - 1]
        pre = [(layer.keys.index_select(0, ex), layer.values.index_select(0, ex)) for layer in cache.layers]
        nxt = _extend(bb, pre, bb.embed(cont.masked_fill(~real, bb.pad_id)), full).logits
        logits = torch.cat([logits, nxt], dim=1)  # [N, T, V]
    return sequence_logprob(logits, labels)


@torch.no_grad()
def generate_ids(bb: "Backbone", kv: PrefixKV, batch: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding (plain greedy search, the same tokens as HF generate()) of the left-padded
    sources input_ids/attention_mask [B, S] after their prompts: new token ids [B, <= max_new_tokens],
    the pad id after a row's EOS."""
    from transformers import DynamicCache

    tok, cache_kw = bb.tokenizer, _cache_kw(type(bb.model))
    ids, am = batch["input_ids"], batch["attention_mask"]
    B, l = ids.shape[0], kv.length
    mask = torch.cat([am.new_ones(B, l), am], dim=1)
    cache = DynamicCache(ddp_cache_data=kv.rows(batch["task_index"]))
    pos = position_ids(mask)[:, l:]
    out = bb.model(inputs_embeds=bb.embed(ids), attention_mask=mask, position_ids=pos, use_cache=True,
                   logits_to_keep=keep_last(1, ids.shape[1], ids.device), **{cache_kw: cache})
    nxt_pos = pos[:, -1:] + 1
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else 0
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    new: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new.append(nxt)
        if eos is not None:
            done |= nxt == eos
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        out = bb.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=nxt_pos, use_cache=True,
                       logits_to_keep=1, **{cache_kw: cache})
        nxt_pos = nxt_pos + 1
    return torch.stack(new, 1) if new else ids.new_zeros(B, 0)


def plain_greedy_config(model) -> bool:
    """generate_ids is plain greedy search; models whose generation config asks for logits processing
    (repetition penalty, suppressed tokens, ...) keep HF generate()."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return True
    return ((gc.repetition_penalty in (None, 1.0)) and not gc.no_repeat_ngram_size and not gc.bad_words_ids
            and not gc.suppress_tokens and not gc.begin_suppress_tokens and gc.forced_bos_token_id is None
            and gc.forced_eos_token_id is None and not gc.min_length and not gc.min_new_tokens
            and not getattr(gc, "sequence_bias", None))


SDPA_GQA_FLAG = "TRANSFORMERS_SDPA_FORCE_GQA"


def cpu_sdpa_gqa(device: torch.device) -> bool:
    """Let HF's sdpa attention hand GQA keys/values [B, h, P, hd] to torch as they are (enable_gqa) when a
    mask is given, not repeated per query head: HF does so only under TRANSFORMERS_SDPA_FORCE_GQA=1,
    as CUDA's fused kernels take no mask with GQA; torch's CPU kernel does (the same logits, bit for bit;
    a prompt's keys/values are not copied h_q / h times per layer). Sets the flag for this process on
    CPU unless the user set it or torch lacks enable_gqa; returns whether it is on."""
    if device.type == "cpu" and SDPA_GQA_FLAG not in os.environ:
        q, kv, mask = torch.zeros(1, 2, 1, 4), torch.zeros(1, 1, 1, 4), torch.ones(1, 1, 1, 1, dtype=torch.bool)
        try:
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, enable_gqa=True)
        except (TypeError, RuntimeError):  # torch < 2.5
            return False
        os.environ[SDPA_GQA_FLAG] = "1"
    return os.environ.get(SDPA_GQA_FLAG) == "1"


def cache_problem(model) -> Optional[str]:
    """Why this model's cache cannot hold a shared prefix (sliding-window or hybrid layers), or None."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
        return f"{type(e).__name__}: {e}"
    if any(type(x) is not DynamicLayer for x in layers):
        return "its cache is not plain full attention (sliding-window or hybrid layers)"
    return None


# -- internals -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cache_kw(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x renamed it


def _extend(bb: "Backbone", prefix: Layers, embeds: torch.Tensor, mask: torch.Tensor, **kw):
    """Text embeds [B, S, d] attending to the read-only prefix keys/values [B, h, P, hd]; mask [B, P + S],
    positions continue the prefix's."""
    P = prefix[0][0].shape[-2]
    pos = position_ids(mask)[:, P:]
    checkpointing = bb.gradient_checkpointing and bb.model.training and torch.is_grad_enabled()
    with _checkpoint_with_cache(bb, checkpointing):
        return bb.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=not checkpointing,
                        **{_cache_kw(type(bb.model)): _prefix_cache(prefix)}, **kw)


@contextlib.contextmanager
def _checkpointing_off(bb: "Backbone"):
    was = bb.model.training
    if was and bb.gradient_checkpointing:
        bb.model.train(False)  # HF checkpoints only in train mode; dropout is zeroed then (keep: plain path)
    try:
        yield
    finally:
        bb.model.train(was)


@contextlib.contextmanager
def _checkpoint_with_cache(bb: "Backbone", on: bool):
    """Under gradient checkpointing, let HF's checkpointed layers keep the prefix cache: it is
    read-only, so the backward replay sees the same keys/values (the flag HF documents for
    layers that only read the cache)."""
    layers = [m for m in bb.model.modules() if on and getattr(m, "gradient_checkpointing", False)
              and hasattr(type(m), "_can_checkpoint_with_cache")]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache  # back to the class default


@functools.lru_cache(maxsize=None)
def _prefix_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """One layer's prefix keys/values, read-only: attention sees [prefix ; new] and nothing is
        stored, so a gradient-checkpointing replay or another continuation sees the same prefix.
        keys/values [B, h, P, hd], one per row; or a table [K, h, P, hd] and `index` [B], each row's
        (without grad the rows are gathered straight into [prefix ; new], one copy, not two)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, index: Optional[torch.Tensor] = None):
            super().__init__()
            self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True
            self.index = index

        def update(self, key_states, value_states, *args, **kwargs):
            return self._join(self.keys, key_states), self._join(self.values, value_states)

        def _join(self, prefix: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            if self.index is None:
                return torch.cat([prefix, new], dim=-2)
            if torch.is_grad_enabled() and (prefix.requires_grad or new.requires_grad):  # training: autograd's way
                return torch.cat([prefix.index_select(0, self.index), new], dim=-2)
            P = prefix.shape[-2]
            out = new.new_empty(*new.shape[:2], P + new.shape[2], new.shape[3])
            torch.index_select(prefix, 0, self.index, out=out[:, :, :P])
            out[:, :, P:] = new
            return out

    return PrefixLayer


def _prefix_cache(layers: Layers, index: Optional[torch.Tensor] = None):
    from transformers.cache_utils import Cache

    layer = _prefix_layer_class()
    return Cache(layers=[layer(k, v, index) for k, v in layers])
