"""The paper preset at T5-base scale on one GPU, reduced: `mptune run configs/pipelines/t5_base_glue.yaml`
with smaller step budgets and the small GLUE targets, then the run's summary written to
benchmarks/results/gpu_paper_preset.{md,json} with the GPU's name, the wall time and the command.

    python benchmarks/gpu/paper_preset.py                 # needs CUDA, the Hub (t5-base) or data.data_dir
    python benchmarks/gpu/paper_preset.py --dry-run       # tiny random T5 + synthetic data on CPU, writes nothing
    python benchmarks/gpu/paper_preset.py key=value ...   # more overrides (e.g. data.data_dir=/data/glue)

Every value of the preset is kept except the overrides in REDUCED (and yours): the budgets are the
reduction, not a choice the paper makes (ATTEMPT trains 20 epochs). Finished stages are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs/pipelines/t5_base_glue.yaml"
RESULTS = ROOT / "benchmarks/results/gpu_paper_preset"
# The reduction: the preset's six sources, GLUE's four small targets, a few thousand steps per stage.
REDUCED = {"targets": "[rte, mrpc, stsb, cola]", "output_dir": "runs/gpu_paper_preset",
           "teacher_train.max_steps": 3000, "source_train.max_steps": 5000, "target_train.max_steps": 2000,
           "data.eval_limit": 1000}
DRY = {"sources": "[rte, stsb]", "targets": "[rte, stsb]", "data.eval_limit": 4, "data.max_target_length": 8,
       **{f"{s}.{k}": v for s in ("teacher_train", "source_train", "target_train")
          for k, v in (("max_steps", 2), ("warmup_steps", 0), ("eval_every", 2), ("mixed_precision", "no"))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny random T5 + synthetic data on CPU; writes nothing")
    ap.add_argument("overrides", nargs="*", help="more key=value overrides for mptune run")
    a = ap.parse_args()
    overrides = dict(REDUCED)
    tmp = None
    if a.dry_run:
        tmp = tempfile.TemporaryDirectory()
        overrides |= DRY | _tiny(Path(tmp.name)) | {"output_dir": str(Path(tmp.name) / "run")}
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu/paper_preset.py: no CUDA device; --dry-run checks the script on CPU")
    args = [f"{k}={v}" for k, v in overrides.items()] + a.overrides
    cmd = [sys.executable, "-m", "mptune.cli", "run", str(PRESET), *args]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.time() - t0
    if rc != 0 or a.dry_run:
        print(f"rc={rc}, wall {wall:.0f} s" + (" (dry run: nothing written)" if a.dry_run else ""))
        return rc
    out = ROOT / dict(kv.split("=", 1) for kv in args)["output_dir"]
    summary = json.loads((out / "summary.json").read_text())
    gpu = __import__("torch").cuda.get_device_name(0)
    record = {"gpu": gpu, "wall_s": round(wall), "command": "python benchmarks/gpu/paper_preset.py " +
              " ".join(a.overrides), "overrides": overrides, "settings": summary["settings"]}
    RESULTS.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(
        f"# Paper preset, reduced, on {gpu}\n\n`{record['command']}` (overrides of "
        f"configs/pipelines/t5_base_glue.yaml: {overrides}); {wall / 60:.0f} min wall.\n\n{summary['markdown']}\n")
    print(f"wrote {RESULTS}.md / .json")
    return 0


def _tiny(folder: Path) -> dict:
    """A tiny random T5 and the synthetic task files the tests use (dry run only)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_t5  # noqa: E402
    from synthetic import write_all  # noqa: E402

    return {"model.name": str(build_tiny_t5(folder / "t5")), "data.data_dir": str(write_all(folder / "data"))}


if __name__ == "__main__":
    sys.exit(main())
