"""Loading a task's examples: files or the Hub -> raw rows -> :class:`Example` s -> paper splits.

Where the rows come from (:func:`load_raw`):

1. the data dir (``data_dir`` argument, else ``$MPTUNE_DATA_DIR``, see
   :func:`mptune.assets.resolve_data_dir`): original files laid out as
   ``task.source.files`` says (for the built-in entries ``glue/<TASK>/*.tsv``,
   ``superglue/<Task>/*.jsonl``, ``squad/*.json``, ``vader/*.txt``,
   ``bigbench/<task>/task.json``: the layout of ``shared/data``), read by
   :mod:`.readers`. A task without a file layout (MRQA, WinoGrande) uses the Hub.
2. otherwise the Hugging Face Hub via ``datasets.load_dataset(hub, config)``.

Raw rows are first brought into the Hub's column names (``Source.columns``,
``Source.explode``), so one template / ``prepare`` serves both. A set released
as one file (``task.holdout``) gets its ``validation`` split from a fixed
hold-out (:func:`.splits.hold_out`). :func:`load` then builds the paper's
train / dev / test from the raw splits (:mod:`.splits`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..assets import resolve_data_dir
from . import splits
from .records import Example, TaskKind
from .readers import DataError, get_path, infer_format, read_rows

if TYPE_CHECKING:
    from .base import Task

Rows = Iterator[tuple[str, str, dict]]  # (uid, where for errors, Hub-shaped row)


# --- paper splits -----------------------------------------------------------------------

def load(task: "Task", split: str, data_dir: str | os.PathLike | None = None, seed: int = 42,
         limit: int | None = None) -> list[Example]:
    """Examples of a paper split (``train`` | ``dev`` | ``test``), see :mod:`.splits`.

    ``seed`` drives the dev/test cut (42 = the paper's). ``limit`` keeps the first
    ``limit`` examples of a derived (shuffled) split, or a seeded random subset of a
    released one (ATTEMPT's ``n_obs``).
    """
    if split not in splits.PAPER_SPLITS:
        raise ValueError(f"split must be one of {splits.PAPER_SPLITS}, got {split!r}")
    policy = resolved_split(task, data_dir)
    derived = True
    if policy == "given":
        exs, derived = load_raw(task, task.split_map[split], data_dir), False
    elif policy == "small":
        if split == "train":
            exs, derived = load_raw(task, "train", data_dir), False
        else:
            dev, test = splits.cut(load_raw(task, "validation", data_dir), None, seed)
            exs = dev if split == "dev" else test
    else:  # large
        if split == "test":
            exs, derived = load_raw(task, "validation", data_dir), False
        else:
            raw = load_raw(task, "train", data_dir)
            if len(raw) <= splits.LARGE_DEV_SIZE:
                where = raw[0].uid.rsplit(":", 1)[0] if raw else "its train split"
                raise DataError(f"task {task.name}: {where} has {len(raw)} training examples; the paper split of "
                                f"this large dataset holds out {splits.LARGE_DEV_SIZE} of them as dev, so it "
                                "needs more (is the file truncated?)")
            dev, train = splits.cut(raw, splits.LARGE_DEV_SIZE, seed)
            exs = dev if split == "dev" else train
    if limit is not None:
        exs = exs[:limit] if derived else splits.subsample(exs, limit, seed)
    return exs


def resolved_split(task: "Task", data_dir: str | os.PathLike | None = None) -> str:
    """The task's split policy with ``auto`` decided (counting the train split if its size is unknown)."""
    if task.split != "auto":
        return task.split
    n = task.raw_sizes.get("train")
    if n is None:
        n = len(load_raw(task, "train", data_dir))
    return "small" if n < splits.SMALL_LIMIT else "large"


def sizes(task: "Task", data_dir: str | os.PathLike | None = None) -> dict[str, int | None]:
    """Sizes of the paper's train / dev / test (None: unknown).

    Without a data dir (argument or ``$MPTUNE_DATA_DIR``) they come from the known
    Hub sizes; with one, splits whose files are there are counted.
    """
    base = resolve_data_dir(data_dir)
    counted: dict[str, list[Example]] = {}
    if base is not None and task.source.files:
        for raw in (task.split_map.values() if task.split == "given" else ("train", "validation")):
            try:
                counted[raw] = load_raw(task, raw, base)
            except DataError:
                pass  # file absent: keep the known size
    raw_sizes = {**task.raw_sizes, **{r: len(v) for r, v in counted.items()}}
    policy = task.split
    if policy == "auto" and raw_sizes.get("train") is not None:
        policy = "small" if raw_sizes["train"] < splits.SMALL_LIMIT else "large"
    out = splits.paper_sizes(policy, raw_sizes, dict(task.split_map))
    if task.grouped and policy == "small":  # cut by question, not by row
        if "validation" in counted:
            dev, test = splits.cut(counted["validation"], None, 42)
            out.update(dev=len(dev), test=len(test))
        else:
            out.update(dev=None, test=None)
    return out


# --- raw splits -------------------------------------------------------------------------

def load_raw(task: "Task", raw_split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """All examples of a released split (``train``, ``validation``, ``test`` ...) in file order;
    for a one-file set (``task.holdout``): ``train`` or the held-out ``validation``."""
    base = resolve_data_dir(data_dir)
    if task.holdout is None:
        return _examples(task, raw_split, base)
    if raw_split not in ("train", "validation"):
        raise DataError(f"task {task.name}: raw split {raw_split!r} does not exist; this set is one "
                        "file, split into 'train' and a held-out 'validation'")
    try:
        rest, held = splits.hold_out(_examples(task, "all", base), task.holdout)
    except ValueError as e:
        raise DataError(f"task {task.name}: {e}") from None
    return held if raw_split == "validation" else rest


def _examples(task: "Task", raw_split: str, base: Path | None) -> list[Example]:
    labeled = raw_split != "test"  # released test sets of GLUE/SuperGLUE have no labels
    src = task.source
    if src.files and (base is not None or not src.hub):
        rows = file_rows(task, raw_split, base, labeled)
    elif src.hub:
        rows = hub_rows(task, raw_split)
    else:
        raise DataError(f"task {task.name}: no data_dir given (or MPTUNE_DATA_DIR) and no Hub source")
    return [to_example(task, row, uid, where, labeled) for uid, where, row in rows]


def find_file(task: "Task", raw_split: str, base: Path | None) -> Path:
    """The file of a raw split: the first of its candidate paths that exists under ``base``."""
    if raw_split not in task.source.files:
        raise DataError(f"task {task.name}: no file for raw split {raw_split!r}; "
                        f"the file layout has {sorted(task.source.files)}")
    cands = task.source.files[raw_split]
    cands = (cands,) if isinstance(cands, (str, os.PathLike)) else tuple(cands)
    paths = [Path(c) if Path(c).is_absolute() or base is None else base / c for c in cands]
    for p in paths:
        if p.is_file():
            return p
    where = f"under {base}" if base is not None else "(no data_dir)"
    raise DataError(f"task {task.name}: {raw_split} file not found {where}; expected one of "
                    f"{[str(c) for c in cands]}")


def file_rows(task: "Task", raw_split: str, base: Path | None, labeled: bool) -> Rows:
    """Hub-shaped rows of a raw split's file; rows ``task.keep`` rejects are left out."""
    src = task.source
    path = find_file(task, raw_split, base)
    fmt = src.format or infer_format(path)
    headerless = src.headerless is True or (isinstance(src.headerless, tuple) and raw_split in src.headerless)
    required = () if src.explode else [src.columns.get(f, f) for f in task.required_fields(labeled)]
    try:
        rel = path.relative_to(base).as_posix() if base is not None else str(path)
    except ValueError:
        rel = str(path)
    for line, raw in read_rows(path, fmt, src.fieldnames if headerless else None, required):
        where = f"{path}:{line}"
        if src.explode is not None:
            try:
                parts = src.explode(raw)
            except (KeyError, TypeError, IndexError) as e:
                raise DataError(f"{where}: malformed record, missing or bad field {e}") from None
            rows = [(f"{rel}:{line}#{j}", row) for j, row in enumerate(parts)]
        else:
            row = dict(raw)
            for name, col in src.columns.items():
                try:
                    row[name] = get_path(raw, col)
                except KeyError:
                    pass  # required ones were checked by the reader; optional (test label) may lack
            rows = [(f"{rel}:{line}", row)]
        for uid, row in rows:
            if task.keep is None or _kept(task, row, where, labeled):
                yield uid, where, row


def _kept(task: "Task", row: dict, where: str, labeled: bool) -> bool:
    try:
        return bool(task.keep(row))
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{where}: bad row for task {task.name} ({type(e).__name__}: {e}); "
                        f"expected fields {list(task.required_fields(labeled))}") from None


def hub_rows(task: "Task", raw_split: str) -> Rows:
    import datasets

    src = task.source
    split = src.hub_splits.get(raw_split, raw_split)
    ds = datasets.load_dataset(src.hub, src.config, split=split, **dict(src.hub_kwargs))
    if src.hub_filter is not None:
        col, value = src.hub_filter
        ds = ds.filter(lambda v: v == value, input_columns=col)
    name = f"{src.hub}/{src.config}" if src.config else src.hub
    for i, row in enumerate(ds):
        uid = f"{name}:{split}:{i}"
        yield uid, uid, row


# --- rows -> examples -------------------------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or \
        (isinstance(v, numbers.Number) and not isinstance(v, bool) and v == -1)


def as_answers(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, dict):  # Hub squad: {"text": [...], "answer_start": [...]}
        v = v.get("text", [])
    if isinstance(v, str):
        return [v]
    return [str(a) for a in v]


def to_example(task: "Task", row: dict, uid: str = "", where: str = "", labeled: bool = True) -> Example:
    """One Hub-shaped row -> :class:`Example`; bad rows raise DataError naming ``where``."""
    try:
        f = task.prepare(dict(row)) if task.prepare is not None else dict(row)
        try:
            source = task.template.format(**f).strip()
        except KeyError as e:
            raise DataError(f"{where}: missing field {e.args[0]!r}; expected fields "
                            f"{list(task.required_fields(labeled))}") from None
        choices = [str(c) for c in f["choices"]] if f.get("choices") is not None else None
        ex = Example(source=source, target="", uid=uid, task=task.name, choices=choices,
                     group=None if f.get("group") is None else str(f["group"]))
        if task.kind == TaskKind.GENERATION:
            answers = as_answers(f.get(task.answers_field))
            if labeled and not answers:
                raise DataError(f"{where}: no answers; expected a non-empty {task.answers_field!r}")
            ex.answers, ex.target = answers or None, answers[0] if answers else ""
            return ex
        value = f.get(task.label_field)
        if _missing(value):
            if labeled:
                raise DataError(f"{where}: missing label {task.label_field!r}")
            return ex
        if task.kind == TaskKind.REGRESSION:
            ex.label = float(value)
            if not math.isfinite(ex.label):
                raise ValueError(f"label {value!r} is not a finite number")
            # T5: nearest 0.2 (half to even), one decimal; a format may say otherwise (ATTEMPT: 0.1)
            ex.target = task.value_text(ex.label) if task.value_text else f"{round(ex.label * 5) / 5:.1f}"
            return ex
        ex.label = label_id(task, value, choices, where)
        ex.target = (choices or task.label_words)[ex.label]
        if f.get("answers") is not None:
            ex.answers = as_answers(f["answers"])
        return ex
    except DataError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise DataError(f"{where}: bad row for task {task.name} ({type(e).__name__}: {e}); expected fields "
                        f"{list(task.required_fields(labeled))}") from None


def per_answer(examples: list[Example]) -> list[Example]:
    """One example per gold answer, each with that answer as its target (``Task.per_answer``: ATTEMPT's
    ReCoRD, ``tasks.py:731-739``); an example without answers stays as it is."""
    return [dataclasses.replace(e, target=a) for e in examples for a in (e.answers or [e.target])]


def label_id(task: "Task", value: Any, choices: list[str] | None = None, where: str = "") -> int:
    """Raw label value (Hub int, bool, label name, label_map key, digit string) -> index."""
    names = choices if choices is not None else list(task.label_words or ())
    if isinstance(value, bool):
        idx = int(value)
    elif isinstance(value, numbers.Integral):
        idx = int(value)
    else:
        s = str(value).strip()
        if s in task.label_map:
            idx = task.label_map[s]
        elif choices is None and s in names:
            idx = names.index(s)
        elif s.isdigit():
            idx = int(s)
        else:
            idx = -1
    if not 0 <= idx < len(names):
        valid = list(task.label_map) or names or []
        raise DataError(f"{where}: unknown label {value!r}; expected one of {valid}")
    return idx
