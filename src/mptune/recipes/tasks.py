"""`mptune tasks`: the registry as a table."""

from __future__ import annotations

from ..tasks import list_tasks


def list_tasks_cmd(cfg) -> list[dict]:
    rows = []
    for t in list_tasks():
        if cfg.group and t.group != cfg.group:
            continue
        sizes = t.sizes(cfg.data_dir) if hasattr(t, "sizes") else {}
        rows.append({"name": t.name, "group": t.group, "kind": t.kind.value, "source": t.source_label()
                     if hasattr(t, "source_label") else "", "sizes": sizes, "metrics": ",".join(t.metrics)})
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
