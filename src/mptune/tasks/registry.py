"""Task registry: ``get_task`` / ``list_tasks`` / ``register_task`` (user task files: :mod:`.definition`, :mod:`.resolve`)."""

from __future__ import annotations

import difflib

from ..errors import UnknownNameError
from .base import Task

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
