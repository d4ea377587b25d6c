"""The task record: one declarative :class:`Task` per dataset.

A task says where its rows come from (:class:`Source`), how a row becomes a
text-to-text :class:`Example` (template, label words, ``prepare``; other text
formats in ``formats``, applied by :meth:`Task.with_format`), how the
paper's splits are made (``split`` policy; ``holdout`` for sets released as one
file), and which metrics score it. The work lives elsewhere: :mod:`.loading`
(files / Hub -> rows -> examples -> splits) and :mod:`.metrics` (scoring); the
methods below are shorthands for them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from . import loading
from . import metrics as M
from . import splits
from .formats import DEFAULT, NAMES, Format
from .records import Example, TaskKind

log = logging.getLogger(__name__)
_fallbacks: set[tuple[str, str]] = set()  # (task, format) already logged as falling back to t5


@dataclass(frozen=True)
class Source:
    """Where a task's raw splits live.

    Raw split names are the Hub's (``train``, ``validation``, ``test``; MNLI adds
    ``validation_matched`` ...). ``files`` maps a raw split to a path under the
    data dir (or a tuple of candidates, first existing wins); ``columns`` maps a
    Hub column name to the file's column (a dotted path into JSON objects);
    header-less tsv/csv files (``headerless``: True or the raw splits concerned)
    name their columns by ``fieldnames``; ``explode`` turns one nested file record
    into Hub-shaped rows (MultiRC, ReCoRD).
    """

    hub: str | None = None
    config: str | None = None
    hub_splits: Mapping[str, str] = field(default_factory=dict)  # raw split -> Hub split name
    hub_filter: tuple[str, str] | None = None  # (column, value): MRQA's subsets
    hub_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra load_dataset kwargs
    files: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    format: str | None = None  # a readers.FORMATS key (tsv, csv, jsonl, squad, bigbench); None: from the extension
    columns: Mapping[str, str] = field(default_factory=dict)
    fieldnames: tuple[str, ...] | None = None
    headerless: bool | tuple[str, ...] = False
    explode: Callable[[dict], list[dict]] | None = None

    def describe(self) -> str:
        hub = f"{self.hub}/{self.config}" if self.config else (self.hub or "")
        files = sorted({str(p if isinstance(p, str) else p[0]).split("/")[0] for p in self.files.values()})
        return " + ".join(x for x in (hub, ",".join(f"files:{f}" for f in files)) if x)


def template_fields(template: str) -> tuple[str, ...]:
    """The ``{field}`` names a ``str.format`` template uses, in order."""
    return tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))


@dataclass(frozen=True)
class Task:
    """One dataset: source, split policy, template, label words, metrics.

    ``split`` is the paper-split policy (see :mod:`mptune.tasks.splits`):
    ``"auto"`` | ``"small"`` | ``"large"`` | ``"given"`` (with ``split_map``
    from paper split to raw split). ``raw_sizes`` are the released splits' known
    row counts (Hub numbers); :meth:`sizes` gives the paper splits' sizes.
    ``prepare`` is an optional function ``row -> row`` for task-specific structure
    (WSC span marking, ReCoRD entities, MultiRC groups); it may set ``choices``,
    ``answers``, ``group`` and ``label`` fields.
    ``fields`` lists the raw fields a file must have (default: the template's
    fields plus the label / answers field).
    ``holdout``: the set is released as one file (``source.files["all"]``); raw
    split ``validation`` is a fixed hold-out of about that many rows (whole groups,
    see :func:`.splits.hold_out`) and ``train`` the rest. ``keep(row)`` drops raw
    rows before that (e.g. VADER's neutral band); a ValueError it raises is
    reported with the row's file:line.
    ``asset``: the :mod:`mptune.assets` entry that holds the task's files, fetched
    when a run needs it (``tasks.assets_for``).
    ``formats``: the task's other text formats by name (``attempt``, ``natural``; see
    :mod:`.formats`); the record's own template / label words are ``t5``. ``text_format`` names the
    one this record renders, ``base`` the registered record it was made from (:meth:`with_format`).
    ``value_text``: a regression value -> its target text (default T5's: nearest 0.2);
    ``per_answer``: training uses one example per gold answer (:func:`.loading.per_answer`).
    """

    name: str
    group: str
    kind: TaskKind
    source: Source
    template: str
    label_words: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    score_metrics: tuple[str, ...] | None = None  # averaged into "score"; default: all metrics
    label_field: str = "label"
    answers_field: str = "answers"
    label_map: Mapping[str, int] = field(default_factory=dict)  # raw label value -> index
    split: str = "auto"
    split_map: Mapping[str, str] = field(default_factory=dict)
    raw_sizes: Mapping[str, int] = field(default_factory=dict)
    prepare: Callable[[dict], dict] | None = None
    fields: tuple[str, ...] | None = None
    grouped: bool = False  # examples carry a group (MultiRC): splits cut by group
    description: str = ""
    holdout: int | None = None  # one-file release: rows held out as raw split "validation"
    keep: Callable[[dict], bool] | None = None  # raw rows to keep (files only)
    asset: str | None = None  # the mptune.assets entry holding this task's files
    formats: Mapping[str, Format] = field(default_factory=dict)
    text_format: str = DEFAULT
    value_text: Callable[[float], str] | None = None
    per_answer: bool = False
    base: Optional["Task"] = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        bad = [f for f in self.formats if f not in NAMES or f == DEFAULT]
        if bad:
            raise ValueError(f"task {self.name}: unknown format(s) {bad}; other formats are "
                             f"{[n for n in NAMES if n != DEFAULT]} ({DEFAULT!r} is the record's own template)")
        for n, f in self.formats.items():
            if f.label_words and self.label_words and len(f.label_words) != len(self.label_words):
                raise ValueError(f"task {self.name}: format {n!r} has {len(f.label_words)} label words for "
                                 f"the {len(self.label_words)} labels {list(self.label_words)}")
        set_("kind", TaskKind(self.kind))
        if self.label_words is not None:
            set_("label_words", tuple(str(w) for w in self.label_words))
        set_("metrics", tuple(self.metrics))
        if self.score_metrics is not None:
            set_("score_metrics", tuple(self.score_metrics))
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"task name must be alphanumeric (with _ or -), got {self.name!r}")
        unknown = [m for m in self.metrics + (self.score_metrics or ()) if m not in M.METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"task {self.name}: unknown metric(s) {unknown}; valid: {sorted(M.METRICS)}")
        allowed = {TaskKind.CLASSIFICATION: {"label", "group", "text"}, TaskKind.REGRESSION: {"value"},
                   TaskKind.GENERATION: {"text"}}[self.kind]
        bad = [m for m in self.metrics if M.METRICS[m][1] not in allowed]
        if bad:
            raise ValueError(f"task {self.name}: metric(s) {bad} do not apply to {self.kind.value} tasks")
        if self.split not in splits.POLICIES:
            raise ValueError(f"task {self.name}: split policy {self.split!r}; valid: {splits.POLICIES}")
        if self.split == "given" and set(self.split_map) != set(splits.PAPER_SPLITS):
            raise ValueError(f"task {self.name}: split 'given' needs split_map for {splits.PAPER_SPLITS}")
        if self.kind == TaskKind.CLASSIFICATION and not self.label_words and self.prepare is None:
            raise ValueError(f"task {self.name}: a classification task needs label_words "
                             "(or a prepare hook that sets per-example choices)")
        if self.source.hub is None and not self.source.files:
            raise ValueError(f"task {self.name}: source needs a Hub id or files")
        if self.holdout is not None and ("all" not in self.source.files or self.holdout < 2):
            raise ValueError(f"task {self.name}: a held-out task reads source.files['all'] and holds out "
                             f">= 2 rows, got files {sorted(self.source.files)}, holdout {self.holdout}")

    def __hash__(self) -> int:
        return hash(self.name)

    def with_format(self, name: str) -> "Task":
        """This task rendered in text format ``name`` (``data.format``): the record with that format's
        template, label words, prepare and kind; the registered record itself for ``t5`` or a format the
        task lacks (logged once). Raw label names keep mapping to the same label ids."""
        base = self.base or self
        if name not in NAMES:
            raise ValueError(f"data.format: unknown text format {name!r}; valid: {', '.join(NAMES)}")
        f = base.formats.get(name)
        if f is None:
            if name != DEFAULT and (base.name, name) not in _fallbacks:
                _fallbacks.add((base.name, name))
                log.warning("task %s has no %s format; using its %s format", base.name, name, DEFAULT)
            return base
        label_map = dict(base.label_map)
        if f.label_words is not None and base.label_words:  # "entailment" in a tsv still means label 0
            label_map = {**{w: i for i, w in enumerate(base.label_words)}, **label_map}
        return dataclasses.replace(
            base, template=f.template, label_words=base.label_words if f.label_words is None else f.label_words,
            label_map=label_map, prepare=base.prepare if f.prepare is None else f.prepare, kind=f.kind or base.kind,
            value_text=f.value_text or base.value_text, per_answer=f.per_answer, text_format=name, base=base)

    # --- the record ---------------------------------------------------------------------

    @property
    def primary_metric(self) -> str:
        return "score"

    def choices(self, ex: Example) -> list[str] | None:
        """Options for rank classification: per-example choices, else the label words."""
        if ex.choices is not None:
            return ex.choices
        if self.kind == TaskKind.CLASSIFICATION and self.label_words:
            return list(self.label_words)
        return None

    def required_fields(self, labeled: bool = True) -> tuple[str, ...]:
        if self.fields is not None:
            return self.fields
        extra = ()
        if labeled:
            extra = (self.answers_field,) if self.kind == TaskKind.GENERATION else (self.label_field,)
        return tuple(dict.fromkeys(template_fields(self.template) + extra))

    def source_label(self) -> str:
        """Short description of the data source, e.g. ``glue/rte + files:glue``."""
        return self.source.describe()

    # --- shorthands for .loading and .metrics ---------------------------------------------

    def load(self, split: str, data_dir: str | os.PathLike | None = None, seed: int = 42,
             limit: int | None = None) -> list[Example]:
        """Examples of a paper split (``train`` | ``dev`` | ``test``): :func:`.loading.load`."""
        return loading.load(self, split, data_dir, seed, limit)

    def load_raw(self, raw_split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """All examples of a released split, in file order: :func:`.loading.load_raw`."""
        return loading.load_raw(self, raw_split, data_dir)

    def sizes(self, data_dir: str | os.PathLike | None = None) -> dict[str, int | None]:
        """Sizes of the paper's train / dev / test (None: unknown): :func:`.loading.sizes`."""
        return loading.sizes(self, data_dir)

    def resolved_split(self, data_dir: str | os.PathLike | None = None) -> str:
        return loading.resolved_split(self, data_dir)

    def to_example(self, row: dict, uid: str = "", where: str = "", labeled: bool = True) -> Example:
        """One Hub-shaped row -> :class:`Example`: :func:`.loading.to_example`."""
        return loading.to_example(self, row, uid, where, labeled)

    def label_id(self, value: Any, choices: list[str] | None = None, where: str = "") -> int:
        return loading.label_id(self, value, choices, where)

    def score(self, examples: list[Example], predictions: list, match: M.Match = M.Match.lenient) -> dict[str, float]:
        """Every metric (0..100), ``score`` and ``invalid_rate``; generated labels matched by ``match``
        (exact | lenient): :func:`.metrics.score`."""
        return M.score(self, examples, predictions, match)
