"""The task suite of Multitask Prompt Tuning (Wang et al., ICLR 2023), and more.

One declarative :class:`Task` record per dataset (``glue.py``, ``superglue.py``,
``qa.py``, ``others.py``; ``vader.py`` and ``bigbench.py`` for the sets fetched
from package registries), a registry (``registry.py``), loading (``loading.py``:
files or the Hub -> rows -> examples -> splits), readers for the original release
formats (``readers.py``), the paper's splits (``splits.py``) and metrics and
scoring (``metrics.py``).

The paper's 23 datasets (``PAPER_TASKS``): 6 source tasks (MNLI, QNLI, QQP,
SST-2, SQuAD, ReCoRD) and 4 groups of targets (GLUE, SuperGLUE, MRQA, Others).
Extra entries for original files at hand: WNLI, COPA, SuperGLUE RTE; and the
file-only sets (``ASSET_TASKS``: VADER, BIG-bench, SQuAD-Shifts NYT).

Splits (see :mod:`mptune.tasks.splits`): fewer than 10k training examples ->
validation halved into dev / test (seed 42); larger -> 1,000 training examples
held out as dev, validation = test; MNLI: dev = validation_mismatched, test =
validation_matched; sets released as one file: a fixed hold-out as validation.
``task.score`` returns every metric (0..100) and ``score``, the paper's per-task
number.

Data: ``task.load(split, data_dir=...)`` reads original files under
``data_dir`` (or ``$MPTUNE_DATA_DIR``), else the Hugging Face Hub.

Your own task: a YAML/JSON definition file (``definition.py``), accepted wherever
a task name is (``resolve.py``: ``resolve_task("data/reviews.yaml")``).
"""

from .base import Example, Source, Task, TaskKind
from .readers import DataError
from .registry import ALIASES, assets_for, get_task, list_tasks, register_task
from .definition import TaskDefinitionError, task_from_dict
from .resolve import resolve_task
from .splits import few_shot
from . import glue, superglue, qa, others, vader, bigbench  # noqa: F401,E402  (register the entries)

SOURCE_TASKS = ("mnli", "qnli", "qqp", "sst2", "squad", "record")
BENCHMARKS = {
    "glue": ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola"),
    "superglue": ("multirc", "boolq", "wic", "wsc", "cb"),
    "mrqa": ("nq", "hotpotqa", "searchqa", "newsqa"),
    "others": ("winogrande", "yelp_polarity", "scitail", "paws"),
}
PAPER_TASKS = tuple(dict.fromkeys(SOURCE_TASKS + sum(BENCHMARKS.values(), ())))
ASSET_TASKS = tuple(t.name for t in list_tasks() if t.asset)  # files from mptune.assets, no Hub copy

__all__ = ["Example", "assets_for", "Source", "Task", "TaskKind", "DataError", "get_task", "list_tasks",
           "register_task", "task_from_dict", "TaskDefinitionError", "resolve_task", "few_shot", "ALIASES",
           "SOURCE_TASKS", "BENCHMARKS", "PAPER_TASKS", "ASSET_TASKS"]
