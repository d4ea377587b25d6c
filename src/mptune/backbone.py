"""The frozen backbone: an unmodified Hugging Face model fed a soft-prompt prefix.

Prompts enter through ``inputs_embeds`` only (as PEFT does); no model code is
patched. Two kinds are supported:

* seq2seq (T5, Flan-T5): encoder input = [prompt ; source], decoder predicts the target.
* causal (Llama, SmolLM2, Gemma, Qwen, GPT-2): input = [prompt ; pad* ; source ; target].
  The prompt always sits at positions 0..l-1 and the text is *left*-padded behind
  it, so targets are the last tokens of every row and position ids (cumsum of the
  mask) continue from l. Keeping the prompt at a fixed offset is what lets a later
  fast path compute the prompt's keys/values once per task.

All prompt arguments are a table ``prompts [T, l, d]`` plus ``task_index [B]``:
each row gathers its own task's prompt, so a batch that mixes tasks is one pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

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
            raise FileNotFoundError(f"model.name: GGUF file not found: {name}")
        return str(p.parent), p.name
    return name, gguf


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
    return Backbone(model, tokenizer, name=cfg.name, gradient_checkpointing=cfg.gradient_checkpointing)


class Backbone(nn.Module):
    """A frozen HF model plus its tokenizer; forward passes take a prompt table."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "", gradient_checkpointing: bool = False):
        super().__init__()
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
        out = self.forward(prompts, batch)
        return sequence_logprob(out.logits, out.labels)

    # -- generation ----------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy decoding; batch holds the (left-padded for causal) source only."""
        emb, mask = self._with_prompt(prompts, batch["task_index"], batch["input_ids"], batch["attention_mask"])
        tok = self.tokenizer
        out = self.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
        # With inputs_embeds, generate() returns only new tokens (plus T5's decoder start).
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of log p(label): logits [N, T, V], labels [N, T] -> [N]."""
    lp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    tok = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1)
