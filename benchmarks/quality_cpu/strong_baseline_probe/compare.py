"""MPT − PT on the probe's SST-2 test predictions, with mptune's paired bootstrap (400 examples, 1 seed).

    python benchmarks/quality_cpu/strong_baseline_probe/compare.py
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "src"))
from mptune.stats import paired_bootstrap  # noqa: E402


def correct(run: str) -> dict[str, bool]:
    rows = [json.loads(x) for x in (HERE / run / "predictions_sst2_test.jsonl").read_text().splitlines()]
    return {r["uid"]: r["prediction"] == r["target"] for r in rows}


pt, mpt = correct("pt_natural_l20"), correct("mpt_natural")
assert pt.keys() == mpt.keys(), "the two runs must score the same test examples"
uids = sorted(pt)
a, b = np.array([mpt[u] for u in uids], float), np.array([pt[u] for u in uids], float)
avg, _ = paired_bootstrap({"sst2": len(uids)}, 1, lambda t, s, i: 100 * (a[i].mean() - b[i].mean()))
print(f"n_test {len(uids)}: PT {100 * b.mean():.1f}, MPT {100 * a.mean():.1f}, "
      f"MPT - PT {avg.estimate:+.1f} [{avg.low:+.1f}, {avg.high:+.1f}]")
