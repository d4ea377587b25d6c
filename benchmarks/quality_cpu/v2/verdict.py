"""Quality benchmark v2 (issue #18, item 5): the verdict so far, one table, every cell read from a committed
results.json (the claims `report.py` wrote there), so no figure of it is typed by hand.

    python benchmarks/quality_cpu/v2/verdict.py          # verdict.yaml -> verdict.md
    python benchmarks/quality_cpu/v2/verdict.py --check  # exit 1 if verdict.md is not what verdict.yaml gives

verdict.yaml says which comparison fills which cell: the claim (report.CLAIMS), the column (target and
training data), the slice folder (its results.json) or a `pair.py --json` file (a claim re-made from two
committed records.json, for runs of one generation that no single report read), its setting ("full",
"k=16"), optionally one task of a multi-task claim, the README section that discusses it and a note on what
differs from the cell's first entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import CLAIMS, verdict  # noqa: E402  the one list of claims (a, b, what a − b > 0 tests), the one rule
from pair import split  # noqa: E402  a pair.py side, RECORDS:LABEL

from mptune.errors import MptuneError  # noqa: E402  (report put src/ on the path)

SPEC, OUT = HERE / "verdict.yaml", HERE / "verdict.md"
REQUIRED = {"claim", "column", "results", "setting", "section"}
KEYS = REQUIRED | {"task", "note"}


class VerdictError(MptuneError, ValueError):
    """An entry of verdict.yaml that does not name a committed claim; the message names cells[i] and the key."""


def _num(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def cell(entry: dict, where: str, loaded: dict) -> dict:
    """One entry of verdict.yaml -> {diff, low, high, verdict, runs} from the claim in its results.json
    (each file read once per render: `loaded` maps its path to its settings)."""
    paired = entry["results"].endswith(".json")  # pair.py --json: [claim, ...], each side "RECORDS:LABEL"
    path = HERE / entry["results"] if paired else HERE / entry["results"] / "results.json"
    if path not in loaded:
        if not path.is_file():
            raise VerdictError(f"{where}: results {entry['results']!r}: no {path.relative_to(HERE)}")
        data = json.loads(path.read_text())
        loaded[path] = ({c["setting"]: {"claims": [dict(c, a=split(c["a"])[2], b=split(c["b"])[2])]} for c in data}
                        if paired else data["settings"])
    settings = loaded[path]
    if entry["setting"] not in settings:
        raise VerdictError(f"{where}: setting {entry['setting']!r} is not in {path.relative_to(HERE)} "
                           f"(it has {', '.join(settings)})")
    a, b = entry["claim"].split("-", 1)
    found = [c for c in settings[entry["setting"]]["claims"] if (c["a"], c["b"]) == (a, b)]
    if not found:
        raise VerdictError(f"{where}: claim {entry['claim']!r} is not in {path.relative_to(HERE)} "
                           f"at {entry['setting']}")
    c = found[0]
    if "task" in entry:
        if entry["task"] not in c["tasks"]:
            raise VerdictError(f"{where}: task {entry['task']!r} is not among the claim's tasks "
                               f"({', '.join(c['tasks'])}) in {path.relative_to(HERE)}")
        v = c["tasks"][entry["task"]]
    else:
        v = c["average"]
    return {"diff": v["diff"], "low": v["ci95_low"], "high": v["ci95_high"], "verdict": verdict(v), "runs": c["runs"]}


def render(spec: dict) -> str:
    columns, claims = spec["columns"], {f"{a}-{b}": title for a, b, title in CLAIMS}
    grid: dict[tuple[str, str], list[str]] = {}
    loaded: dict[Path, dict] = {}
    for i, e in enumerate(spec["cells"]):
        where = f"verdict.yaml cells[{i}]"
        unknown, missing = set(e) - KEYS, REQUIRED - set(e)
        if unknown or missing:
            raise VerdictError(f"{where}: " + "; ".join(
                ([f"unknown key(s) {', '.join(sorted(unknown))}"] if unknown else [])
                + ([f"missing key(s) {', '.join(sorted(missing))}"] if missing else [])))
        if e["claim"] not in claims:
            raise VerdictError(f"{where}: claim {e['claim']!r} is not one of {', '.join(claims)}")
        if e["column"] not in columns:
            raise VerdictError(f"{where}: column {e['column']!r} is not one of {', '.join(columns)}")
        c = cell(e, where, loaded)
        figure = f"{_num(c['diff'])} [{_num(c['low'])}, {_num(c['high'])}]"
        if c["verdict"] != "not separated":
            figure = f"**{figure} {c['verdict']}**"
        unit = "draws" if e["setting"].startswith("k=") else "seeds" if c["runs"] > 1 else "seed"
        note = f"{e['note']}; " if e.get("note") else ""
        grid.setdefault((e["claim"], e["column"]), []).append(
            f"{figure} ({note}{c['runs']} {unit}, §{e['section']})")
    lines = ["# Quality benchmark v2: the verdict so far (issue #18, item 5)", "",
             "Made by `python benchmarks/quality_cpu/v2/verdict.py` from [verdict.yaml](verdict.yaml): every cell is "
             "a claim of a committed results.json (its folder named in verdict.yaml, its discussion in the "
             "[README](README.md)'s section §). A cell: MPT's side minus the other's test score, averaged over the "
             "column's targets, with its bootstrap 95 % interval over test examples and runs; **bold** where the "
             "interval excludes 0 (\"holds\" for the paper's claim, \"reversed\" against it). The first entry of a "
             "cell is the like-for-like one (each method at its dev-chosen setting); the others say what differs. "
             "Runs of different generations of teachers and source stages are never paired.", "",
             "| claim | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, title in claims.items():
        lines.append(f"| {title} | " + " | ".join(
            "<br>".join(grid.get((key, col), ["not run"])) for col in columns) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in spec.get("notes", [])] + [""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed verdict.md, write nothing")
    a = ap.parse_args(argv)
    try:
        text = render(yaml.safe_load(SPEC.read_text()))
    except VerdictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.check:
        same = OUT.is_file() and OUT.read_text() == text
        print("verdict.md is up to date" if same else "verdict.md differs from what verdict.yaml gives: "
              "run benchmarks/quality_cpu/v2/verdict.py")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
