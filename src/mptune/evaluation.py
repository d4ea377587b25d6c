"""Evaluation: rank classification or generation for label tasks, greedy generation otherwise.

Label tasks follow ``eval.mode`` (:class:`mptune.config.EvalConfig`). rank scores
every verbalised choice of every example (sum of target-token log-probs, EOS
included, as T5 does) and predicts the best; each source is encoded once for all
its choices. generate decodes greedily up to the longest choice's tokens + EOS and
the task matches the text against the choices (``eval.match``; no match is an
invalid, wrong prediction), as ATTEMPT evaluates. Other tasks always generate; the
task parses the text (regression: a number string, as T5 does for STS-B).

The task's prompt is prepared once per call (on the fast path: its keys/values,
reused by every batch), and examples are batched in order of source length so a
batch pads little; predictions come back in example order. Every pass runs in eval
mode (the Backbone's no-grad methods use Backbone.frozen_eval; model.dropout=keep too).

Under several processes each process scores a strided shard; predictions are
gathered and put back in example order, so every example counts exactly once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .config import EvalConfig, EvalMode
from .data import Feature, TextEncoder, collate_choices, collate_source
from .sharding import is_sharded
from .tasks import Example, Task, TaskKind
from .tasks.metrics import choice_index


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list  # int choice index (classification) or generated text
    rows: list[dict]  # one JSON-able row per example for predictions files


def predict(backbone: Backbone, prompts: Callable[[], torch.Tensor], task: Task, examples: Sequence[Example],
            encoder: TextEncoder, batch_size: int = 32, task_index: int = 0, accelerator=None,
            max_new_tokens: Optional[int] = None, progress: bool = True, with_scores: bool = False,
            mode: EvalMode = EvalMode.rank) -> list:
    """Predictions for `examples` (in order). `prompts()` returns the prompt table [T, l, d].
    A label task's prediction is its choice index (mode=rank; with_scores: (index, [the summed log-prob
    of every choice])) or the generated text (mode=generate); other tasks' is the generated text."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = list(range(rank, len(examples), world))
    run = mine
    if world > 1 and examples and is_sharded(backbone.model):
        # A sharded backbone runs collectives inside every forward: all processes must make the same
        # number of passes, so short shards repeat an example whose prediction is then dropped.
        per = -(-len(examples) // world)
        run = mine + [mine[0] if mine else 0] * (per - len(mine))
    max_new = max_new_tokens or encoder.max_target_length
    classify = task.kind == TaskKind.CLASSIFICATION
    rank_labels = classify and EvalMode(mode) == EvalMode.rank
    target = functools.lru_cache(maxsize=None)(encoder.target)  # each label word tokenised once
    sources = [encoder.source(examples[i].source) for i in run]
    order = sorted(range(len(run)), key=lambda j: len(sources[j]))  # similar lengths share a batch
    out: list = [None] * len(run)
    with torch.no_grad():
        prefix = backbone.prefix(prompts().detach()[task_index: task_index + 1])  # this task's row only: index 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"eval {task.name}", leave=False,
                   disable=not progress or rank != 0)
        for s in bar:
            js = order[s: s + batch_size]
            feats = [Feature(sources[j], [], 0) for j in js]
            choices = [task.choices(examples[run[j]]) for j in js] if classify else []
            ids = [[target(c) for c in ch] for ch in choices]
            if rank_labels:
                batch, row_example = collate_choices(feats, ids, backbone.kind, backbone.pad_id)
                scores = backbone.score_choices(prefix, _to(batch, backbone.device)).cpu()
                per = [scores[row_example == i] for i in range(len(js))]
                preds = [(int(x.argmax()), x.tolist()) if with_scores else int(x.argmax()) for x in per]
            else:
                batch = collate_source(feats, backbone.kind, backbone.pad_id)
                budget = label_budget([t for row in ids for t in row]) if classify else max_new
                preds = backbone.generate(prefix, _to(batch, backbone.device), budget)
            for j, p in zip(js, preds):
                out[j] = p
    out = out[: len(mine)]
    if world > 1:
        out = gather_in_order(mine, out, len(examples))
    return out


def label_budget(label_ids: Sequence[Sequence[int]]) -> int:
    """New tokens a generated label may take (eval.mode=generate): the longest label's target tokens, EOS
    included; a longer output could not equal any label."""
    return max(len(t) for t in label_ids)


def gather_in_order(mine: list[int], preds: list, n: int) -> list:
    """Gather (index, prediction) pairs from every process and put them back in example order.

    Checks that every index 0..n-1 arrives exactly once: a gap or a duplicate
    (shards that overlap, or a process that dropped part of an uneven last
    batch) is an error, never a silently wrong metric.
    """
    from accelerate.utils import gather_object

    gathered = gather_object([(i, p) for i, p in zip(mine, preds)])
    seen = sorted(i for i, _ in gathered)
    if seen != list(range(n)):
        dup = len(seen) - len(set(seen))
        raise RuntimeError(f"distributed evaluation gathered {len(seen)} predictions for {n} examples "
                           f"({dup} duplicated, {n - len(set(seen))} missing)")
    order = dict(gathered)
    return [order[i] for i in range(n)]


def evaluate(backbone: Backbone, prompts: Callable[[], torch.Tensor], task: Task, examples: Sequence[Example],
             encoder: TextEncoder, batch_size: int = 32, task_index: int = 0, accelerator=None,
             progress: bool = True, how: Optional[EvalConfig] = None) -> EvalResult:
    """Predict and score (`how`: eval.mode / eval.match, default rank)."""
    how = how or EvalConfig()
    preds = predict(backbone, prompts, task, examples, encoder, batch_size, task_index, accelerator,
                    progress=progress, mode=how.mode)
    metrics = task.score(list(examples), preds, how.match) if examples else {}
    return EvalResult(metrics, preds, prediction_rows(task, examples, preds, how))


def prediction_rows(task: Task, examples: Sequence[Example], preds: list,
                    how: Optional[EvalConfig] = None) -> list[dict]:
    """A label task's row: the chosen label (rank) or the generated text (generate), and the index of
    the label it matches (-1: none, an invalid prediction)."""
    match = (how or EvalConfig()).match
    rows = []
    for e, p in zip(examples, preds):
        row = {"uid": e.uid, "task": task.name, "source": e.source, "target": e.target}
        if task.kind == TaskKind.CLASSIFICATION:
            i = choice_index(task.choices(e), p, match)
            row["prediction"] = p if isinstance(p, str) else task.choices(e)[i]
            row["prediction_index"] = i
        else:
            row["prediction"] = p
        rows.append(row)
    return rows


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
