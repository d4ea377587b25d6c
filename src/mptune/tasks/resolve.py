"""A task named anywhere mptune takes one: a registry name or a task file.

``resolve_task(spec)``: a spec ending in ``.yaml`` / ``.yml`` / ``.json`` (or holding
a ``/``) is a task definition file (keys: :data:`.definition.USER_KEYS`); anything
else is a registry name (``mptune tasks``). A file is checked whole before it is
used: the definition (every key, with its line), its data files, every row of
train / dev / test (labels inside label_words / label_map, template fields present)
and the paper's split rule (no empty split); all problems come together in one
:class:`~.definition.TaskDefinitionError`.

A stage folder keeps the resolved definition of each user task it used as
``tasks/<name>.yaml`` (absolute data paths; :func:`save_definitions`), so
``evaluate`` / ``predict`` on the folder find the task after the original file
moved: :func:`resolve_task` with ``folder=`` looks there before the registry.
Tasks in a text format other than t5 (``data.format``) are listed in
``tasks/formats.json`` ({task: format}), so a prompt is read back in the format it
was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..errors import MissingFileError, UnknownNameError
from . import loading, splits
from .base import Task
from .records import Example, TaskKind
from .formats import DEFAULT
from .definition import Problem, parse, raise_problems, task_definition, task_from_dict
from .readers import DataError, get_path, infer_format, read_rows, read_text
from .registry import get_task

TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")
SAVED = "tasks"  # a stage folder's subfolder of resolved definitions
FORMATS_FILE = "formats.json"  # in SAVED: {task name: text format} for tasks not in t5
MAX_ROW_PROBLEMS = 5  # per data file; the rest are counted


def is_task_file(spec: str) -> bool:
    s = str(spec)
    return s.lower().endswith(TASK_FILE_SUFFIXES) or "/" in s or os.sep in s


# -- reading a definition file -----------------------------------------------------------------

def _key_lines(text: str) -> dict[str, int]:
    """key -> 1-based line in a YAML/JSON mapping (nested mapping keys dotted: ``files.train``)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            out[str(k.value)] = k.start_mark.line + 1
            if isinstance(v, yaml.MappingNode):
                out.update({f"{k.value}.{kk.value}": kk.start_mark.line + 1 for kk, _ in v.value})
    return out


def read_task_file(path: str | os.PathLike) -> tuple[Any, dict[str, int]]:
    """(the parsed document, key -> line); a file that is missing or not YAML/JSON: TaskDefinitionError."""
    path = Path(path)
    try:
        text = read_text(path)
        if path.suffix.lower() == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        else:
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as e:
                line = getattr(getattr(e, "problem_mark", None), "line", None)
                where = f"{path}:{line + 1}" if line is not None else str(path)
                raise DataError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    except (DataError, OSError) as e:  # the message names file (and line)
        raise_problems([Problem("", str(e))], str(path))
    return doc, _key_lines(text)


# -- checking the data -------------------------------------------------------------------------

@dataclass
class TaskCheck:
    """What ``mptune tasks check=FILE`` reports: the task, its paper splits, one example each, the problems."""

    task: Optional[Task]
    origin: str
    policy: Optional[str] = None  # the split rule applied (auto decided)
    sizes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, Example] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def render(self) -> str:
        t = self.task
        out = [f"task file: {self.origin}" if self.origin else "task:"]
        if t is not None:
            out.append(f"task: {t.name} ({t.kind.value}, group {t.group}; metrics {', '.join(t.metrics)})")
            if t.label_words:
                out.append("label words: " + ", ".join(f"{i}={w!r}" for i, w in enumerate(t.label_words)))
            out.append(f"template: {t.template!r}" + (f" (format {t.text_format})" if t.text_format != DEFAULT else ""))
            out.append(f"split rule: {self.policy or t.split} ({SPLIT_RULES.get(self.policy or t.split, '')})")
        if self.sizes:
            out.append("paper splits: " + ", ".join(f"{s} {n}" for s, n in self.sizes.items()))
        for s, ex in self.examples.items():
            out += [f"{s} example ({ex.uid}):", f"  source: {ex.source}", f"  target: {ex.target}"]
        out.append(f"problems: {len(self.problems)}" if self.problems else "problems: none")
        out += [f"  - {p}" for p in self.problems]
        return "\n".join(out)


SPLIT_RULES = {
    "given": "the given train / dev / test splits used as they are",
    "small": "train used as is; validation shuffled (seed 42) and halved into dev / test",
    "large": f"{splits.LARGE_DEV_SIZE} shuffled training examples held out as dev; validation = test",
    "auto": f"small below {splits.SMALL_LIMIT:,} training examples, else large",
}


def check_task(task: Task, data_dir: str | os.PathLike | None = None, origin: str = "",
               lines: Optional[dict[str, int]] = None) -> TaskCheck:
    """Load every split of ``task`` as a run would, collecting what is wrong instead of stopping."""
    report = TaskCheck(task, origin)

    def bad(key: str, msg: str) -> None:
        report.problems.append(Problem.at(key, msg, origin, lines))

    # the released files' splits: as the split map names them, or one file (a hold-out makes the others)
    raws = (["all"] if task.holdout is not None else
            list(task.split_map.values()) if task.split == "given" else ["train", "validation"])
    absent: dict[tuple[str, str], list[str]] = {}  # (key, what) -> "file:line" of each file without that column
    for raw in raws:
        try:
            if task.source.files and all(Path(p).is_absolute() for p in task.source.files.values()):
                for k, what, where in _check_file(task, raw, bad):
                    absent.setdefault((k, what), []).append(where)
            else:  # Hub rows (or a registry task's layout): the loader's own checks
                loading.load_raw(task, raw, data_dir)
        except (DataError, OSError) as e:  # OSError: also the Hub out of reach
            bad(f"files.{raw}" if task.source.files else "hub", str(e))
    for (k, what), wheres in absent.items():
        bad(k, f"{what} is not a column of {', '.join(wheres)}")
    if report.problems:
        return report
    try:
        report.policy = loading.resolved_split(task, data_dir)
        for s in splits.PAPER_SPLITS:
            exs = loading.load(task, s, data_dir)
            report.sizes[s] = len(exs)
            if exs:
                report.examples[s] = exs[0]
            else:
                bad("split", f"the {s} split is empty after the split rule {report.policy!r} "
                    f"({SPLIT_RULES[report.policy]}); give more rows")
    except DataError as e:
        bad("split", str(e))
    return report


def _check_file(task: Task, raw: str, bad) -> list[tuple[str, str, str]]:
    """One data file: every row, once its columns hold the template's fields and the label;
    else the missing ones as (definition key, what, "file:line (its columns)")."""
    src, key = task.source, f"files.{raw}"
    path = loading.find_file(task, raw, None)
    rows = read_rows(path, src.format or infer_format(path), src.fieldnames if src.headerless else None, ())
    first = rows[0][1]
    label = task.answers_field if task.kind == TaskKind.GENERATION else task.label_field
    absent = []
    for f in task.required_fields(labeled=True):
        col = src.columns.get(f, f)
        try:
            get_path(first, col)
        except KeyError:
            what = f"label column {col!r}" if f == label else f"template field {{{f}}}" + \
                (f" (column {col!r})" if col != f else "")
            k = ("answers_field" if task.kind == TaskKind.GENERATION else "label_field") if f == label else \
                ("columns" if col != f else "template")
            absent.append((k, what, f"{path}:{rows[0][0]} (columns {sorted(first)})"))
    if absent:
        return absent
    n_bad = 0
    for uid, where, row in loading.file_rows(task, raw, None, labeled=True):
        try:
            loading.to_example(task, row, uid, where, labeled=True)
        except DataError as e:
            n_bad += 1
            if n_bad <= MAX_ROW_PROBLEMS:
                bad(_row_key(task, row, where) or key, str(e))
    if n_bad > MAX_ROW_PROBLEMS:
        bad(key, f"{path}: {n_bad - MAX_ROW_PROBLEMS} more bad row(s) not listed")
    return []


def _row_key(task: Task, row: dict, where: str) -> Optional[str]:
    """The definition key a bad row contradicts when it is its label (outside label_words / label_map)."""
    value = row.get(task.label_field)
    if task.kind != TaskKind.CLASSIFICATION or value in (None, ""):
        return None
    try:
        loading.label_id(task, value, None, where)
    except DataError:
        return "label_map" if task.label_map else "label_words"
    return None


# -- resolving a spec --------------------------------------------------------------------------

def load_task_file(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                   check_data: bool = True) -> TaskCheck:
    """A definition file -> its :class:`TaskCheck` (task None when the definition itself is broken);
    without ``check_data`` only the definition is checked, not its data files."""
    path = Path(path).expanduser().resolve()
    doc, lines = read_task_file(path)
    task, problems = parse(doc, path.parent, data_dir, str(path), lines, check_files=check_data)
    if task is None or not check_data:
        return TaskCheck(task, str(path), problems=problems)
    return check_task(task, data_dir, str(path), lines)


def saved_definition(folder: str | os.PathLike, name: str) -> Optional[Path]:
    f = Path(folder) / SAVED / f"{name}.yaml"
    return f if f.is_file() else None


def saved_formats(folder: str | os.PathLike) -> dict[str, str]:
    """{task: text format} a stage folder recorded ({} when none: its tasks used t5)."""
    f = Path(folder) / SAVED / FORMATS_FILE
    try:
        return dict(json.loads(read_text(f))) if f.is_file() else {}
    except (ValueError, TypeError, DataError) as e:
        raise DataError(f"{f}: not a {{task: format}} JSON object ({e})") from None


def resolve_task(spec: str, data_dir: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                 check_data: bool = True, key: str = "task", fmt: str = DEFAULT) -> Task:
    """A registry name, or a task file (see the module docs) -> Task, in text format ``fmt``
    (``data.format``; the format ``folder`` recorded for the task wins).

    ``folder``: a stage folder whose saved definitions (``tasks/<name>.yaml``) come before
    the registry. ``check_data``: a task file's data is checked whole (every split, every
    row); without it only the definition is. ``key`` names the option in error messages.
    """
    task = _resolve(str(spec).strip(), data_dir, folder, check_data, key)
    recorded = saved_formats(folder).get(task.name) if folder is not None else None
    return task.with_format(recorded or fmt)


def _resolve(spec: str, data_dir, folder, check_data: bool, key: str) -> Task:
    if is_task_file(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise MissingFileError(f"{key}: task file not found: {spec}"
                                   + (f" (resolved to {path.resolve()})" if not path.is_absolute() else ""))
        if path.suffix.lower() not in TASK_FILE_SUFFIXES:
            raise UnknownNameError(f"{key}: {spec} is a file but not a task definition; "
                                   f"use a {' / '.join(TASK_FILE_SUFFIXES)} file or a registry name")
        report = load_task_file(path, data_dir, check_data)
        raise_problems(report.problems, report.origin, f"named by {key}; see `mptune tasks check={spec}`")
        return report.task
    if folder is not None and (saved := saved_definition(folder, spec)) is not None:
        doc, _ = read_task_file(saved)
        return task_from_dict(doc, saved.parent)
    try:
        return get_task(spec)
    except UnknownNameError as e:
        raise UnknownNameError(f"{key}: {e}; or give a task file (a .yaml / .yml / .json definition)") from None


def is_registered(task: Task) -> bool:
    try:
        return get_task(task.name) is (task.base or task)
    except UnknownNameError:
        return False


def save_definitions(folder: str | os.PathLike, tasks: Iterable[Task]) -> list[Path]:
    """Write ``folder/tasks/<name>.yaml`` for each task that is not the registry's own entry, and
    ``tasks/formats.json`` when a task is in a text format other than t5."""
    from ..utils import atomic_write_json, atomic_write_text

    tasks, written = list(tasks), []
    if any(t.text_format != DEFAULT for t in tasks):
        f = Path(folder) / SAVED / FORMATS_FILE
        atomic_write_json(f, {t.name: t.text_format for t in tasks})
        written.append(f)
    for t in tasks:
        if is_registered(t):
            continue
        f = Path(folder) / SAVED / f"{t.name}.yaml"
        head = "# Resolved task definition (data paths absolute), written by mptune; see mptune.tasks.definition\n"
        atomic_write_text(f, head + yaml.safe_dump(task_definition(t), sort_keys=False, allow_unicode=True))
        written.append(f)
    return written


def copy_definitions(src: str | os.PathLike, dst: str | os.PathLike, names: Iterable[str]) -> None:
    """Carry the saved definitions of ``names`` from one folder to another (export / import of a prompt)."""
    import shutil

    from ..utils import atomic_write_json

    names = list(names)
    for n in names:
        if (f := saved_definition(src, n)) is not None:
            (Path(dst) / SAVED).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, Path(dst) / SAVED / f.name)
    formats = {n: v for n, v in saved_formats(src).items() if n in names}
    if formats:
        atomic_write_json(Path(dst) / SAVED / FORMATS_FILE, {**saved_formats(dst), **formats})
