"""The prompt store: which task prompts the server answers for, read from folders only.

A *source* is one folder (or prompt file) added under a name:

* a stage folder (prompt.safetensors + config.yaml): one task, or every task of a
  decomposed prompt (P_k = P* ∘ (u_k v_k) materialised once);
* a PEFT adapter folder (adapter_config.json) exported by ``mptune export-peft``;
* a pipeline run folder (``mptune run``): every stage folder inside it.

Served task names: a single-task source is served under its name (default: the task's
name); the tasks of a multi-task prompt as ``<task>`` (or ``<name>/<task>`` when named);
the stage folders of a run folder as their path inside it (``targets/full/mpt/seed-42/rte``,
prefixed ``<name>/`` when named), plus ``/<task>`` for multi-task stage folders.

With a ``prompts_dir`` the sources live there, so every worker process and replica
that shares the folder serves the same tasks: ``add`` writes a pointer file
``<name>.json`` ({"path": ...}), ``remove`` deletes it, and ``sync`` (a directory
stat, called on every request) loads and unloads what changed. A sub-folder (or a
symlink to one) placed in prompts_dir is a source named after it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import EvalConfig, EvalMode
from ..errors import MptuneError
from ..prompts import PromptFileError, load_prompt_module
from ..prompts.peft_format import CONFIG_FILE as PEFT_CONFIG
from ..prompts.peft_format import import_peft
from ..recipes.evaluate import saved_eval
from ..tasks import Task, TaskKind, resolve_task
from ..utils import atomic_write_json

log = logging.getLogger(__name__)

PROMPT_FILE = "prompt.safetensors"
SOURCE_NAME = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*$")
_uids = itertools.count(1)


class StoreError(MptuneError, ValueError):
    """A source cannot be added or removed; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422, field: Optional[str] = None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(eq=False)
class ServedTask:
    """One task the server answers for: its prompt row [l, d] and its task definition."""

    name: str
    task: Task
    prompt: torch.Tensor  # [l, d] float32, CPU
    source: str
    folder: Path
    how: EvalConfig = field(default_factory=EvalConfig)  # as `mptune predict` on the folder: its stage's eval
    uid: int = field(default_factory=lambda: next(_uids))  # unique per load: a reloaded task gets fresh K/V

    @property
    def choices(self) -> Optional[list[str]]:
        """Label words of a classification task; None for tasks answered with generated text."""
        return list(self.task.label_words) if self.task.kind == TaskKind.CLASSIFICATION else None

    @property
    def ranked(self) -> bool:
        """Label scores by rank classification (else the label is generated and matched, eval.mode=generate)."""
        return self.choices is not None and self.how.mode == EvalMode.rank

    def info(self) -> dict:
        return {"name": self.name, "task": self.task.name, "kind": self.task.kind.value,
                "output": "label" if self.choices is not None else "text", "labels": self.choices,
                "eval_mode": self.how.mode.value if self.choices is not None else None,
                "template": self.task.template, "prompt_length": int(self.prompt.shape[0]),
                "source": self.source, "folder": str(self.folder)}


@dataclass
class Source:
    name: str
    path: Path
    tasks: list[ServedTask]
    entry: Optional[Path] = None  # its pointer file / sub-folder in prompts_dir


def prompt_units(path: Path) -> list[tuple[Path, str]]:
    """(folder or file holding one prompt, its path inside `path`) for every prompt of a source."""
    if not path.exists():
        raise StoreError(f"prompt source not found: {path}", 404, "path")
    if path.is_file() or (path / PROMPT_FILE).is_file() or (path / PEFT_CONFIG).is_file():
        return [(path, "")]
    found = sorted({p.parent for pat in (PROMPT_FILE, PEFT_CONFIG) for p in path.rglob(pat)
                    if not any(part.startswith(".") for part in p.relative_to(path).parts)})
    if not found:
        raise StoreError(f"{path}: no prompt found; expected a stage folder ({PROMPT_FILE}), a PEFT adapter folder "
                         f"({PEFT_CONFIG}) or a pipeline run folder holding them", 422, "path")
    return [(f, f.relative_to(path).as_posix()) for f in found]


def read_prompts(unit: Path, backbone) -> tuple[list[str], torch.Tensor]:
    """Task names and prompt table [K, l, d] of one prompt, checked against the backbone."""
    if unit.is_dir() and (unit / PEFT_CONFIG).is_file():
        module, meta = import_peft(unit)
        if meta.backbone != backbone.name or module.dim != backbone.hidden_size:
            raise PromptFileError(f"{unit}: adapter was trained for backbone {meta.backbone!r} (width {module.dim}), "
                                  f"not {backbone.name!r} (width {backbone.hidden_size})")
    else:
        module, meta = load_prompt_module(unit, backbone)
    if not meta.tasks:
        raise PromptFileError(f"{unit}: the prompt names no task, so its template and labels are unknown")
    with torch.no_grad():
        return list(meta.tasks), module().detach().float().cpu()


def _how(unit: Path) -> EvalConfig:
    try:
        return saved_eval(unit)
    except MptuneError as e:
        raise StoreError(f"{unit}: {e}", 422, "path") from None


def _task(name: str, unit: Path) -> Task:
    """The prompt's task: the definition its folder saved (a user task), else the registry's."""
    folder = unit if unit.is_dir() else unit.parent
    try:
        task = resolve_task(name, folder=folder, check_data=False, key="path")
    except MptuneError as e:
        raise StoreError(f"{unit}: {e}", 422, "path") from None
    if task.kind == TaskKind.CLASSIFICATION and not task.label_words:
        raise StoreError(f"{unit}: task {name!r} takes its choices from each example (a prepare hook); the server "
                         "answers classification tasks with fixed label words and generation tasks", 422, "path")
    return task


def read_source(path: Path, backbone, name: Optional[str] = None,
                source: Optional[str] = None) -> tuple[str, list[ServedTask]]:
    """(source name, its served tasks); nothing is kept if any prompt in it is refused. `name` prefixes
    the served names; `source` (default: name, else the task or folder name) names the source."""
    units = prompt_units(path)
    tasks: list[ServedTask] = []
    default = None
    for unit, rel in units:
        try:
            names, table = read_prompts(unit, backbone)
        except PromptFileError as e:
            raise StoreError(str(e), 422, "path") from None
        if rel:
            base = f"{name}/{rel}" if name else rel
            served = [base] if len(names) == 1 else [f"{base}/{t}" for t in names]
        else:
            served = [name or names[0]] if len(names) == 1 else [f"{name}/{t}" if name else t for t in names]
            default = names[0] if len(names) == 1 else None
        for k, (task_name, served_name) in enumerate(zip(names, served)):
            tasks.append(ServedTask(served_name, _task(task_name, unit), table[k].clone(), "", unit, _how(unit)))
    src = source or name or default or re.sub(r"[^A-Za-z0-9_.+\-]", "_", path.stem if path.is_file() else path.name)
    for t in tasks:
        t.source = src
    return src, tasks


class PromptStore:
    """Sources by name and served tasks by name; thread-safe. `on_unload(tasks)` is told of removals
    (the engine drops their resident keys/values)."""

    def __init__(self, backbone, prompts_dir: Optional[str] = None,
                 on_unload: Callable[[list[ServedTask]], None] = lambda tasks: None):
        self.backbone = backbone
        self.dir = Path(prompts_dir) if prompts_dir else None
        self.on_unload = on_unload
        self.sources: dict[str, Source] = {}
        self.tasks: dict[str, ServedTask] = {}
        self.skipped: dict[str, str] = {}  # prompts_dir entries that could not be loaded -> why
        self._lock = threading.RLock()
        self._dir_mtime: Optional[int] = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    # -- lookups --------------------------------------------------------------
    def get(self, name: str) -> ServedTask:
        with self._lock:
            if name in self.tasks:
                return self.tasks[name]
            valid = sorted(self.tasks)
        import difflib

        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        shown = ", ".join(valid[:20]) + (f", ... ({len(valid)} in all, GET /tasks)" if len(valid) > 20 else "")
        raise StoreError(f"unknown task {name!r}.{hint} Served tasks: {shown or 'none'}", 404, "task")

    def list(self) -> list[ServedTask]:
        with self._lock:
            return list(self.tasks.values())

    # -- add / remove ---------------------------------------------------------
    def add(self, path: str, name: Optional[str] = None, entry: Optional[Path] = None,
            source: Optional[str] = None) -> Source:
        """Load a source; with a prompts_dir also write its pointer file there, unless it was found
        there (`entry`, named `source`)."""
        if name is not None and not SOURCE_NAME.match(name):
            raise StoreError(f"name {name!r}: use letters, digits and _ . + - (it names a file in prompts_dir)",
                             422, "name")
        p = Path(path).expanduser()
        p = p if p.is_absolute() else Path.cwd() / p
        src_name, tasks = read_source(p, self.backbone, name, source)
        with self._lock:
            old = self.sources.get(src_name)
            if old is not None:
                if old.path == p:
                    return old  # the same folder again: nothing to do (workers writing the same pointer)
                raise StoreError(f"source {src_name!r} is already served from {old.path}; remove it first or "
                                 "give another name", 409, "name")
            taken = [t.name for t in tasks if t.name in self.tasks]
            if taken:
                other = self.tasks[taken[0]].source
                raise StoreError(f"task {taken[0]!r} is already served (source {other!r}); give this source a "
                                 "name so its tasks are served as <name>/...", 409, "name")
            if self.dir is not None and entry is None:
                entry = self.dir / f"{src_name}.json"
                atomic_write_json(entry, {"path": str(p), "name": name})
            src = Source(src_name, p, tasks, entry)
            self.sources[src_name] = src
            for t in tasks:
                self.tasks[t.name] = t
        log.info("serving %d task(s) from %s as %r", len(tasks), p, src_name)
        return src

    def remove(self, name: str) -> Source:
        """Remove a source by its name, or by the name of its only task."""
        with self._lock:
            src = self.sources.get(name)
            if src is None and name in self.tasks:
                owner = self.sources[self.tasks[name].source]
                if len(owner.tasks) > 1:
                    raise StoreError(f"task {name!r} is one of {len(owner.tasks)} tasks of source {owner.name!r} "
                                     f"({owner.path}); remove the source: DELETE /tasks/{owner.name}", 409, "name")
                src = owner
            if src is None:
                raise StoreError(f"no source or task named {name!r}", 404, "name")
            if src.entry is not None and src.entry.is_dir() and not src.entry.is_symlink():
                raise StoreError(f"source {src.name!r} is the folder {src.entry} inside prompts_dir; move it out of "
                                 "there to stop serving it", 409, "name")
            if src.entry is not None:
                src.entry.unlink(missing_ok=True)
            self._unload(src)
            return src

    def _unload(self, src: Source) -> None:
        del self.sources[src.name]
        for t in src.tasks:
            self.tasks.pop(t.name, None)
        self.on_unload(src.tasks)
        log.info("stopped serving source %r (%d task(s))", src.name, len(src.tasks))

    # -- the shared folder ------------------------------------------------------
    def sync(self, force: bool = False) -> list[Source]:
        """Follow prompts_dir: load new entries, unload removed ones. Returns the sources loaded."""
        if self.dir is None:
            return []
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except OSError as e:
            log.warning("prompts_dir %s unreadable: %s", self.dir, e)
            return []
        if mtime == self._dir_mtime and not force:
            return []
        with self._lock:
            self._dir_mtime, self.skipped = mtime, {}
            want = self._entries()
            for src in [s for s in self.sources.values() if s.entry is not None]:
                if want.get(src.name, (None,))[0] != src.path:
                    self._unload(src)
            loaded = []
            for key, (path, entry, name) in want.items():
                if key in self.sources:
                    continue
                try:
                    loaded.append(self.add(str(path), name, entry=entry, source=key))
                except StoreError as e:  # a bad entry must not stop the server: skip it, say why
                    self.skipped[key] = str(e)
                    log.warning("prompts_dir entry %s skipped: %s", entry, e)
            return loaded

    def _entries(self) -> dict[str, tuple[Path, Path, Optional[str]]]:
        """source name -> (path, entry, name prefixing its served tasks)."""
        out = {}
        for e in sorted(self.dir.iterdir()):
            if e.name.startswith("."):
                continue
            if e.suffix == ".json" and e.is_file():
                try:
                    d = json.loads(e.read_text(encoding="utf-8"))
                    out[e.stem] = (Path(d["path"]), e, d.get("name"))
                except (OSError, ValueError, KeyError, TypeError) as err:
                    self.skipped[e.stem] = f"{e}: not a pointer file ({err})"
            elif e.is_dir():
                out[e.name] = (e, e, e.name)
        return out
