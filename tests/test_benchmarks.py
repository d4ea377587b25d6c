"""The CPU benchmarks' shared measurement code (benchmarks/common.py) and the figures the READMEs
quote: each is recomputed from the committed results JSON it comes from."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture()
def common(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_ratio_of_medians_and_median_of_ratios_differ(common):
    # the fast K=1 / K=2 wall times of the committed mixed-task run: one slow round each
    runs = common.Runs({"single": [7.29, 6.90, 11.09], "mixed": [9.59, 6.56, 11.46]},
                       {"single": [1.0, 1.0, 1.0], "mixed": [2.0, 2.0, 2.0]}, {"single": [0] * 3, "mixed": [0] * 3})
    assert [round(x, 2) for x in runs.per_round("single", "mixed")] == [0.76, 1.05, 0.97]
    assert round(runs.ratio("single", "mixed"), 2) == 0.97
    assert round(runs.ratio_of_medians("single", "mixed"), 2) == 0.76
    assert runs.ratio_of_medians("single", "mixed", cpu=True) == 0.5
    back = common.Runs.from_summaries({n: runs.summary(n) for n in ("single", "mixed")})
    assert back == runs


def test_load_average_is_the_start_one(common, monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="setup"):
        common.environment(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 2.0, 3.0))
    common.mark_start()
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 8.0, 9.0))  # the timed rounds ran meanwhile
    env = common.environment(2)
    assert env["load_average_at_start"] == [1.0, 2.0, 3.0]
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.write_results("x", {"environment": env}, "md")
    assert json.loads((tmp_path / "x.json").read_text())["load_average_at_end"] == [7.0, 8.0, 9.0]
    common.write_results("y", {"load_average_at_end": [4.0, 5.0, 6.0]}, "md")  # summarised again: kept
    assert json.loads((tmp_path / "y.json").read_text())["load_average_at_end"] == [4.0, 5.0, 6.0]


def test_no_committed_start_load_equals_the_end_one():
    for f in RESULTS.glob("*.json"):
        d = json.loads(f.read_text())
        if "environment" in d:
            start = d["environment"]["load_average_at_start"]
            marked = start is None and "not captured" in d["environment"]["load_average_at_start_note"]
            assert marked or start != d["load_average_at_end"], f.name


def _section(text: str, title: str) -> str:
    return " ".join(text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].split())


def _figures() -> list[str]:
    """The figures the READMEs quote, formatted from the committed JSONs."""
    step = json.loads((RESULTS / "train_step.json").read_text())["backbones"]
    causal, t5 = step["causal"]["methods"], step["seq2seq"]["methods"]
    mixed = json.loads((RESULTS / "mixed_tasks.json").read_text())["ratios"]
    fast = [mixed[f"fast K={k}"] for k in (2, 4, 8)]
    x = lambda m, k="slowdown_vs_mptune": f"{m[k]:.2f}x"  # noqa: E731
    return [x(causal["PEFT MPT (logits_to_keep)"]), x(causal["PEFT MPT (logits_to_keep)"], "cpu_slowdown_vs_mptune"),
            f"{t5['PEFT MPT']['slowdown_vs_mptune']:.1f}x", x(causal["PEFT MPT"]),
            x(causal["PEFT MPT"], "cpu_slowdown_vs_mptune"), x(causal["PEFT prompt tuning"]),
            f"{causal['mptune fast']['ratio_to_floor']:.2f}x",
            " / ".join(f"{r['bound']:.2f}" for r in fast), " / ".join(f"{r['ratio_of_medians_cpu']:.2f}" for r in fast),
            ", ".join(f"{v:.2f}" for v in fast[0]["per_round"])]


def test_readmes_quote_the_committed_figures():
    main = _section((ROOT / "README.md").read_text(), "Benchmarks").replace("×", "x")
    bench = _section((ROOT / "benchmarks" / "README.md").read_text(), "Results")
    for fig in _figures():
        assert fig in main, fig
        assert fig in bench, fig
