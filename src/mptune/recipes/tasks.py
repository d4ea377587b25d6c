"""`mptune tasks`: the registry as a table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..tasks import list_tasks


@dataclass
class TasksConfig:
    """List the task registry: group, source, sizes and metrics."""

    group: Optional[str] = None
    """Only tasks of this group (glue, superglue, mrqa, others, ...)."""
    data_dir: Optional[str] = None
    """Folder of original files: count examples from the files found there."""


def list_tasks_cmd(cfg: TasksConfig) -> list[dict]:
    rows = []
    for t in list_tasks():
        if cfg.group and t.group != cfg.group:
            continue
        rows.append({"name": t.name, "group": t.group, "kind": t.kind.value, "source": t.source_label(),
                     "sizes": t.sizes(cfg.data_dir), "metrics": ",".join(t.metrics)})
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
