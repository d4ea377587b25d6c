"""The frozen backbone: an unmodified Hugging Face model fed a soft-prompt prefix.

Prompts enter through ``inputs_embeds`` only (as PEFT does); no model code is
patched. Two kinds are supported:

* seq2seq (T5, Flan-T5): encoder input = [prompt ; source], decoder predicts the target.
* causal (Llama, SmolLM2, Gemma, Qwen, GPT-2): input = [prompt ; pad* ; source ; target].
  The prompt always sits at positions 0..l-1 and the text is *left*-padded behind
  it, so targets are the last tokens of every row and position ids (cumsum of the
  mask) continue from l. Keeping the prompt at a fixed offset is what lets the
  fast path compute the prompt's keys/values once per task.

Shared-prefix fast path (decoder-only backbones, ``model.fast_prefix``, on by default):
under causal attention the prompt's hidden states at positions 0..l-1 do not depend
on the input, so the prompt is run once per *distinct task in the batch* (with
gradient), its per-layer keys/values are gathered to the B rows (index_select,
differentiable) and the input tokens run with them as a read-only prefix cache
(attention mask [ones(l) ; mask], positions continuing from l as in the plain path).
Same logits, hidden states and prompt gradients as the plain path, at about the
cost of the input alone. Rank classification also shares each source across its
choices; generation prefills the prompt once per task and decodes greedily with
the cache. The first use checks the fast path against the plain path on a tiny
probe and falls back (with a warning) where a model does not support it (sliding
window or hybrid caches, models that drop the cache under gradient checkpointing,
remote code). Seq2seq backbones (T5) always take the plain path: the encoder is
bidirectional, so the prompt's states depend on the input.

All prompt arguments are a table ``prompts [T, l, d]`` plus ``task_index [B]``:
each row gathers its own task's prompt, so a batch that mixes tasks is one pass.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .errors import MissingFileError

log = logging.getLogger(__name__)

IGNORE = -100


class ModelKind(str, Enum):
    SEQ2SEQ = "seq2seq"
    CAUSAL = "causal"


@dataclass
class TargetOutput:
    """Backbone outputs aligned with the target tokens.

    logits: [B, T, V] predicting labels[:, t]; labels: [B, T] (IGNORE where no target);
    hidden: [B, T, d] final-layer hidden states at those positions (decoder for T5), or None;
    source_hidden: [B, S, d] final-layer states at the text positions after the prompt
    (encoder for T5, the LM for causal models; pads per batch["attention_mask"]), or None.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    hidden: Optional[torch.Tensor] = None
    source_hidden: Optional[torch.Tensor] = None


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_source(cfg: ModelConfig) -> tuple[str, Optional[str]]:
    """(name_or_folder, gguf_file): a path to a .gguf file is split into folder + file name."""
    name, gguf = cfg.name, cfg.gguf_file
    p = Path(name)
    if name.endswith(".gguf"):
        if not p.is_file():
            raise MissingFileError(f"model.name: GGUF file not found: {name}")
        return str(p.parent), p.name
    # A Hub id is "name" or "org/name"; anything else that is meant as a path (absolute, ./ ../ ~, or
    # deeper than org/name) must exist here, else transformers reports a confusing "Repo id" error.
    looks_local = p.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not p.expanduser().exists():
        raise MissingFileError(f"model.name: local model folder not found: {name} "
                                f"(a Hugging Face Hub id has the form 'org/name')")
    return str(p.expanduser()) if looks_local else name, gguf


def load_backbone(cfg: ModelConfig) -> "Backbone":
    """Load model + tokenizer from a Hub id, a local folder or a GGUF file, frozen."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    name, gguf = resolve_model_source(cfg)
    kw = dict(trust_remote_code=cfg.trust_remote_code)
    if gguf:
        kw["gguf_file"] = gguf
    hf_config = AutoConfig.from_pretrained(name, **kw)
    cls = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
    mkw = dict(kw, dtype=_DTYPES[cfg.dtype])
    if cfg.attn_implementation:
        mkw["attn_implementation"] = cfg.attn_implementation
    model = cls.from_pretrained(name, **mkw)
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    return Backbone(model, tokenizer, name=cfg.name, gradient_checkpointing=cfg.gradient_checkpointing,
                    fast_prefix=cfg.fast_prefix)


class Backbone(nn.Module):
    """A frozen HF model plus its tokenizer; forward passes take a prompt table."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "", gradient_checkpointing: bool = False,
                 fast_prefix: bool = True):
        super().__init__()
        self.fast_prefix = fast_prefix
        self._fast_ok: Optional[bool] = None  # decided by a probe on first use
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x renamed it
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.kind = ModelKind.SEQ2SEQ if model.config.is_encoder_decoder else ModelKind.CAUSAL
        if tokenizer.pad_token_id is None:  # Llama-style tokenizers: pad with EOS (masked anyway)
            tokenizer.pad_token = tokenizer.eos_token
        self.model.requires_grad_(False)
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            # HF only checkpoints in training mode; zero every dropout so the frozen
            # backbone stays deterministic while in that mode.
            for m in self.model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone is frozen: eval mode (no dropout) unless checkpointing needs train mode.
        super().train(mode)
        self.model.train(mode and self.gradient_checkpointing)
        return self

    # -- basics -----------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings exactly as the model expects them in ``inputs_embeds``.

        Models that scale embeddings inside the embedding module (Gemma 3) scale
        here too; models that scale in forward (Gemma) scale prompt and text alike.
        """
        return self.model.get_input_embeddings()(input_ids)

    def _with_prompt(self, prompts: torch.Tensor, task_index: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, l + S, d] embeddings and [B, l + S] mask; prompts [T, l, d], task_index [B]."""
        rows = prompts.to(self.dtype).index_select(0, task_index)  # [B, l, d]
        emb = torch.cat([rows, self.embed(input_ids)], dim=1)
        mask = torch.cat([attention_mask.new_ones(rows.shape[:2]), attention_mask], dim=1)
        return emb, mask

    @staticmethod
    def _position_ids(mask: torch.Tensor) -> torch.Tensor:
        # Same rule as transformers' generate(): pads get a dummy position.
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)

    # -- teacher-forced forward --------------------------------------------
    def forward(self, prompts: torch.Tensor, batch: dict, hidden: bool = False) -> TargetOutput:
        """Teacher-forced pass; returns target-aligned logits (and hidden states if asked)."""
        # (every row its own task, e.g. batch size 1: nothing to share, one pass is cheaper than two)
        if (self._use_fast(batch["attention_mask"], batch["labels"])
                and torch.unique(batch["task_index"]).numel() < batch["task_index"].numel()):
            return self._forward_fast(prompts, batch, hidden)
        return self._forward_plain(prompts, batch, hidden)

    def _forward_plain(self, prompts: torch.Tensor, batch: dict, hidden: bool = False) -> TargetOutput:
        emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        if self.kind == ModelKind.SEQ2SEQ:
            dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            out = self.model(inputs_embeds=emb, attention_mask=mask, decoder_input_ids=dec_in,
                             output_hidden_states=hidden, use_cache=False)
            if not hidden:
                return TargetOutput(out.logits, labels)
            l = emb.shape[1] - batch["input_ids"].shape[1]
            return TargetOutput(out.logits, labels, out.decoder_hidden_states[-1], out.encoder_last_hidden_state[:, l:])
        T = labels.shape[1]
        out = self.model(inputs_embeds=emb, attention_mask=mask, position_ids=self._position_ids(mask),
                         output_hidden_states=hidden, use_cache=False, logits_to_keep=T + 1)
        # logits at position p predict token p+1: the last T+1 positions cover every target.
        logits = out.logits[:, -(T + 1):-1]
        if not hidden:
            return TargetOutput(logits, labels)
        last, l = out.hidden_states[-1], emb.shape[1] - batch["input_ids"].shape[1]
        return TargetOutput(logits, labels, last[:, -(T + 1):-1], last[:, l:])

    # -- rank classification -------------------------------------------------
    @torch.no_grad()
    def score_choices(self, prompts: torch.Tensor, batch: dict) -> torch.Tensor:
        """Sum of target-token log-probs for every (example, choice) row: returns [N].

        seq2seq batch: input_ids/attention_mask [B, S] (encoded once), labels [N, T],
        row_example [N] (which example each choice row belongs to), task_index [B].
        causal batch: one row per (example, choice): input_ids [N, S], labels [N, T], task_index [N].
        """
        if self.kind == ModelKind.SEQ2SEQ:
            emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
            enc = self.model.get_encoder()(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            idx = batch["row_example"]
            labels = batch["labels"]
            dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            out = self.model(encoder_outputs=(enc.index_select(0, idx),), attention_mask=mask.index_select(0, idx),
                             decoder_input_ids=dec_in, use_cache=False)
            return sequence_logprob(out.logits, labels)
        if self._use_fast(batch["attention_mask"], batch["labels"]):
            return self._score_choices_fast(prompts, batch)
        out = self._forward_plain(prompts, batch)
        return sequence_logprob(out.logits, out.labels)

    # -- generation ----------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy decoding; batch holds the (left-padded for causal) source only."""
        if self._use_fast(batch["attention_mask"]) and self._plain_greedy_config():
            return self._generate_fast(prompts, batch, max_new_tokens)
        emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
        tok = self.tokenizer
        out = self.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
        # With inputs_embeds, generate() returns only new tokens (plus T5's decoder start).
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    # -- shared-prefix fast path (decoder-only) ------------------------------
    @property
    def uses_fast_prefix(self) -> bool:
        """True when the shared-prefix fast path is on and works for this model (probed once)."""
        if not self.fast_prefix or self.kind != ModelKind.CAUSAL:
            return False
        if self._fast_ok is None:
            self._fast_ok = self._probe_fast_prefix()
        return self._fast_ok

    def _use_fast(self, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None) -> bool:
        """Fast path for this batch: every row needs >= 1 source token (its last position predicts the
        first target token; with an empty source that position would be inside the prompt)."""
        if not self.uses_fast_prefix:
            return False
        n_tgt = (labels != IGNORE).sum(1) if labels is not None else 0
        return bool(((attention_mask.sum(1) - n_tgt) > 0).all())

    def _prefix_kv(self, prompts: torch.Tensor, task_index: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer prompt keys/values for every row [B, kv_heads, l, head_dim], computed once per
        distinct task in `task_index` (differentiable w.r.t. `prompts`)."""
        tasks, inv = torch.unique(task_index, return_inverse=True)
        kv = self._prompt_kv(prompts.to(self.dtype).index_select(0, tasks))
        B = task_index.shape[0]
        if tasks.numel() == 1:  # no copy: the cache concatenation materialises it anyway
            return [(k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])) for k, v in kv]
        return [(k.index_select(0, inv), v.index_select(0, inv)) for k, v in kv]

    def _prompt_kv(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the prompt rows [T', l, d] alone (positions 0..l-1) and return each layer's keys/values."""
        from transformers import DynamicCache

        n, l = rows.shape[:2]
        cache = DynamicCache(config=self.model.config)
        pos = torch.arange(l, device=rows.device).expand(n, l)
        mask = torch.ones(n, l, dtype=torch.long, device=rows.device)
        # HF drops caches inside checkpointed layers, so the prompt pass (T' x l positions) is never
        # checkpointed; gradient checkpointing still applies to the input pass.
        with self._checkpointing_off():
            self.model.base_model(inputs_embeds=rows, attention_mask=mask, position_ids=pos, use_cache=True,
                                  **{self._cache_kw: cache})
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _run_with_prefix(self, kv: list, embeds: torch.Tensor, mask: torch.Tensor, **kw):
        """The input tokens [B, S, d] attending to the read-only prefix `kv`; mask is [B, l + S]."""
        l = kv[0][0].shape[-2]
        pos = self._position_ids(mask)[:, l:]
        checkpointing = self.gradient_checkpointing and self.model.training and torch.is_grad_enabled()
        with self._checkpoint_with_cache(checkpointing):
            return self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                              use_cache=not checkpointing, **{self._cache_kw: _prefix_cache(kv)}, **kw)

    @contextlib.contextmanager
    def _checkpointing_off(self):
        was = self.model.training
        if was and self.gradient_checkpointing:
            self.model.train(False)  # HF checkpoints only in training mode; dropout is zeroed anyway
        try:
            yield
        finally:
            self.model.train(was)

    @contextlib.contextmanager
    def _checkpoint_with_cache(self, on: bool):
        """Under gradient checkpointing, let HF's checkpointed layers keep the prefix cache: it is
        read-only, so the backward replay sees the same keys/values (the flag HF documents for
        layers that only read the cache)."""
        layers = [m for m in self.model.modules() if on and getattr(m, "gradient_checkpointing", False)
                  and hasattr(type(m), "_can_checkpoint_with_cache")]
        for m in layers:
            m._can_checkpoint_with_cache = True
        try:
            yield
        finally:
            for m in layers:
                del m._can_checkpoint_with_cache  # back to the class default

    def _forward_fast(self, prompts: torch.Tensor, batch: dict, hidden: bool = False) -> TargetOutput:
        ids, labels = batch["input_ids"], batch["labels"]
        kv = self._prefix_kv(prompts, batch["task_index"])
        l, T = kv[0][0].shape[-2], labels.shape[1]
        mask = torch.cat([batch["attention_mask"].new_ones(ids.shape[0], l), batch["attention_mask"]], dim=1)
        out = self._run_with_prefix(kv, self.embed(ids), mask, output_hidden_states=hidden, logits_to_keep=T + 1)
        logits = out.logits[:, -(T + 1):-1]
        if not hidden:
            return TargetOutput(logits, labels)
        last = out.hidden_states[-1]  # input positions only: [B, S, d]
        return TargetOutput(logits, labels, last[:, -(T + 1):-1], last)

    def _score_choices_fast(self, prompts: torch.Tensor, batch: dict) -> torch.Tensor:
        """Prompt once per task, each distinct (task, source) once, then every choice continues
        its source's cache: choices run slot by slot (the j-th choice of every source together)."""
        from transformers import DynamicCache

        ids, am, labels, task_index = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["task_index"]
        dev, N = ids.device, ids.shape[0]
        n_tgt = (labels != IGNORE).sum(1).tolist()
        groups: dict[tuple, int] = {}
        slots: dict[int, int] = {}
        sources, src_task, row_src, row_slot, row_choice = [], [], [], [], []
        for r, (toks, m, t) in enumerate(zip(ids.tolist(), am.tolist(), task_index.tolist())):
            toks = [x for x, keep in zip(toks, m) if keep]
            src, choice = toks[: len(toks) - n_tgt[r]], toks[len(toks) - n_tgt[r]:]
            key = (t, tuple(src))
            if key not in groups:
                groups[key] = len(sources)
                sources.append(src)
                src_task.append(t)
            e = groups[key]
            row_slot.append(slots.get(e, 0))
            slots[e] = row_slot[-1] + 1
            row_src.append(e)
            row_choice.append(choice)
        E, Ss = len(sources), max(len(s) for s in sources)
        src_ids = torch.tensor([[self.pad_id] * (Ss - len(s)) + s for s in sources], device=dev)
        src_mask = torch.tensor([[0] * (Ss - len(s)) + [1] * len(s) for s in sources], device=dev, dtype=am.dtype)
        kv = self._prefix_kv(prompts, torch.tensor(src_task, device=dev))
        l = kv[0][0].shape[-2]
        mask = torch.cat([src_mask.new_ones(E, l), src_mask], dim=1)
        cache = DynamicCache(ddp_cache_data=kv)
        src_out = self.model(inputs_embeds=self.embed(src_ids), attention_mask=mask,
                             position_ids=self._position_ids(mask)[:, l:], use_cache=True, logits_to_keep=1,
                             **{self._cache_kw: cache})
        first = src_out.logits[:, -1]  # [E, V]: predicts every choice's first token
        skv = [(layer.keys, layer.values) for layer in cache.layers]  # [E, h, l + Ss, hd]
        scores = torch.zeros(N, device=dev)
        for j in range(max(row_slot) + 1):
            rows = [r for r in range(N) if row_slot[r] == j]
            ex = torch.tensor([row_src[r] for r in rows], device=dev)
            C = max(len(row_choice[r]) for r in rows)
            ch = [row_choice[r] for r in rows]
            ch_ids = torch.tensor([c + [self.pad_id] * (C - len(c)) for c in ch], device=dev)
            ch_lab = torch.tensor([c + [IGNORE] * (C - len(c)) for c in ch], device=dev)
            ch_mask = (ch_lab != IGNORE).to(am.dtype)
            if len(rows) == E and _row_src_sorted(rows, row_src):  # every source once, in order: no copy
                full, sub = torch.cat([mask, ch_mask], dim=1), skv
            else:
                full = torch.cat([mask.index_select(0, ex), ch_mask], dim=1)
                sub = [(k.index_select(0, ex), v.index_select(0, ex)) for k, v in skv]
            out = self._run_with_prefix(sub, self.embed(ch_ids), full)
            logits = torch.cat([first.index_select(0, ex).unsqueeze(1), out.logits[:, : C - 1]], dim=1)
            scores[torch.tensor(rows, device=dev)] = sequence_logprob(logits, ch_lab)
        return scores

    def _plain_greedy_config(self) -> bool:
        """The fast generation loop is plain greedy search; models whose generation config asks for
        logits processing (repetition penalty, suppressed tokens, ...) keep HF generate()."""
        gc = getattr(self.model, "generation_config", None)
        if gc is None:
            return True
        return ((gc.repetition_penalty in (None, 1.0)) and not gc.no_repeat_ngram_size and not gc.bad_words_ids
                and not gc.suppress_tokens and not gc.begin_suppress_tokens and gc.forced_bos_token_id is None
                and gc.forced_eos_token_id is None and not gc.min_length and not gc.min_new_tokens
                and not getattr(gc, "sequence_bias", None))

    def _generate_fast(self, prompts: torch.Tensor, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy decoding from a prompt cache prefilled once per task (same tokens as HF generate())."""
        from transformers import DynamicCache

        tok = self.tokenizer
        ids, am = batch["input_ids"], batch["attention_mask"]
        B = ids.shape[0]
        kv = self._prefix_kv(prompts, batch["task_index"])
        l = kv[0][0].shape[-2]
        mask = torch.cat([am.new_ones(B, l), am], dim=1)
        cache = DynamicCache(ddp_cache_data=kv)
        pos = self._position_ids(mask)[:, l:]
        out = self.model(inputs_embeds=self.embed(ids), attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
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
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=nxt_pos, use_cache=True,
                             logits_to_keep=1, **{self._cache_kw: cache})
            nxt_pos = nxt_pos + 1
        seqs = torch.stack(new, 1) if new else ids.new_zeros(B, 0)
        return [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]

    def _probe_fast_prefix(self) -> bool:
        """Check the fast path against the plain path on a tiny mixed-task, padded batch (in the
        mode training will use); False (and a warning) where the model does not support it."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        why = None
        try:
            layers = DynamicCache(config=self.model.config).layers
            if any(type(x) is not DynamicLayer for x in layers):
                why = "its cache is not plain full attention (sliding-window or hybrid layers)"
        except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
            why = f"{type(e).__name__}: {e}"
        if why is None:
            g = torch.Generator().manual_seed(0)
            emb = self.model.get_input_embeddings()
            std = float(emb.weight.float().std())
            prompts = (torch.randn(2, 3, self.hidden_size, generator=g) * std).to(self.device)
            ids = torch.randint(0, emb.num_embeddings, (3, 5), generator=g).to(self.device)
            mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], device=self.device)
            batch = {"input_ids": ids, "attention_mask": mask, "labels": ids[:, -2:].clone(),
                     "task_index": torch.tensor([0, 1, 1], device=self.device)}
            was = self.model.training
            grad = self.gradient_checkpointing  # checkpointing (which may drop caches) acts only with grad, in train mode
            try:
                self.model.train(was or grad)
                with torch.set_grad_enabled(grad):
                    p = prompts.requires_grad_(grad)
                    want = self._forward_plain(p, batch).logits.float()
                    got = self._forward_fast(p, batch).logits.float()
                tol = 1e-3 if self.dtype == torch.float32 else 5e-2
                err = float((got - want).abs().max().detach())
                if not err <= tol * (float(want.abs().max().detach()) + 1.0):
                    why = f"its logits differ from the plain path by {err:.3g} on a probe"
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {e}"
            finally:
                self.model.train(was)
        if why is not None:
            log.warning("fast prefix path off for %s: %s; using the plain path", self.name, why)
            return False
        return True


def _row_src_sorted(rows: list[int], row_src: list[int]) -> bool:
    return all(row_src[r] == i for i, r in enumerate(rows))


@functools.lru_cache(maxsize=None)
def _prefix_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """One layer's prefix keys/values, read-only: attention sees [prefix ; new] and nothing is
        stored, so a gradient-checkpointing replay or another continuation sees the same prefix."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor):
            super().__init__()
            self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return PrefixLayer


def _prefix_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers.cache_utils import Cache

    layer = _prefix_layer_class()
    return Cache(layers=[layer(k, v) for k, v in kv])


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of log p(label): logits [N, T, V], labels [N, T] -> [N]."""
    lp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    tok = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1)
