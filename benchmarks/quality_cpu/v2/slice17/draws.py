"""How many training examples of each task a multi-target adapt stage (MPT*) drew: its task-mixing sampler
replayed from the stage's config.yaml (the same seed, sizes and sampling settings; no model is loaded).

    python benchmarks/quality_cpu/v2/slice17/draws.py STAGE_FOLDER
"""
import collections
import sys
from pathlib import Path

import yaml

from mptune.config import DataConfig
from mptune.recipes import common
from mptune.recipes.multitask import MultiTaskData, SamplingConfig


def draws(folder: Path) -> dict[str, tuple[int, int]]:
    """task -> (examples drawn in max_steps steps, training examples it has)."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    data, train = DataConfig(**cfg["data"]), cfg["train"]
    tasks = common.resolve_tasks(cfg["tasks"], data, "tasks")
    examples = [common.train_examples(t, data, train["seed"]) for t in tasks]
    sizes = [len(e) for e in examples]
    plan = MultiTaskData(tasks, examples, [[] for _ in tasks]).plan(  # the stage's own batch plan
        train["batch_size"], train["seed"], SamplingConfig(**cfg["sampling"]))
    count = collections.Counter()
    for _ in range(train["max_steps"]):
        for i in plan.next():
            count[max(k for k, o in enumerate(plan.offsets) if o <= i)] += 1
    return {name: (count[k], n) for k, (name, n) in enumerate(zip(cfg["tasks"], sizes))}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    got = draws(folder)
    print(f"{folder}: examples drawn in training / training examples")
    for name, (n, size) in got.items():
        print(f"  {name}: {n} / {size}")
    print(f"  total: {sum(n for n, _ in got.values())}")
