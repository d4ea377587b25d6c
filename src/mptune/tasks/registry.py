"""Task registry: ``get_task`` / ``list_tasks`` / ``register_task`` and user tasks from YAML dicts."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from ..errors import UnknownNameError
from .base import Source, Task, TaskKind
from .readers import infer_format

_TASKS: dict[str, Task] = {}
ALIASES: dict[str, str] = {}  # alternative spelling -> registered name


def _key(name: str) -> str:
    return name.strip().lower()


def register_task(task: Task, aliases: tuple[str, ...] = ()) -> Task:
    """Add ``task`` to the registry (a duplicate name is an error)."""
    if not isinstance(task, Task):
        raise TypeError(f"expected a Task, got {type(task).__name__}")
    for name in (task.name, *aliases):
        k = _key(name)
        if k in _TASKS or k in ALIASES:
            raise ValueError(f"task {name!r} is already registered")
    _TASKS[_key(task.name)] = task
    for a in aliases:
        ALIASES[_key(a)] = _key(task.name)
    return task


def get_task(name: str) -> Task:
    """The registered task ``name`` (case-insensitive; aliases such as ``sst-2`` work)."""
    k = _key(name)
    k = ALIASES.get(k, k)
    if k in _TASKS:
        return _TASKS[k]
    close = difflib.get_close_matches(k, list(_TASKS) + list(ALIASES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown task {name!r}.{hint} Valid tasks: {', '.join(sorted(_TASKS))}")


def assets_for(task_names) -> list[str]:
    """The data assets (``mptune.assets`` names) that the tasks ``task_names`` read (each task's
    ``asset``), in first-use order; tasks loaded from the Hub or the user's own files need none."""
    return list(dict.fromkeys(a for name in task_names if (a := get_task(name).asset)))


def list_tasks() -> list[Task]:
    """All registered tasks, in registration order (sources, GLUE, SuperGLUE, MRQA, others, user)."""
    return list(_TASKS.values())


# --- user tasks ------------------------------------------------------------------------

USER_KEYS = {
    "name": "task name (also the template's default prefix)",
    "files": "mapping split -> file: {train, dev, test} (paper splits as given) or {train, validation[, test]}",
    "template": "str.format template over the columns, e.g. 'review: {text}'",
    "kind": "classification | regression | generation (default: classification with label_words, else generation)",
    "label_words": "verbalizers, index = label id",
    "label_map": "raw label value -> label id",
    "label_field": "column holding the label (default 'label')",
    "answers_field": "column holding the answer(s) for generation (default 'answers')",
    "metrics": "metric names (default accuracy / pearson+spearman / squad_em+squad_f1)",
    "score_metrics": "metrics averaged into 'score' (default: all)",
    "columns": "mapping field name -> file column",
    "format": "tsv | csv | jsonl | squad (default: from the extension)",
    "header": "false for header-less tsv/csv (then give fieldnames)",
    "fieldnames": "column names of header-less files",
    "split": "auto | small | large | given (default: given with a dev file, else auto)",
    "group": "group name shown by `mptune tasks` (default 'custom')",
    "hub": "Hugging Face dataset id (instead of files)",
    "config": "Hub config name",
    "description": "free text",
}

_DEFAULT_METRICS = {TaskKind.CLASSIFICATION: ("accuracy",), TaskKind.REGRESSION: ("pearson", "spearman"),
                    TaskKind.GENERATION: ("squad_em", "squad_f1")}


def task_from_dict(d: dict[str, Any], base_dir: str | os.PathLike | None = None) -> Task:
    """A user task from a YAML/JSON mapping; relative file paths resolve against ``base_dir``.

    Example::

        name: reviews
        files: {train: train.jsonl, dev: dev.jsonl, test: test.jsonl}
        template: "review: {text}"
        label_words: [negative, positive]

    Unknown keys are an error naming the key (see ``USER_KEYS`` for the valid ones).
    """
    if not isinstance(d, dict):
        raise ValueError(f"a task definition must be a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in USER_KEYS]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, USER_KEYS, 1)) else "")
                 for k in unknown]
        raise ValueError(f"unknown task key(s) {', '.join(hints)}; valid keys: {', '.join(USER_KEYS)}")
    for k in ("name", "template"):
        if k not in d:
            raise ValueError(f"task definition needs {k!r}")
    if "files" not in d and "hub" not in d:
        raise ValueError(f"task {d['name']!r}: give 'files' (split -> path) or 'hub'")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files = {}
    for split, p in (d.get("files") or {}).items():
        if split not in ("train", "dev", "validation", "test"):
            raise ValueError(f"task {d['name']!r}: unknown split {split!r} in files; "
                             "use train, dev, validation, test")
        files[split] = str(Path(p) if Path(p).is_absolute() else (base / p).resolve())
    label_words = tuple(d["label_words"]) if d.get("label_words") is not None else None
    kind = TaskKind(d.get("kind") or ("classification" if label_words else "generation"))
    split = d.get("split") or ("given" if "dev" in files else "auto")
    split_map = {"train": "train", "dev": "dev", "test": "test"} if split == "given" else {}
    headerless = d.get("header", True) is False
    fmt = d.get("format") or (infer_format(next(iter(files.values()))) if files else None)
    source = Source(hub=d.get("hub"), config=d.get("config"), files=files, format=fmt,
                    columns=dict(d.get("columns") or {}),
                    fieldnames=tuple(d["fieldnames"]) if d.get("fieldnames") else None,
                    headerless=headerless)
    if headerless and not source.fieldnames:
        raise ValueError(f"task {d['name']!r}: header: false needs fieldnames")
    return Task(name=str(d["name"]), group=str(d.get("group", "custom")), kind=kind, source=source,
                template=str(d["template"]), label_words=label_words,
                metrics=tuple(d.get("metrics") or _DEFAULT_METRICS[kind]),
                score_metrics=tuple(d["score_metrics"]) if d.get("score_metrics") else None,
                label_field=d.get("label_field", "label"), answers_field=d.get("answers_field", "answers"),
                label_map={str(k): int(v) for k, v in (d.get("label_map") or {}).items()},
                split=split, split_map=split_map, description=str(d.get("description", "")))
