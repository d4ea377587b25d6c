"""Paired bootstrap: is the difference between two methods larger than the noise of
a finite test set (and of the seeds)?

Both methods are scored on the same test examples of each task and, when there are
several seeds, with the same seeds. One bootstrap replicate draws, with replacement,
the seeds and, per task, the test examples; the statistic is the task average of
the seed-mean difference ``metric(A) - metric(B)``, each metric recomputed on the
drawn examples (so Matthews correlation, F1 and other non-decomposable metrics work,
not only accuracy). The interval is the percentile interval of the replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

# diff(task, seed_index, example_indices) -> metric(A) - metric(B) on those examples of that seed
DiffFn = Callable[[str, int, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the data as observed
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"diff": self.estimate, "ci95_low": self.low, "ci95_high": self.high,
                "excludes_zero": self.excludes_zero}


def paired_bootstrap(n_examples: Mapping[str, int], n_seeds: int, diff: DiffFn, resamples: int = 1000,
                     seed: int = 0, level: float = 0.95,
                     average_over: Optional[Sequence[str]] = None) -> tuple[Interval, dict[str, Interval]]:
    """(interval of the task average, interval per task) of the paired difference; the average is over
    `average_over` (default: every task), e.g. leaving out control tasks, from the same replicates."""
    if n_seeds < 1 or not n_examples or min(n_examples.values()) < 1:
        raise ValueError("paired_bootstrap needs at least one seed and one example per task")
    tasks = list(n_examples)
    avg_tasks = list(average_over) if average_over is not None else tasks
    if not avg_tasks or set(avg_tasks) - set(tasks):
        raise ValueError(f"paired_bootstrap: average_over {avg_tasks} must be a non-empty subset of {tasks}")

    def stat(seeds: Sequence[int], idx: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {t: float(np.mean([diff(t, s, idx[t]) for s in seeds])) for t in tasks}

    observed = stat(range(n_seeds), {t: np.arange(n) for t, n in n_examples.items()})
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(resamples):
        seeds = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else [0]
        reps.append(stat(seeds, {t: rng.integers(0, n, n) for t, n in n_examples.items()}))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(obs: float, values: list[float]) -> Interval:
        low, high = np.percentile(values, q)
        return Interval(obs, float(low), float(high))

    per_task = {t: interval(observed[t], [r[t] for r in reps]) for t in tasks}
    mean = lambda r: float(np.mean([r[t] for t in avg_tasks]))  # noqa: E731
    average = interval(mean(observed), [mean(r) for r in reps])
    return average, per_task
