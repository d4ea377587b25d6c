"""User task definitions: a YAML/JSON mapping <-> :class:`Task`.

Example (``examples/own_task/urgency.yaml``)::

    name: urgency
    files: {train: train.jsonl, dev: dev.jsonl, test: test.jsonl}
    template: "ticket: {text}"
    label_words: [routine, urgent]
    formats:                                  # optional: other text formats (data.format)
      natural: {template: "Ticket: {text}\nIs it urgent?\nAnswer:", label_words: ["no", "yes"]}

The valid keys are :data:`USER_KEYS`. Data files (``files``): an absolute path is
used as it is; a relative one is looked up under the data dir (``data.data_dir``,
else ``$MPTUNE_DATA_DIR``) when the file is there, else next to the definition
(``base_dir``: the definition file's folder). The resulting Task holds absolute
paths, which :func:`task_definition` writes back out (a stage folder's copy).

:func:`parse` collects every problem it finds (:class:`Problem`: the key, and the
definition file's line when known) instead of stopping at the first;
:func:`task_from_dict` raises them together as one :class:`TaskDefinitionError`.
"""

from __future__ import annotations

import difflib
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import MptuneError
from . import metrics as M
from . import splits
from .base import Source, Task
from .formats import DEFAULT, NAMES, Format
from .records import TaskKind
from .readers import FORMATS, infer_format

USER_KEYS = {
    "name": "task name: letters, digits, _ or - (names the stage folders and prediction files)",
    "files": "mapping split -> file: {train, dev, test} (paper splits as given), {train, validation[, test]}, "
             "or {all} with holdout (a set released as one file)",
    "holdout": "with files {all}: rows held out (seeded, whole groups) as the validation split; the split rule "
               "then applies to train = the rest",
    "template": "str.format template over the columns, e.g. 'review: {text}'",
    "kind": "classification | regression | generation (default: classification with label_words, else generation)",
    "label_words": "verbalizers, index = label id",
    "formats": "other text formats (data.format) by name: {attempt | natural: {template, label_words}}; "
               "template / label_words above are the t5 (default) one",
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
FILE_SPLITS = ("train", "dev", "validation", "test", "all")
_DEFAULT_METRICS = {TaskKind.CLASSIFICATION: ("accuracy",), TaskKind.REGRESSION: ("pearson", "spearman"),
                    TaskKind.GENERATION: ("squad_em", "squad_f1")}


class TaskDefinitionError(MptuneError, ValueError):
    """A task definition has problems; the message lists each, naming the file:line and key."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition: its key (``files.train``; "" for the whole), where (``file:line``)."""

    key: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        return ": ".join(x for x in (self.where, self.key, self.message) if x)

    @classmethod
    def at(cls, key: str, message: str, origin: str = "", lines: Mapping[str, int] | None = None) -> "Problem":
        """A problem at ``key`` of the definition file ``origin``, at the key's line (else its parent's)."""
        line = (lines or {}).get(key, (lines or {}).get(key.split(".")[0]))
        return cls(key, message, f"{origin}:{line}" if origin and line else origin)


def raise_problems(problems: list[Problem], origin: str = "", hint: str = "") -> None:
    """Nothing if no problems; else one TaskDefinitionError listing them all."""
    if not problems:
        return
    head = (f"{origin}: " if origin else "") + f"{len(problems)} problem(s) in the task definition"
    raise TaskDefinitionError("\n  - ".join([head + (f" ({hint})" if hint else "") + ":", *map(str, problems)]))


def _str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)


def resolve_file(p: str, base_dir: Path, data_dir: Path | None) -> Path:
    """The rule for a relative data path: under data_dir if the file is there, else next to the definition."""
    p = Path(p).expanduser()
    if p.is_absolute():
        return p
    if data_dir is not None and (data_dir / p).is_file():
        return (data_dir / p).resolve()
    return (base_dir / p).resolve()


def parse(d: Any, base_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
          origin: str = "", lines: Mapping[str, int] | None = None,
          check_files: bool = True) -> tuple[Task | None, list[Problem]]:
    """A definition mapping -> (Task, []), or (None, every problem found).

    ``origin`` (the file) and ``lines`` (key -> line, dotted for nested keys) say where each
    problem is. ``check_files``: a data file that does not exist is a problem too.
    """
    problems: list[Problem] = []

    def bad(key: str, msg: str) -> None:
        problems.append(Problem.at(key, msg, origin, lines))

    if not isinstance(d, dict):
        bad("", f"a task definition is a mapping of keys ({', '.join(USER_KEYS)}), got {type(d).__name__}")
        return None, problems
    for k in d:
        if k not in USER_KEYS:
            m = difflib.get_close_matches(str(k), USER_KEYS, 1)
            bad(str(k), "unknown key" + (f" (did you mean {m[0]!r}?)" if m else "") +
                f"; valid keys: {', '.join(USER_KEYS)}")
    for k in ("name", "template"):
        if k not in d:
            bad(k, "missing; every task definition needs it")
    if ("files" in d) == ("hub" in d):
        bad("files", "give either 'files' (split -> data file) or 'hub' (a Hugging Face dataset id), not "
            + ("both" if "files" in d else "neither"))
    for k in ("name", "template", "label_field", "answers_field", "group", "description", "hub", "config",
              "kind", "split", "format"):
        if k in d and not isinstance(d[k], str):
            bad(k, f"must be a string, got {type(d[k]).__name__} {d[k]!r}")
    name = d.get("name")
    if isinstance(name, str) and not (name and name.replace("_", "").replace("-", "").isalnum()):
        bad("name", f"must be letters, digits, _ or -, got {name!r}")
    if isinstance(d.get("template"), str):
        _check_template("template", d["template"], bad)
    kind = d.get("kind")
    if isinstance(kind, str) and kind not in {k.value for k in TaskKind}:
        bad("kind", f"unknown kind {kind!r}; valid: {', '.join(k.value for k in TaskKind)}")
    lw = d.get("label_words")
    if lw is not None and not (_str_list(lw) and lw):
        bad("label_words", f"must be a non-empty list of strings, got {lw!r}")
    elif lw is not None and len(set(lw)) != len(lw):
        bad("label_words", f"has duplicates: {lw}")
    if lw is None and (kind == "classification" or (kind is None and "label_map" in d)):
        bad("label_words", "missing; a classification task needs its label words (label_map maps raw "
            "labels to indices into them)")
    formats = _parse_formats(d.get("formats"), lw if _str_list(lw) else None, bad)
    lm = d.get("label_map")
    if lm is not None:
        if not isinstance(lm, dict):
            bad("label_map", f"must be a mapping raw label -> label index, got {type(lm).__name__}")
        else:
            n = len(lw) if _str_list(lw) else None
            for k, v in lm.items():
                if not (isinstance(v, int) and not isinstance(v, bool)) or (n is not None and not 0 <= v < n):
                    bad(f"label_map.{k}", f"maps to {v!r}, not an index into label_words "
                        f"(0..{n - 1}: {lw})" if n else f"maps to {v!r}, not a label index")
    split = d.get("split")
    if isinstance(split, str) and split not in splits.POLICIES:
        bad("split", f"unknown split rule {split!r}; valid: {', '.join(splits.POLICIES)}")
    fmt = d.get("format")
    if isinstance(fmt, str) and fmt not in FORMATS:
        bad("format", f"unknown format {fmt!r}; valid: {', '.join(sorted(FORMATS))}")
    if "header" in d and not isinstance(d["header"], bool):
        bad("header", f"must be true or false, got {d['header']!r}")
    if d.get("fieldnames") is not None and not _str_list(d["fieldnames"]):
        bad("fieldnames", f"must be a list of column names, got {d['fieldnames']!r}")
    if d.get("header") is False and not d.get("fieldnames"):
        bad("fieldnames", "missing; header: false needs the column names")
    cols = d.get("columns")
    if cols is not None and not (isinstance(cols, dict) and all(isinstance(v, str) for v in cols.values())):
        bad("columns", f"must be a mapping field name -> file column, got {cols!r}")
    for k in ("metrics", "score_metrics"):
        v = d.get(k)
        if v is not None and not (_str_list(v) and v):
            bad(k, f"must be a non-empty list of metric names, got {v!r}")
        elif v is not None and (unknown := [m for m in v if m not in M.METRICS]):
            bad(k, f"unknown metric(s) {unknown}; valid: {', '.join(sorted(M.METRICS))}")

    holdout = d.get("holdout")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    ddir = Path(data_dir).expanduser() if data_dir not in (None, "") else None
    files: dict[str, str] = {}
    raw_files = d.get("files")
    if raw_files is not None and not (isinstance(raw_files, dict) and raw_files):
        bad("files", f"must be a mapping split -> data file, got {raw_files!r}")
    elif raw_files:
        for sp, p in raw_files.items():
            if sp not in FILE_SPLITS:
                bad(f"files.{sp}", f"unknown split {sp!r}; use {', '.join(FILE_SPLITS)}")
            elif not isinstance(p, str) or not p:
                bad(f"files.{sp}", f"must be a file path, got {p!r}")
            else:
                path = resolve_file(p, base, ddir)
                if check_files and not path.is_file():
                    tried = ([str(ddir / p)] if ddir and not Path(p).expanduser().is_absolute() else []) + [str(path)]
                    bad(f"files.{sp}", f"data file not found: {p!r} (looked for {' and '.join(tried)})")
                files[sp] = str(path)
        rule = split or ("given" if "dev" in raw_files else "auto")
        need = ("train", "dev", "test") if rule == "given" else ("train", "validation")
        missing = [s for s in need if s not in raw_files]
        if "all" in raw_files:  # one file: the hold-out makes train / validation, then the rule applies
            if len(raw_files) > 1 or rule == "given":
                bad("files", "'all' is the whole set in one file: give no other split files, and a split rule "
                    "other than 'given'")
            if not (isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 2):
                bad("holdout", f"files {{all}} needs holdout: the number of rows (>= 2) held out as validation, "
                    f"got {holdout!r}")
        elif holdout is not None:
            bad("holdout", "only with files {all} (a set released as one file)")
        elif missing:
            bad("files", f"the split rule {rule!r} needs files for {list(need)}; missing {missing}"
                + (" (or give dev and test files: split rule 'given')" if rule != "given" else ""))
    if problems:
        return None, problems

    label_words = tuple(lw) if lw is not None else None
    kind = TaskKind(kind or ("classification" if label_words else "generation"))
    split = split or ("given" if "dev" in files else "auto")
    source = Source(hub=d.get("hub"), config=d.get("config"), files=files,
                    format=fmt or (infer_format(next(iter(files.values()))) if files else None),
                    columns=dict(cols or {}), fieldnames=tuple(d["fieldnames"]) if d.get("fieldnames") else None,
                    headerless=d.get("header", True) is False)
    try:
        task = Task(name=name, group=str(d.get("group", "custom")), kind=kind, source=source, template=d["template"],
                    label_words=label_words, metrics=tuple(d.get("metrics") or _DEFAULT_METRICS[kind]),
                    score_metrics=tuple(d["score_metrics"]) if d.get("score_metrics") else None,
                    label_field=d.get("label_field", "label"), answers_field=d.get("answers_field", "answers"),
                    label_map={str(k): v for k, v in (lm or {}).items()}, split=split,
                    split_map={s: s for s in splits.PAPER_SPLITS} if split == "given" else {},
                    description=str(d.get("description", "")), formats=formats, holdout=holdout)
    except ValueError as e:  # what only the record checks (a metric that does not fit the kind ...)
        bad("metrics" if "metrics" in d or "score_metrics" in d else "", str(e))
        return None, problems
    return task, problems


def _check_template(key: str, template: str, bad) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        bad(key, f"not a valid str.format template ({e}): {template!r}")
    else:
        if any(f == "" or f.isdigit() for f in fields):
            bad(key, f"every {{}} needs a field name, e.g. {{text}}: {template!r}")
        elif not fields:
            bad(key, f"uses no {{field}} of the data: {template!r}")


def _parse_formats(v: Any, label_words: list | None, bad) -> dict[str, Format]:
    """The ``formats`` key -> {name: Format}; problems go to ``bad`` (key ``formats.<name>``)."""
    if v is None:
        return {}
    others = [n for n in NAMES if n != DEFAULT]
    if not isinstance(v, dict):
        bad("formats", f"must be a mapping format name ({', '.join(others)}) -> {{template, label_words}}, got {v!r}")
        return {}
    out = {}
    for name, f in v.items():
        key = f"formats.{name}"
        if name not in others:
            bad(key, f"unknown format {name!r}; valid: {', '.join(others)} ({DEFAULT} is the definition's own "
                "template and label_words)")
        elif not isinstance(f, dict) or not isinstance(f.get("template"), str) or set(f) - {"template", "label_words"}:
            bad(key, f"must be a mapping with a 'template' string and optional 'label_words', got {f!r}")
        else:
            _check_template(key + ".template", f["template"], bad)
            words = f.get("label_words")
            if words is not None and not (_str_list(words) and len(set(words)) == len(words)):
                bad(key + ".label_words", f"must be a list of distinct strings, got {words!r}")
            elif words is not None and label_words is not None and len(words) != len(label_words):
                bad(key + ".label_words", f"has {len(words)} words for the {len(label_words)} labels {label_words}")
            else:
                out[name] = Format(f["template"], tuple(words) if words is not None else None)
    return out


def task_from_dict(d: dict[str, Any], base_dir: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None, check_files: bool = False) -> Task:
    """A user task from a YAML/JSON mapping; relative file paths resolve as the module docs say.

    Every problem (unknown key, wrong type, missing key ...) is reported together in one
    TaskDefinitionError naming each key; ``check_files`` adds data files that do not exist.
    """
    task, problems = parse(d, base_dir, data_dir, check_files=check_files)
    raise_problems(problems)
    return task


def task_definition(task: Task) -> dict[str, Any]:
    """The mapping :func:`task_from_dict` turns back into ``task`` (absolute data paths; a task in another
    text format: its registered record, formats included); only tasks a definition can express (no
    ``prepare`` / ``explode`` / ``keep`` hooks)."""
    task = task.base or task
    s = task.source
    hooks = [k for k, v in (("prepare", task.prepare), ("explode", s.explode), ("keep", task.keep),
                            ("fields", task.fields), ("hub_filter", s.hub_filter),
                            ("hub_splits", s.hub_splits), ("hub_kwargs", s.hub_kwargs)) if v]
    if hooks or any(not isinstance(p, str) for p in s.files.values()) or isinstance(s.headerless, tuple):
        raise ValueError(f"task {task.name}: a definition file cannot express {hooks or 'candidate file lists'}")
    out: dict[str, Any] = {"name": task.name}
    if s.files:
        out["files"] = {k: str(Path(p).resolve()) for k, p in s.files.items()}
    if s.hub:
        out["hub"] = s.hub
    if s.config:
        out["config"] = s.config
    out.update(template=task.template, kind=task.kind.value)
    if task.label_words is not None:
        out["label_words"] = list(task.label_words)
    if task.formats:
        out["formats"] = {n: {"template": f.template, **({"label_words": list(f.label_words)} if f.label_words
                                                        else {})} for n, f in task.formats.items()}
    if task.label_map:
        out["label_map"] = dict(task.label_map)
    out.update(label_field=task.label_field, answers_field=task.answers_field, metrics=list(task.metrics))
    if task.score_metrics:
        out["score_metrics"] = list(task.score_metrics)
    if s.columns:
        out["columns"] = dict(s.columns)
    if s.format:
        out["format"] = s.format
    if s.headerless:
        out["header"] = False
    if s.fieldnames:
        out["fieldnames"] = list(s.fieldnames)
    out.update(split=task.split, group=task.group)
    if task.holdout is not None:
        out["holdout"] = task.holdout
    if task.description:
        out["description"] = task.description
    return out
