"""Pair two methods from committed records.json files (report.py writes one beside each results.json):
the paired bootstrap 95 % interval of report.py's claims, re-made without the run folders.

    python benchmarks/quality_cpu/v2/pair.py \\
        benchmarks/quality_cpu/v2/slice26/qa_k16:mpt benchmarks/quality_cpu/v2/slice26/qa_k16:pt

Each side is RECORDS:LABEL, RECORDS a records.json or its folder, LABEL a method there ("mpt") or a run
that report.py read with --against ("against/pt"). The runs are paired by their key (seed, or seed/draw:
the same seed and few-shot draw on both sides), in the first side's order; a target counts when both
sides ran it with every paired key. The average leaves out the controls (as report.py does) unless only
controls are paired. Pair only runs of one generation (results.md's "Stages ran on" line names each
file's environment): runs of another machine are not replicas of these.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[2] / "src")]


CONTROLS = "cola"  # targets left out of the average unless only they are paired (--controls)


def split(spec: str) -> tuple[str, str, str]:
    """RECORDS:LABEL -> (RECORDS, ":", LABEL); the separator is empty when the spec has none."""
    return spec.rpartition(":")


def load(spec: str) -> tuple[str, dict, dict]:
    """RECORDS:LABEL -> (spec, the file's uids, setting -> task -> key -> record of LABEL)."""
    from mptune.config import ConfigError

    path, sep, label = split(spec)
    if not sep or not path or not label:
        raise ConfigError(f"{spec!r}: expected RECORDS:LABEL (e.g. benchmarks/quality_cpu/v2/slice26/qa_k16:mpt)")
    f = Path(path) / "records.json" if Path(path).is_dir() else Path(path)
    if not f.is_file():
        raise ConfigError(f"{spec!r}: no records file {f}")
    data = json.loads(f.read_text())
    runs = {s: by_label[label] for s, by_label in data["runs"].items() if label in by_label}
    if not runs:
        have = sorted({lab for by_label in data["runs"].values() for lab in by_label})
        raise ConfigError(f"{f}: no runs of {label!r} (it has {', '.join(have) or 'none'})")
    return spec, data["uids"], runs


def pair(a: tuple, b: tuple, setting: str, controls: list[str], resamples: int) -> dict | None:
    """a − b in one setting, in the layout of report.py's claims; None when they share no run."""
    from report import verdict

    from mptune.recipes.quickstart import compare_records

    (na, ua, ra), (nb, ub, rb) = a, b
    ta, tb = ra.get(setting, {}), rb.get(setting, {})
    targets = [t for t in ta if t in tb]
    keys = [k for k in (ta[targets[0]] if targets else {}) if all(k in side[t] for side in (ta, tb) for t in targets)]
    if not keys:
        return None

    def records(side: dict, uids: dict) -> dict:  # task -> [record with its uids, in key order]
        return {t: [{"uids": uids[t], **side[t][k]} for k in keys] for t in targets}

    main = [t for t in targets if t not in controls]
    over = main or targets
    c = compare_records(records(ta, ua), records(tb, ub), targets, resamples, over, names=(na, nb))
    return {"a": na, "b": nb, "setting": setting, "verdict": verdict(c["average"]), "average_over": over,
            "controls_only": not main, "keys": keys, "runs": len(keys), **c}


def markdown(c: dict) -> str:
    iv = c["average"]
    lines = [f"**{c['a']} − {c['b']}** ({c['setting']}, {len(c['keys'])} paired runs: {', '.join(c['keys'])}): "
             f"**{iv['diff']:+.1f}** [{iv['ci95_low']:+.1f}, {iv['ci95_high']:+.1f}] on the average of "
             f"{', '.join(c['average_over'])}{' (controls only)' if c['controls_only'] else ''}: {c['verdict']}; "
             f"{c['resamples']} resamples.", "", "| target | test examples | difference | 95 % interval |",
             "|---|---|---|---|"]
    lines += [f"| {t} | {c['n_test'][t]} | {iv_t['diff']:+.1f} | [{iv_t['ci95_low']:+.1f}, {iv_t['ci95_high']:+.1f}] |"
              for t, iv_t in c["tasks"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    from mptune.config import ConfigError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="RECORDS:LABEL, the minuend (e.g. a folder with records.json and mpt)")
    ap.add_argument("b", help="RECORDS:LABEL, the subtrahend")
    ap.add_argument("--setting", action="append", help="full, k=16, ... (default: every setting both have)")
    ap.add_argument("--controls", default=CONTROLS, help="targets left out of the average (comma-separated)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--json", help="also write the comparisons to this file (verdict.yaml may name it as a cell's results)")
    args = ap.parse_args(argv)
    try:
        a, b = load(args.a), load(args.b)
        settings = args.setting or [s for s in a[2] if s in b[2]]
        out = [c for s in settings if (c := pair(a, b, s, args.controls.split(","), args.resamples)) is not None]
        if not out:
            raise ConfigError(f"{args.a} and {args.b} share no run (seed/draw) in {', '.join(settings) or 'any setting'}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n\n".join(markdown(c) for c in out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
