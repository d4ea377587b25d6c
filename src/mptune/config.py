"""Typed, validated configuration shared by every stage.

Each stage (recipe) takes one top-level dataclass made of the sections below.
The CLI builds its options from these dataclasses (:func:`parser_for`: jsonargparse
reads the field docstrings for ``--help``); YAML files and ``key=value`` overrides
go through the same parser (:func:`parse`), so an unknown key is always an error
naming the key. This module sits below the CLI and the recipes: it never imports them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml

from .errors import MptuneError

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


class ConfigError(MptuneError, ValueError):
    """A configuration value is invalid; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _as_enum(cls: type[Enum], value: Any, key: str) -> Any:
    """`value` as a member of `cls`, else ConfigError naming `key` and the choices."""
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{key}: must be one of {', '.join(m.value for m in cls)}, got {value!r}") from None


class PromptInit(str, Enum):
    """How a soft prompt's vectors start."""

    # Member names equal their values, so YAML/CLI spell them the same way (jsonargparse parses names).
    vocab = "vocab"  # embeddings of distinct ids drawn from the first `init_vocab_size` ids (ATTEMPT's init)
    text = "text"  # embeddings of `init_text`, repeated to length l
    random = "random"  # normal noise with the embedding table's std
    prompts = "prompts"  # average of saved soft prompts (SPoT-style transfer)
    best_prompt = "best_prompt"  # the one saved prompt scoring best on the dev set at step 0 (SPoT; prompt-tune)


class FewShotDev(str, Enum):
    """The dev set a few-shot run selects its best step on."""

    k = "k"  # k per class of the dev split (k in total otherwise), drawn as the training examples are
    full = "full"  # the whole dev split (at most data.eval_limit), as for full data
    none = "none"  # no selection: the last step's prompt is kept


class TextFormat(str, Enum):
    """How every task's rows become text: templates and label strings (a task's ``formats``)."""

    t5 = "t5"  # T5's text-to-text formats with word labels (each task record's own template)
    attempt = "attempt"  # ATTEMPT's tasks.py: task-name prefixes, labels "0"/"1"/"2" (docs/fidelity.md)
    natural = "natural"  # plain instructions for decoder-only instruct models ("sentence: ...\nsentiment:")


class TargetLoss(str, Enum):
    """What L_PLM is the likelihood of."""

    vocab = "vocab"  # the target tokens, softmax over the whole vocabulary
    labels = "labels"  # the gold label among the label strings (classification tasks; others keep vocab)


class Dropout(str, Enum):
    """The frozen backbone's own dropout while a prompt trains."""

    off = "off"  # eval mode in every pass: training is deterministic given the batch
    keep = "keep"  # train mode in the trained prompt's passes (as ATTEMPT's HF Trainer trains T5: dropout 0.1)


class Reduction(str, Enum):
    """How a loss term reduces over an example's positions (or over the hidden size)."""

    mean = "mean"
    sum = "sum"


class EvalMode(str, Enum):
    """How a label (classification) task is predicted."""

    rank = "rank"  # score every label (sum of its token log-probs), predict the best: never invalid
    generate = "generate"  # greedy decoding, then string matching against the labels (ATTEMPT)


class Match(str, Enum):
    """How a generated string is matched against the label strings."""

    exact = "exact"  # equal after stripping surrounding space (ATTEMPT); anything else is invalid
    lenient = "lenient"  # exact, else equal ignoring case


@dataclass
class ModelConfig:
    """The frozen backbone."""

    name: str
    """Hub id, local model folder, or path to a .gguf file."""
    gguf_file: Optional[str] = None
    """GGUF file name inside `name` (a folder or Hub repo); set automatically when `name` is a .gguf path."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Backbone weight dtype (the prompt is always kept in float32)."""
    attn_implementation: Optional[str] = None
    """Attention kernel passed to transformers (e.g. sdpa, eager); None = transformers' default."""
    gradient_checkpointing: bool = False
    """Recompute backbone activations in backward to save memory."""
    fast_prefix: bool = True
    """Decoder-only backbones: compute the prompt's keys/values once per task in the batch and reuse them as a
    shared prefix (same results as the plain path, much cheaper); false = the plain path (debugging)."""
    trust_remote_code: bool = False
    """Allow model code from the Hub (off by default)."""
    dropout: Dropout = Dropout.off
    """The backbone's own dropout while a prompt trains: off (eval mode in every pass) or keep (the trained
    prompt's passes in train mode, as ATTEMPT trains T5). Teachers, evaluation and generation always run in
    eval mode (Backbone.frozen_eval)."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", "must not be empty (Hub id, folder or .gguf file)")
        self.dropout = _as_enum(Dropout, self.dropout, "model.dropout")


@dataclass
class PromptConfig:
    """The soft prompt."""

    length: int = 100
    """Number of virtual tokens l (ATTEMPT's configs use 100)."""
    init: PromptInit = PromptInit.vocab
    """Initialisation: vocab (embeddings of sampled token ids, as ATTEMPT's prompt tuning), text, or random."""
    init_text: Optional[str] = None
    """Text whose token embeddings start the prompt (init=text)."""
    init_vocab_size: int = 5000
    """Sample init tokens from the first this-many vocabulary ids (init=vocab)."""
    init_from: list[str] = field(default_factory=list)
    """Prompt folders/files to start from: their average (init=prompts), or the one that scores best on the dev
    set before training (init=best_prompt; prompt-tune writes every score and its pick to spot_choice.json)."""

    def __post_init__(self) -> None:
        self.init = PromptInit(self.init)
        _check(self.length >= 1, "prompt.length", f"must be >= 1, got {self.length}")
        _check(self.init_vocab_size >= 1, "prompt.init_vocab_size", "must be >= 1")
        if self.init == PromptInit.text:
            _check(bool(self.init_text), "prompt.init_text", "is required when prompt.init=text")
        if self.init in (PromptInit.prompts, PromptInit.best_prompt):
            _check(bool(self.init_from), "prompt.init_from", f"needs a prompt when prompt.init={self.init.value}")


@dataclass
class DataConfig:
    """Where examples come from and how they are tokenised."""

    data_dir: Optional[str] = None
    """Folder of original release files (GLUE .tsv, SuperGLUE .jsonl, ...); default $MPTUNE_DATA_DIR, else the Hub.
    A task file's relative data paths are looked up here first (when the file is there), else next to the task file."""
    max_source_length: int = 256
    """Source tokens kept per example (longer inputs are truncated)."""
    max_target_length: int = 128
    """Target tokens kept per example; also the generation budget."""
    train_limit: Optional[int] = None
    """Use at most this many training examples (after shuffling with data.seed)."""
    few_shot_k: Optional[int] = None
    """Few-shot: k training examples per class (k in total for non-classification tasks), sampled with the
    draw's seed (see few_shot_draw)."""
    few_shot_dev: FewShotDev = FewShotDev.k
    """Few-shot: the dev set the best step is selected on: k (k per class of the dev split, none of them among
    the training examples, drawn with the draw's seed), full (the whole dev split), or none (the last step)."""
    few_shot_draw: int = 0
    """Few-shot: which draw of k examples; draw 0 is sampled with train.seed, draw i > 0 with a seed derived
    from (train.seed, i); the training seed stays train.seed (the pipeline sets it per run)."""
    eval_limit: Optional[int] = None
    """Use at most this many dev and test examples (a seeded subset; None = all)."""
    seed: int = 42
    """Seed of the paper splits (42 reproduces the ATTEMPT/MPT dev/test cuts); keep it fixed across runs."""
    format: TextFormat = TextFormat.t5
    """Text format of every task: t5 (T5's templates, word labels), attempt (ATTEMPT's tasks.py: task-name
    prefixes, labels "0"/"1"/...) or natural (instructions for decoder-only models). A task without the chosen
    format keeps t5 (logged once). A stage folder records the format its tasks used (tasks/formats.json);
    evaluate / predict / serve read that prompt with it."""

    def __post_init__(self) -> None:
        self.format = TextFormat(self.format)
        _check(self.max_source_length >= 1, "data.max_source_length", "must be >= 1")
        _check(self.max_target_length >= 1, "data.max_target_length", "must be >= 1")
        if self.train_limit is not None:
            _check(self.train_limit >= 1, "data.train_limit", "must be >= 1")
        if self.few_shot_k is not None:
            _check(self.few_shot_k >= 1, "data.few_shot_k", "must be >= 1")
        if self.eval_limit is not None:
            _check(self.eval_limit >= 1, "data.eval_limit", "must be >= 1")
        self.few_shot_dev = _as_enum(FewShotDev, self.few_shot_dev, "data.few_shot_dev")
        _check(self.few_shot_draw >= 0, "data.few_shot_draw", "must be >= 0")

    def inert(self) -> tuple[str, ...]:
        """Fields that change nothing under these settings: the few-shot ones on full data (a rerun that
        changes only them reuses finished full-data stages, see common.stage_changes)."""
        return () if self.few_shot_k is not None else ("few_shot_dev", "few_shot_draw")

    def resolved_data_dir(self) -> Optional[str]:
        from .assets import resolve_data_dir  # the one reader of $MPTUNE_DATA_DIR

        return None if (d := resolve_data_dir(self.data_dir)) is None else str(d)


@dataclass
class TrainConfig:
    """Optimisation (ATTEMPT's configs: lr 0.3, batch 32, AdamW, 500 warmup steps + linear decay)."""

    max_steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Global batch size (examples per optimizer step, all processes and accumulation together)."""
    grad_accum: int = 1
    """Gradient accumulation steps per optimizer step (batch_size must divide evenly)."""
    lr: float = 0.3
    """Peak learning rate."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warmup steps, then linear decay to 0 at max_steps."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping norm (None = off)."""
    eval_every: int = 100
    """Evaluate on dev every N steps (0 = only at the end); the best prompt by dev score is kept."""
    eval_at_start: bool = False
    """Also evaluate the starting prompt on dev before the first step, so selection may keep it (best_step
    0): a few-shot run that over-fits within its first eval_every steps then keeps its start."""
    eval_batch_size: int = 32
    """Examples per evaluation batch."""
    eval_limit: Optional[int] = None
    """Dev examples used for periodic evaluation (None = all)."""
    test_limit: Optional[int] = None
    """Test examples evaluated at the end of the stage (a seeded subset of the test split; None = data.eval_limit)."""
    final_dev: bool = True
    """Evaluate the best prompt on the dev split (up to data.eval_limit) at the end, reported as "dev" in
    metrics.json. false: skip it (metrics.json's dev is empty; the selection's dev scores stay in dev_history),
    which saves about a third of a short target run."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N steps (0 = off)."""
    log_every: int = 10
    """Write a JSONL log line every N steps."""
    seed: int = 42
    """Seed for data order and initialisation."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision on GPU (accelerate)."""
    token_reduction: Reduction = Reduction.mean
    """Each example's loss over its target tokens: mean or sum (L_PLM, and in distillation L_logits and
    L_hidden); the batch is then averaged over examples either way. Sum weighs long targets more and scales
    the loss (so clipping and λ act differently)."""
    target_loss: TargetLoss = TargetLoss.vocab
    """L_PLM: vocab (the target tokens' likelihood over the whole vocabulary) or labels (classification
    tasks: cross-entropy of the gold label among the task's label strings, each scored by its summed token
    log-prob as rank evaluation scores it; token_reduction does not apply). Other tasks keep vocab."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.batch_size % self.grad_accum == 0, "train.batch_size",
               f"{self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_steps <= self.max_steps, "train.warmup_steps", "must be in [0, max_steps]")
        if self.max_grad_norm is not None:
            _check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0 or null")
        _check(self.eval_every >= 0, "train.eval_every", "must be >= 0")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        if self.test_limit is not None:
            _check(self.test_limit >= 1, "train.test_limit", "must be >= 1")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        self.token_reduction = Reduction(self.token_reduction)
        self.target_loss = TargetLoss(self.target_loss)


@dataclass
class EvalConfig:
    """How label tasks are evaluated: dev selection and test of every stage, evaluate and predict."""

    mode: EvalMode = EvalMode.rank
    """rank: pick the label with the highest summed log-prob; generate: greedy decoding (up to the longest
    label's tokens + EOS) compared with the label strings, as ATTEMPT evaluates. Other task kinds always generate."""
    match: Match = Match.lenient
    """Under generate: exact = equal after stripping space (ATTEMPT); lenient = exact, else ignoring case.
    A prediction matching no label is wrong and counted in the metrics' invalid_rate."""

    def __post_init__(self) -> None:
        self.mode, self.match = EvalMode(self.mode), Match(self.match)


def to_dict(cfg: Any) -> dict:
    """Plain dict (enums as values) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if isinstance(v, Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(dataclasses.asdict(cfg))


def save_yaml(data: dict, path: str | os.PathLike) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parser_for(cls: type, prog: Optional[str] = None) -> "ArgumentParser":
    """The parser of a config dataclass: one option per field (nested sections as ``a.b``), ``--help``
    text from the field docstrings, ``--config FILE`` for YAML; errors raise instead of exiting."""
    import jsonargparse

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = jsonargparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip(), exit_on_error=False,
                                         default_env=False)
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                        help="YAML config file (later options override it).")
    parser.add_class_arguments(cls, fail_untyped=True, sub_configs=True)
    return parser


def to_cli_args(args: list[str]) -> list[str]:
    """`cfg.yaml` -> `--config cfg.yaml`; `a.b=c` -> `--a.b=c`; the rest unchanged."""
    out: list[str] = []
    for a in args:
        if _OVERRIDE.match(a):
            out.append("--" + a)
        elif not a.startswith("-") and a.endswith((".yaml", ".yml")) and not (out and out[-1].startswith("--") and "=" not in out[-1]):
            out += ["--config", a]
        else:
            out.append(a)
    return out


def parse(cls: type, data: dict | None = None, overrides: list[str] | None = None, source: str = "config"):
    """Build a validated `cls` instance from a dict plus ``key=value`` overrides.

    The same parser as the CLI: unknown keys, wrong types and invalid values
    raise ConfigError naming the key.
    """
    parser = parser_for(cls)
    _precheck(cls, data or {}, "", source)
    try:
        ns = parser.parse_object(data or {})
        ns = parser.parse_args(to_cli_args(overrides or []), namespace=ns)
        return instantiate(parser, ns, cls)
    except ConfigError:
        raise
    except (Exception, SystemExit) as e:  # jsonargparse: ArgumentError / ValueError from __post_init__
        raise ConfigError(f"{source}: {e}") from None


def _precheck(cls: type, data: Any, prefix: str, source: str) -> None:
    """Shape errors jsonargparse reports poorly: a section that is not a mapping, a null
    for a required value. Each names the key."""
    import typing

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping of options, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, key = hints[f.name], data[f.name], prefix + f.name
        args = typing.get_args(tp)
        optional = type(None) in args
        inner = next((a for a in args if a is not type(None)), tp) if optional else tp
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: {key}: null is not allowed (expected {getattr(inner, '__name__', inner)})")
        elif dataclasses.is_dataclass(inner):
            _precheck(inner, value, key + ".", source)


def instantiate(parser, ns, cls):
    """Namespace -> dataclass; nested sections are built (and validated) by jsonargparse."""
    init = parser.instantiate(ns)
    return cls(**{f.name: getattr(init, f.name) for f in dataclasses.fields(cls) if hasattr(init, f.name)})
