"""`mptune tasks`: the registry as a table; `mptune tasks check=FILE`: validate a task file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..assets import resolve_data_dir
from ..config import TextFormat
from ..tasks import TaskDefinitionError, list_tasks
from ..tasks.resolve import TASK_FILE_SUFFIXES, TaskCheck, check_task, load_task_file, resolve_task


@dataclass
class TasksConfig:
    """List the task registry: group, source, sizes and metrics; or check a task file (check=FILE)."""

    group: Optional[str] = None
    """Only tasks of this group (glue, superglue, mrqa, others, ...)."""
    data_dir: Optional[str] = None
    """Folder of original files: count examples from the files found there (and where a task file's relative
    data paths are looked up first); default $MPTUNE_DATA_DIR."""
    check: Optional[str] = None
    """A task file (.yaml/.yml/.json) or registry name to validate without a model: paper split sizes, one
    rendered example per split, the label words, and every problem with file:line and key."""
    format: TextFormat = TextFormat.t5
    """Text format the checked task's examples are rendered in (as data.format): t5, attempt or natural."""


def check_cmd(cfg: TasksConfig) -> TaskCheck:
    """Print the check of a task file (or registry task); its problems, if any, end in a TaskDefinitionError."""
    f = Path(cfg.check).expanduser()
    fmt = TextFormat(cfg.format).value
    data_dir = resolve_data_dir(cfg.data_dir)
    if f.suffix.lower() in TASK_FILE_SUFFIXES and f.is_file():
        report = load_task_file(f, data_dir)
        if report.task is not None and not report.problems and fmt != TextFormat.t5.value:
            report = check_task(report.task.with_format(fmt), data_dir, report.origin)
    else:  # a registry name; or a missing / wrong file, which resolve_task reports
        report = check_task(resolve_task(cfg.check, data_dir, check_data=False, key="check", fmt=fmt), data_dir)
    print(report.render())
    if report.problems:
        raise TaskDefinitionError(f"{len(report.problems)} problem(s) in {report.origin or cfg.check} (listed above)")
    return report


def list_tasks_cmd(cfg: TasksConfig):
    if cfg.check:
        return check_cmd(cfg)
    rows = []
    for t in list_tasks():
        if cfg.group and t.group != cfg.group:
            continue
        rows.append({"name": t.name, "group": t.group, "kind": t.kind.value, "source": t.source_label(),
                     "sizes": t.sizes(resolve_data_dir(cfg.data_dir)), "metrics": ",".join(t.metrics)})
    if not rows:
        print(f"no tasks in group {cfg.group!r}")
        return rows
    w = max(len(r["name"]) for r in rows)
    print(f"{'task':<{w}}  {'group':<10} {'kind':<14} {'train/dev/test':<22} {'metrics':<28} source")
    for r in rows:
        s = r["sizes"] or {}
        size = "/".join(str(s.get(k, "?")) for k in ("train", "dev", "test"))
        print(f"{r['name']:<{w}}  {r['group']:<10} {r['kind']:<14} {size:<22} {r['metrics']:<28} {r['source']}")
    return rows
