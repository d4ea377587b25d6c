"""The frozen backbone: an unmodified Hugging Face model fed a soft-prompt prefix.

Prompts enter through ``inputs_embeds`` only (as PEFT does); no model code is
patched. Two kinds are supported, each laid out by its spec (kinds.py):

* seq2seq (T5, Flan-T5): encoder input = [prompt ; source], the decoder predicts the target.
* causal (Llama, SmolLM2, Gemma, Qwen, GPT-2): input = [prompt ; pad* ; source ; target],
  left-padded behind the prompt so targets are the last tokens of every row.

Shared-prefix fast path (decoder-only backbones, ``model.fast_prefix``, on by default;
the machinery is in fastpath.py): the prompt is run once per *distinct task in the batch*
(with gradient) and the text tokens run with its keys/values as a read-only prefix cache.
Same logits, hidden states and prompt gradients as the plain path, at about the cost of
the text alone. Rank classification runs each source once with all its choices in the same
row (tree attention); generation decodes greedily from the prefilled cache. :meth:`Backbone.prefix`
turns a prompt table into its keys/values once, for reuse across no-grad batches. The first
use checks the fast path against the plain path on a tiny probe and falls back (with a
warning) where a model does not support it (sliding window or hybrid caches, models that
drop the cache under gradient checkpointing, remote code). Seq2seq backbones (T5) always
take the plain path: the encoder is bidirectional, so the prompt's states depend on the input.

All prompt arguments are a table ``prompts [T, l, d]`` plus ``task_index [B]``:
each row gathers its own task's prompt, so a batch that mixes tasks is one pass.

Dropout (``model.dropout``): ``off`` keeps the HF model in eval mode in every pass;
``keep`` puts it in train mode while a prompt trains (``Backbone.train()``, which the
Trainer calls), so the model's own dropout acts on the trained prompt's passes, as
ATTEMPT's HF Trainer trains T5. Every pass that must be deterministic runs inside
:meth:`Backbone.frozen_eval` (eval mode): score_choices, generate and prefix (so all
evaluation, serving and the fast-path probe) and the distillation teachers. Under
``keep`` training passes take the plain path: the fast path would run the prompt once
per task, so every row of a task would share one dropout mask on the prompt's positions
instead of drawing its own (its gradients would still be exact for the masks drawn).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from . import fastpath
from .config import Dropout, ModelConfig
from .errors import MissingFileError
from .fastpath import PrefixKV
from .kinds import IGNORE, ModelKind, position_ids, sequence_logprob, spec_for  # noqa: F401 (re-exported)
from .kinds import CHOICE, label_rows, pad

log = logging.getLogger(__name__)

Prompts = Union[torch.Tensor, PrefixKV]  # a prompt table [T, l, d], or its keys/values from Backbone.prefix


@dataclass
class TargetOutput:
    """Backbone outputs aligned with the target tokens.

    logits: [B, T, V] predicting labels[:, t]; labels: [B, T] (IGNORE where no target);
    hidden: [B, T, d] final-layer hidden states at those positions (decoder for T5), or None;
    source_hidden: [B, S, d] final-layer states at the text positions after the prompt
    (encoder for T5, the LM for causal models; pads per batch["attention_mask"]), or None.
    label_scores: the batch's label rows scored (train.target_loss=labels), or None.
    """

    logits: Optional[torch.Tensor]  # None when only label scores were asked for (Backbone.forward, vocab=False)
    labels: torch.Tensor
    hidden: Optional[torch.Tensor] = None
    source_hidden: Optional[torch.Tensor] = None
    label_scores: Optional["LabelScores"] = None


@dataclass
class LabelScores:
    """Every (example, label string) row of a batch (kinds.py's label rows): logprob [N] the label's summed
    target log-prob (EOS included, as rank evaluation scores it), example [N] its example, gold [N] 1 on
    the gold label's row."""

    logprob: torch.Tensor
    example: torch.Tensor
    gold: torch.Tensor


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
                    fast_prefix=cfg.fast_prefix, dropout=cfg.dropout)



class Backbone(nn.Module):
    """A frozen HF model plus its tokenizer; forward passes take a prompt table."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "", gradient_checkpointing: bool = False,
                 fast_prefix: bool = True, dropout: Dropout | str = Dropout.off):
        super().__init__()
        self.keep_dropout = Dropout(dropout) == Dropout.keep
        self.fast_prefix = fast_prefix
        self._fast_ok: Optional[bool] = None  # decided by a probe on first use
        self._tree_ok = False  # rank classification's one-row layout: decided by the same probe
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.kind = ModelKind.SEQ2SEQ if model.config.is_encoder_decoder else ModelKind.CAUSAL
        self.spec = spec_for(self.kind)
        if tokenizer.pad_token_id is None:  # Llama-style tokenizers: pad with EOS (masked anyway)
            tokenizer.pad_token = tokenizer.eos_token
        self.model.requires_grad_(False)
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            # HF only checkpoints in training mode; under dropout=off zero every dropout so the frozen
            # backbone stays deterministic in that mode. Under keep the recompute in backward sees the
            # forward's masks (torch's checkpoint restores the RNG state).
            if not self.keep_dropout:
                _zero_dropout(self.model)
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers 5.x's name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # 4.x (pyproject admits >= 4.56): the old name, deprecated in 5.x
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone is frozen: eval mode unless its dropout is kept or checkpointing needs train mode.
        super().train(mode)
        self.model.train(mode and (self.keep_dropout or self.gradient_checkpointing))
        return self

    @contextlib.contextmanager
    def frozen_eval(self):
        """Eval mode for passes that must be deterministic (teachers, evaluation, generation), whatever
        model.dropout and the current mode; the mode before is restored on exit."""
        was = self.model.training
        self.model.train(False)
        try:
            yield
        finally:
            self.model.train(was)

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

    # -- teacher-forced forward --------------------------------------------
    def forward(self, prompts: torch.Tensor, batch: dict, hidden: bool = False,
                with_labels: bool = True, vocab: bool = True) -> TargetOutput:
        """Teacher-forced pass; returns target-aligned logits (and hidden states if asked), and, when the
        batch carries label rows and `with_labels`, their scores (:meth:`label_scores`).
        `vocab=False`: the caller reads only the label scores of examples that have label rows
        (train.target_loss=labels); when every example has them, the pass over the vocabulary is
        skipped and `logits` is None."""
        rows = label_rows(batch) if with_labels else None
        if rows is not None and not vocab and not hidden and _every_example_has_rows(batch):
            return TargetOutput(None, batch["labels"], label_scores=self.label_scores(prompts, batch))
        if self._teacher_forcing_fast(batch):
            out = self._forward_fast(prompts, batch, hidden)
        else:
            out = self._forward_plain(prompts, batch, hidden)
        if rows is not None:
            out.label_scores = self.label_scores(prompts, batch)
        return out

    def _teacher_forcing_fast(self, batch: dict) -> bool:
        """Teacher forcing on the shared-prefix path: not with dropout active (each row draws its own
        masks, see the module docstring), not when every row is its own task (nothing to share: one pass
        is cheaper than two), and every row needs a source token (_use_fast)."""
        dropout_on = self.keep_dropout and self.model.training
        return (not dropout_on and self._use_fast(batch["attention_mask"], batch["labels"])
                and torch.unique(batch["task_index"]).numel() < batch["task_index"].numel())

    def label_scores(self, prompts: torch.Tensor, batch: dict) -> LabelScores:
        """The summed log-prob of every (example, label string) row of a teacher-forcing batch, with grad.
        Where rank classification takes one row per example (tree_choices), so does this: each example's
        label strings share its source's pass (fastpath.score_tree); else one teacher-forced row per label."""
        rows = label_rows(batch)
        if self.tree_choices and self._teacher_forcing_fast(batch):
            choices = self._choices_of(batch)
            kv, idx = fastpath.prompt_kv_for(self, prompts, choices["task_index"])
            logprob = fastpath.score_tree(self, kv, {**choices, "task_index": idx})
        else:
            r = self.forward(prompts, rows)
            logprob = sequence_logprob(r.logits, r.labels)
        return LabelScores(logprob, batch[CHOICE + "example"], batch[CHOICE + "gold"])

    def _choices_of(self, batch: dict) -> dict:
        """A decoder-only teacher-forcing batch with label rows in rank classification's layout: the
        sources once (each row without its target), the label strings right-padded, row_example."""
        n_target = (batch["labels"] != IGNORE).sum(1).tolist()
        src = [ids[m.bool()].tolist()[: int(m.sum()) - n]
               for ids, m, n in zip(batch["input_ids"], batch["attention_mask"], n_target)]
        out = self.spec._sources(src, batch["task_index"].tolist(), self.pad_id)
        out["labels"] = pad([r[r != IGNORE].tolist() for r in batch[CHOICE + "labels"]], IGNORE, left=False)
        out = {k: v.to(self.device) for k, v in out.items()}
        out["row_example"] = batch[CHOICE + "example"]
        return out

    def _forward_plain(self, prompts: torch.Tensor, batch: dict, hidden: bool = False) -> TargetOutput:
        emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
        labels, l = batch["labels"], prompts.shape[1]
        if not self.spec.target_in_row:  # encoder-decoder: the decoder reads the target
            dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            out = self.model(inputs_embeds=emb, attention_mask=mask, decoder_input_ids=dec_in,
                             output_hidden_states=hidden, use_cache=False)
            if not hidden:
                return TargetOutput(out.logits, labels)
            return TargetOutput(out.logits, labels, out.decoder_hidden_states[-1], out.encoder_last_hidden_state[:, l:])
        out = self.model(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids(mask),
                         output_hidden_states=hidden, use_cache=False,
                         logits_to_keep=fastpath.keep_last(labels.shape[1] + 1, emb.shape[1], emb.device))
        return _row_targets(out, labels, hidden, text_from=l)

    def _forward_fast(self, prompts: torch.Tensor, batch: dict, hidden: bool = False) -> TargetOutput:
        kv, rows = fastpath.prompt_kv_for(self, prompts, batch["task_index"])
        labels = batch["labels"]
        ids = batch["input_ids"]
        out = fastpath.run_text(self, kv, rows, self.embed(ids), batch["attention_mask"], output_hidden_states=hidden,
                                logits_to_keep=fastpath.keep_last(labels.shape[1] + 1, ids.shape[1], ids.device))
        return _row_targets(out, labels, hidden, text_from=0)  # the output covers the text only

    # -- no-grad use: rank classification and generation ----------------------
    def prefix(self, prompts: torch.Tensor) -> Prompts:
        """The prompt table [T, l, d] in the form that later score_choices / generate calls reuse:
        its keys/values (fastpath.PrefixKV, computed once here) on the fast path, else the table.
        Call under no_grad; the prompt must not change while the result is in use."""
        with self.frozen_eval():
            return fastpath.prompt_kv(self, prompts) if self.uses_fast_prefix else prompts

    def _route(self, prompts: Prompts, batch: dict) -> tuple[Prompts, dict]:
        """(PrefixKV, batch indexing it) for the fast path, else (prompt table, batch)."""
        if not self._use_fast(batch["attention_mask"]):
            return _table(prompts), batch
        if isinstance(prompts, PrefixKV):
            return prompts, batch
        kv, rows = fastpath.prompt_kv_for(self, prompts, batch["task_index"])
        return kv, {**batch, "task_index": rows}

    @torch.no_grad()
    def score_choices(self, prompts: Prompts, batch: dict) -> torch.Tensor:
        """Sum of target-token log-probs for every (example, choice) row: returns [N].

        batch (kinds.py's choices layout, both kinds): sources input_ids/attention_mask [B, S],
        task_index [B]; labels [N, T] (one row per choice), row_example [N] (its example).
        """
        with self.frozen_eval():
            return self._score_choices(prompts, batch)

    def _score_choices(self, prompts: Prompts, batch: dict) -> torch.Tensor:
        prompts, batch = self._route(prompts, batch)
        if isinstance(prompts, PrefixKV):
            return fastpath.score_choices(self, prompts, batch)
        if self.spec.target_in_row:  # plain decoder-only: one [prompt ; source ; choice] row per choice
            out = self._forward_plain(prompts, self.spec.choice_rows(batch, self.pad_id))
            return sequence_logprob(out.logits, out.labels)
        emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
        enc = self.model.get_encoder()(inputs_embeds=emb, attention_mask=mask).last_hidden_state  # once per example
        idx, labels = batch["row_example"], batch["labels"]
        dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        out = self.model(encoder_outputs=(enc.index_select(0, idx),), attention_mask=mask.index_select(0, idx),
                         decoder_input_ids=dec_in, use_cache=False)
        return sequence_logprob(out.logits, labels)

    @torch.no_grad()
    def generate(self, prompts: Prompts, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy decoding; batch holds the sources only (kinds' source layout)."""
        with self.frozen_eval():
            return self._generate(prompts, batch, max_new_tokens)

    def _generate(self, prompts: Prompts, batch: dict, max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        # the fast loop is plain greedy search: generation configs asking for more keep HF generate()
        prompts, batch = (self._route(prompts, batch) if fastpath.plain_greedy_config(self.model)
                          else (_table(prompts), batch))
        if isinstance(prompts, PrefixKV):
            out = fastpath.generate_ids(self, prompts, batch, max_new_tokens)
        else:
            emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
            # With inputs_embeds, generate() returns only new tokens (plus T5's decoder start).
            out = self.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    # -- which path --------------------------------------------------------
    @property
    def uses_fast_prefix(self) -> bool:
        """True when the shared-prefix fast path is on and works for this model (probed once)."""
        if not self.fast_prefix or not self.spec.prompt_independent_of_input:
            return False
        if self._fast_ok is None:
            self._fast_ok = self._probe_fast_prefix()
        return self._fast_ok

    @property
    def tree_choices(self) -> bool:
        """Rank classification on the fast path puts each example's choices in its source's row under a
        4D mask (fastpath.score_choices): the attention kernel takes such masks and the probe found the
        plain path's scores; else it takes two passes."""
        return (self.uses_fast_prefix and self._tree_ok
                and self.model.config._attn_implementation in fastpath.DENSE_MASK_KERNELS)

    def _use_fast(self, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None) -> bool:
        """Fast path for this batch: every row needs >= 1 source token (its last position predicts the
        first target token; with an empty source that position would be inside the prompt).
        `labels`: teacher-forcing targets inside the rows (not given for sources-only batches)."""
        if not self.uses_fast_prefix:
            return False
        n_tgt = (labels != IGNORE).sum(1) if labels is not None else 0
        return bool(((attention_mask.sum(1) - n_tgt) > 0).all())

    def _probe_fast_prefix(self) -> bool:
        """Check the fast path against the plain path on a tiny mixed-task, padded batch (in the
        mode training will use: with grad and checkpointing if on; eval mode under dropout=keep, whose
        training passes take the plain path); False (and a warning) where the model does not support it."""
        why = fastpath.cache_problem(self.model)
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
            # checkpointing (which may drop caches) acts only with grad, in train mode (dropout zeroed: off)
            grad = self.gradient_checkpointing and not self.keep_dropout
            try:
                self.model.train(grad)
                with torch.set_grad_enabled(grad):
                    p = prompts.requires_grad_(grad)
                    want = self._forward_plain(p, batch).logits.float()
                    got = self._forward_fast(p, batch).logits.float()
                tol = 1e-3 if self.dtype == torch.float32 else 5e-2
                err = float((got - want).abs().max().detach())
                if not err <= tol * (float(want.abs().max().detach()) + 1.0):
                    why = f"its logits differ from the plain path by {err:.3g} on a probe"
            except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
                why = f"{type(e).__name__}: {e}"
            finally:
                self.model.train(was)
        if why is not None:
            log.warning("fast prefix path off for %s: %s; using the plain path", self.name, why)
            return False
        with self.frozen_eval():
            self._tree_ok = self._probe_tree(prompts.detach(), batch, g)
        return True

    @torch.no_grad()
    def _probe_tree(self, prompts: torch.Tensor, batch: dict, g: torch.Generator) -> bool:
        """Check rank classification's one-row layout (a 4D mask) against one plain row per choice on the
        probe's batch (2, 1 and 1 choices, ragged); False (and a note) where the model ignores such masks."""
        if self.model.config._attn_implementation not in fastpath.DENSE_MASK_KERNELS:
            return False
        labels = torch.randint(0, self.model.get_input_embeddings().num_embeddings, (4, 3), generator=g)
        labels[[0, 3], 2] = IGNORE
        b = {**batch, "labels": labels.to(self.device), "row_example": torch.tensor([0, 0, 1, 2], device=self.device)}
        try:
            got = fastpath._score_tree(self, fastpath.prompt_kv(self, prompts), b).float()
            out = self._forward_plain(prompts, self.spec.choice_rows(b, self.pad_id))
            want = sequence_logprob(out.logits, out.labels)
            tol = 1e-3 if self.dtype == torch.float32 else 5e-2
            ok = bool((got - want).abs().max() <= tol * (want.abs().max() + 1.0))
        except Exception:  # noqa: BLE001 - any failure means: two passes
            ok = False
        if not ok:
            log.info("rank classification on %s takes two passes (it does not take a 4D attention mask)", self.name)
        return ok


def _every_example_has_rows(batch: dict) -> bool:
    n = batch["labels"].shape[0]
    return bool(torch.zeros(n, dtype=torch.bool).index_fill(0, batch[CHOICE + "example"].cpu(), True).all())


def _zero_dropout(model: nn.Module) -> None:
    """Every dropout of the model at rate 0: nn.Dropout modules and the attention-probability rates that
    attention modules keep as a float attribute (T5: `dropout`; Llama, Qwen, Gemma: `attention_dropout`)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for k, v in list(vars(m).items()):
            if "dropout" in k and isinstance(v, float):
                setattr(m, k, 0.0)


def _table(prompts: Prompts) -> torch.Tensor:
    return prompts.prompts if isinstance(prompts, PrefixKV) else prompts


def _row_targets(out, labels: torch.Tensor, hidden: bool, text_from: int) -> TargetOutput:
    """Targets at the end of decoder-only rows: logits at position p predict token p + 1, so the last
    T + 1 positions cover every target. source_hidden = the final-layer states from `text_from` on."""
    T = labels.shape[1]
    logits = out.logits[:, -(T + 1):-1]
    if not hidden:
        return TargetOutput(logits, labels)
    last = out.hidden_states[-1]
    return TargetOutput(logits, labels, last[:, -(T + 1):-1], last[:, text_from:])
