"""The task abstraction: one declarative :class:`Task` entry per dataset.

A task turns raw rows (a Hub dataset's rows, or rows read from the dataset's
original release files) into text-to-text :class:`Example` s with a T5-style
template, and scores predictions with its metrics.

Where the rows come from (:meth:`Task.load` / :meth:`Task.load_raw`):

1. ``data_dir`` argument, else the ``MPTUNE_DATA_DIR`` environment variable: a
   folder of original files laid out as ``Source.files`` says (for the built-in
   entries: ``glue/<TASK>/*.tsv``, ``superglue/<Task>/*.jsonl``, ``squad/*.json``,
   i.e. the layout of ``shared/data``). A task without a file layout (MRQA,
   WinoGrande) falls back to the Hub.
2. Otherwise the Hugging Face Hub via ``datasets.load_dataset(hub, config)``.

Raw rows are first brought into the Hub's column names (``Source.columns``,
``Source.explode``), so one ``template`` / ``prepare`` serves both sources.

Predictions for :meth:`Task.score`: classification -> ``int`` index into
``task.choices(ex)`` (a generated ``str`` is matched against the choices;
no match counts as wrong); generation -> the generated ``str``; regression ->
the generated ``str`` parsed as T5 does (unparsable -> ``-1.0``) or a number.
"""

from __future__ import annotations

import math
import numbers
import os
import string
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

from . import metrics as M
from . import splits
from .readers import DataError, get_path, infer_format, read_rows

PAPER_SPLITS = ("train", "dev", "test")


class TaskKind(str, Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    GENERATION = "generation"


@dataclass
class Example:
    source: str  # templated model input
    target: str  # gold target text for teacher forcing ("" when unlabeled)
    label: Any = None  # class index (classification), float (regression), None (generation)
    answers: list[str] | None = None  # all gold answers (QA, ReCoRD)
    choices: list[str] | None = None  # per-example options (ReCoRD entities, COPA, WinoGrande)
    group: str | None = None  # metric grouping key (MultiRC question)
    uid: str = ""  # "path:line" for files, "hub/config:split:index" for Hub rows
    task: str = ""


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
    format: str | None = None  # tsv | csv | jsonl | squad; None: from the extension
    columns: Mapping[str, str] = field(default_factory=dict)
    fieldnames: tuple[str, ...] | None = None
    headerless: bool | tuple[str, ...] = False
    explode: Callable[[dict], list[dict]] | None = None

    def describe(self) -> str:
        hub = f"{self.hub}/{self.config}" if self.config else (self.hub or "")
        files = sorted({str(p if isinstance(p, str) else p[0]).split("/")[0] for p in self.files.values()})
        return " + ".join(x for x in (hub, ",".join(f"files:{f}" for f in files)) if x)


def _fields(template: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or \
        (isinstance(v, numbers.Number) and not isinstance(v, bool) and v == -1)


def _as_answers(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, dict):  # Hub squad: {"text": [...], "answer_start": [...]}
        v = v.get("text", [])
    if isinstance(v, str):
        return [v]
    return [str(a) for a in v]


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
    asset: str | None = None  # the mptune.assets entry holding this task's files (fetched on demand)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
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
        if self.split == "given" and set(self.split_map) != set(PAPER_SPLITS):
            raise ValueError(f"task {self.name}: split 'given' needs split_map for {PAPER_SPLITS}")
        if self.kind == TaskKind.CLASSIFICATION and not self.label_words and self.prepare is None:
            raise ValueError(f"task {self.name}: a classification task needs label_words "
                             "(or a prepare hook that sets per-example choices)")
        if self.source.hub is None and not self.source.files:
            raise ValueError(f"task {self.name}: source needs a Hub id or files")

    def __hash__(self) -> int:
        return hash(self.name)

    # --- public API -------------------------------------------------------------------

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

    def load(self, split: str, data_dir: str | os.PathLike | None = None, seed: int = 42,
             limit: int | None = None) -> list[Example]:
        """Examples of a paper split (``train`` | ``dev`` | ``test``), see :mod:`splits`.

        ``seed`` drives the dev/test cut (42 = the paper's). ``limit`` keeps the
        first ``limit`` examples of a derived (shuffled) split, or a seeded random
        subset of a released one (ATTEMPT's ``n_obs``).
        """
        if split not in PAPER_SPLITS:
            raise ValueError(f"split must be one of {PAPER_SPLITS}, got {split!r}")
        policy = self.resolved_split(data_dir)
        derived = True
        if policy == "given":
            exs, derived = self.load_raw(self.split_map[split], data_dir), False
        elif policy == "small":
            if split == "train":
                exs, derived = self.load_raw("train", data_dir), False
            else:
                dev, test = splits.cut(self.load_raw("validation", data_dir), None, seed)
                exs = dev if split == "dev" else test
        else:  # large
            if split == "test":
                exs, derived = self.load_raw("validation", data_dir), False
            else:
                raw = self.load_raw("train", data_dir)
                if len(raw) <= splits.LARGE_DEV_SIZE:
                    where = raw[0].uid.rsplit(":", 1)[0] if raw else "its train split"
                    raise DataError(f"task {self.name}: {where} has {len(raw)} training examples; the paper split of "
                                    f"this large dataset holds out {splits.LARGE_DEV_SIZE} of them as dev, so it "
                                    "needs more (is the file truncated?)")
                dev, train = splits.cut(raw, splits.LARGE_DEV_SIZE, seed)
                exs = dev if split == "dev" else train
        if limit is not None:
            exs = exs[:limit] if derived else splits.subsample(exs, limit, seed)
        return exs

    def score(self, examples: list[Example], predictions: list) -> dict[str, float]:
        """Every metric of the task (0..100) plus ``score``, the mean of ``score_metrics``."""
        if len(examples) != len(predictions):
            raise ValueError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        inputs: dict[str, tuple] = {}
        if self.kind == TaskKind.CLASSIFICATION:
            golds = [ex.label for ex in examples]
            if any(g is None for g in golds):
                raise ValueError(f"{self.name}: cannot score unlabeled examples")
            idx = [self._pred_index(ex, p) for ex, p in zip(examples, predictions)]
            texts = [self.choices(ex)[i] if i >= 0 else (p if isinstance(p, str) else "")
                     for ex, i, p in zip(examples, idx, predictions)]
            inputs = {"label": (idx, golds), "group": (idx, golds, [ex.group for ex in examples]),
                      "text": (texts, [ex.answers or [ex.target] for ex in examples])}
        elif self.kind == TaskKind.REGRESSION:
            golds = [ex.label for ex in examples]
            if any(g is None for g in golds):
                raise ValueError(f"{self.name}: cannot score unlabeled examples")
            preds = [float(p) if isinstance(p, numbers.Number) else M.string_to_float(p) for p in predictions]
            inputs = {"value": (preds, golds)}
        else:
            answers = [ex.answers or ([ex.target] if ex.target else []) for ex in examples]
            inputs = {"text": (["" if p is None else str(p) for p in predictions], answers)}
        out = {m: float(M.METRICS[m][0](*inputs[M.METRICS[m][1]])) for m in self.metrics}
        used = self.score_metrics or self.metrics
        out["score"] = sum(out[m] if m in out else M.METRICS[m][0](*inputs[M.METRICS[m][1]])
                           for m in used) / len(used)
        return out

    # --- raw splits -------------------------------------------------------------------

    def resolved_split(self, data_dir=None) -> str:
        if self.split != "auto":
            return self.split
        n = self.raw_sizes.get("train")
        if n is None:
            n = len(self.load_raw("train", data_dir))
        return "small" if n < splits.SMALL_LIMIT else "large"

    def sizes(self, data_dir: str | os.PathLike | None = None) -> dict[str, int | None]:
        """Sizes of the paper's train / dev / test (None: unknown).

        Without a data dir (argument or ``$MPTUNE_DATA_DIR``) they come from the
        known Hub sizes; with one, splits whose files are there are counted.
        """
        if data_dir is None:
            data_dir = os.environ.get("MPTUNE_DATA_DIR") or None
        counted: dict[str, list[Example]] = {}
        if data_dir is not None and self.source.files:
            for raw in (self.split_map.values() if self.split == "given" else ("train", "validation")):
                try:
                    counted[raw] = self.load_raw(raw, data_dir)
                except DataError:
                    pass  # file absent: keep the known size
        raw_sizes = {**self.raw_sizes, **{r: len(v) for r, v in counted.items()}}
        policy = self.split if self.split != "auto" else self.resolved_split_known(raw_sizes)
        out = splits.paper_sizes(policy or "auto", raw_sizes, dict(self.split_map))
        if self.grouped and policy == "small":  # cut by question, not by row
            if "validation" in counted:
                dev, test = splits.cut(counted["validation"], None, 42)
                out.update(dev=len(dev), test=len(test))
            else:
                out.update(dev=None, test=None)
        return out

    def source_label(self) -> str:
        """Short description of the data source, e.g. ``glue/rte + files:glue``."""
        return self.source.describe()

    def resolved_split_known(self, raw_sizes: Mapping[str, int] | None = None) -> str | None:
        if self.split != "auto":
            return self.split
        n = (self.raw_sizes if raw_sizes is None else raw_sizes).get("train")
        return None if n is None else ("small" if n < splits.SMALL_LIMIT else "large")

    def required_fields(self, labeled: bool = True) -> tuple[str, ...]:
        if self.fields is not None:
            return self.fields
        extra = ()
        if labeled:
            extra = (self.answers_field,) if self.kind == TaskKind.GENERATION else (self.label_field,)
        return tuple(dict.fromkeys(_fields(self.template) + extra))

    def load_raw(self, raw_split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """All examples of a released split (``train``, ``validation``, ``test`` ...) in file order."""
        if data_dir is None and os.environ.get("MPTUNE_DATA_DIR"):
            data_dir = os.environ["MPTUNE_DATA_DIR"]
        base = Path(data_dir) if data_dir is not None else None
        labeled = raw_split != "test"  # released test sets of GLUE/SuperGLUE have no labels
        src = self.source
        if src.files and (base is not None or not src.hub):
            rows = self._file_rows(raw_split, base, labeled)
        elif src.hub:
            rows = self._hub_rows(raw_split)
        else:
            raise DataError(f"task {self.name}: no data_dir given (or MPTUNE_DATA_DIR) and no Hub source")
        return [self.to_example(row, uid, where, labeled) for uid, where, row in rows]

    def _find_file(self, raw_split: str, base: Path | None) -> Path:
        if raw_split not in self.source.files:
            raise DataError(f"task {self.name}: no file for raw split {raw_split!r}; "
                            f"the file layout has {sorted(self.source.files)}")
        cands = self.source.files[raw_split]
        cands = (cands,) if isinstance(cands, (str, os.PathLike)) else tuple(cands)
        paths = [Path(c) if Path(c).is_absolute() or base is None else base / c for c in cands]
        for p in paths:
            if p.is_file():
                return p
        where = f"under {base}" if base is not None else "(no data_dir)"
        raise DataError(f"task {self.name}: {raw_split} file not found {where}; expected one of "
                        f"{[str(c) for c in cands]}")

    def _file_rows(self, raw_split: str, base: Path | None, labeled: bool):
        src = self.source
        path = self._find_file(raw_split, base)
        fmt = src.format or infer_format(path)
        headerless = src.headerless is True or (isinstance(src.headerless, tuple) and raw_split in src.headerless)
        required = () if (src.explode or fmt == "squad") else \
            [src.columns.get(f, f) for f in self.required_fields(labeled)]
        rows = read_rows(path, fmt, src.fieldnames if headerless else None, required)
        try:
            rel = path.relative_to(base).as_posix() if base is not None else str(path)
        except ValueError:
            rel = str(path)
        for where, raw in rows:
            if src.explode is not None:
                try:
                    parts = src.explode(raw)
                except (KeyError, TypeError, IndexError) as e:
                    raise DataError(f"{path}:{where}: malformed record, missing or bad field {e}") from None
                for j, row in enumerate(parts):
                    yield f"{rel}:{where}#{j}", f"{path}:{where}", row
            else:
                row = dict(raw)
                for name, col in src.columns.items():
                    try:
                        row[name] = get_path(raw, col)
                    except KeyError:
                        pass  # required ones were checked by the reader; optional (test label) may lack
                yield f"{rel}:{where}", f"{path}:{where}", row

    def _hub_rows(self, raw_split: str):
        import datasets

        src = self.source
        split = src.hub_splits.get(raw_split, raw_split)
        ds = datasets.load_dataset(src.hub, src.config, split=split, **dict(src.hub_kwargs))
        if src.hub_filter is not None:
            col, value = src.hub_filter
            ds = ds.filter(lambda v: v == value, input_columns=col)
        name = f"{src.hub}/{src.config}" if src.config else src.hub
        for i, row in enumerate(ds):
            uid = f"{name}:{split}:{i}"
            yield uid, uid, row

    # --- rows -> examples ---------------------------------------------------------------

    def to_example(self, row: dict, uid: str = "", where: str = "", labeled: bool = True) -> Example:
        """One Hub-shaped row -> :class:`Example`; bad rows raise DataError naming ``where``."""
        try:
            f = self.prepare(dict(row)) if self.prepare is not None else dict(row)
            try:
                source = self.template.format(**f).strip()
            except KeyError as e:
                raise DataError(f"{where}: missing field {e.args[0]!r}; expected fields "
                                f"{list(self.required_fields(labeled))}") from None
            choices = [str(c) for c in f["choices"]] if f.get("choices") is not None else None
            ex = Example(source=source, target="", uid=uid, task=self.name, choices=choices,
                         group=None if f.get("group") is None else str(f["group"]))
            if self.kind == TaskKind.GENERATION:
                answers = _as_answers(f.get(self.answers_field))
                if labeled and not answers:
                    raise DataError(f"{where}: no answers; expected a non-empty {self.answers_field!r}")
                ex.answers, ex.target = answers or None, answers[0] if answers else ""
                return ex
            value = f.get(self.label_field)
            if _missing(value):
                if labeled:
                    raise DataError(f"{where}: missing label {self.label_field!r}")
                return ex
            if self.kind == TaskKind.REGRESSION:
                ex.label = float(value)
                if not math.isfinite(ex.label):
                    raise ValueError(f"label {value!r} is not a finite number")
                ex.target = f"{round(ex.label * 5) / 5:.1f}"  # T5: nearest 0.2 (half to even), one decimal
                return ex
            ex.label = self.label_id(value, choices, where)
            ex.target = (choices or self.label_words)[ex.label]
            if f.get("answers") is not None:
                ex.answers = _as_answers(f["answers"])
            return ex
        except DataError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise DataError(f"{where}: bad row for task {self.name} ({type(e).__name__}: {e}); expected fields "
                            f"{list(self.required_fields(labeled))}") from None

    def label_id(self, value: Any, choices: list[str] | None = None, where: str = "") -> int:
        """Raw label value (Hub int, bool, label name, label_map key, digit string) -> index."""
        names = choices if choices is not None else list(self.label_words or ())
        if isinstance(value, bool):
            idx = int(value)
        elif isinstance(value, numbers.Integral):
            idx = int(value)
        else:
            s = str(value).strip()
            if s in self.label_map:
                idx = self.label_map[s]
            elif choices is None and s in names:
                idx = names.index(s)
            elif s.isdigit():
                idx = int(s)
            else:
                idx = -1
        if not 0 <= idx < len(names):
            valid = list(self.label_map) or names or []
            raise DataError(f"{where}: unknown label {value!r}; expected one of {valid}")
        return idx

    def _pred_index(self, ex: Example, p: Any) -> int:
        opts = self.choices(ex) or []
        if isinstance(p, numbers.Integral) and not isinstance(p, bool):
            return int(p) if 0 <= int(p) < len(opts) else -1
        if isinstance(p, str):
            s = p.strip()
            for cmp in (lambda c: c == s, lambda c: c.strip().lower() == s.lower()):
                hits = [i for i, c in enumerate(opts) if cmp(c)]
                if hits:
                    return hits[0]
        return -1
