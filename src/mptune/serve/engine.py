"""Turning a mixed-task batch of inputs into labels with scores, or generated text.

Same computation as ``mptune predict`` (evaluation.predict): the task's template
renders the input, rank classification sums each label's target-token
log-probabilities (EOS included) and picks the best, generation decodes greedily
for up to data.max_target_length tokens. What differs is only where the prompt's
keys/values come from: decoder-only backbones read them from a resident cache,
computed once per task (KVCache, least recently used dropped over the budget and
recomputed on demand); encoder-decoder backbones run [prompt ; input] through the
encoder every time (the plain path: the encoder is bidirectional).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data import Feature, TextEncoder, collate_choices, collate_source
from ..errors import MptuneError
from ..evaluation import label_budget
from ..recipes.evaluate import label_scores
from ..tasks.metrics import choice_index
from .prefix import PrefixAdapter, PrefixKV
from .store import ServedTask

log = logging.getLogger(__name__)


class InputError(MptuneError, ValueError):
    """One input of a request is unusable; `field` names it (e.g. ``inputs[2]``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(eq=False)
class Item:
    """One input of a request: its task and token ids."""

    task: ServedTask
    ids: list[int]
    result: Any = None


@dataclass
class Limits:
    max_source_length: int  # tokens per input (longer ones are refused, never truncated)
    max_input_chars: int
    max_new_tokens: int  # generation budget (data.max_target_length, as predict)


class KVCache:
    """Resident prompt keys/values per task, least recently used dropped over `budget` bytes."""

    CHUNK = 16  # prompts run together when computing

    def __init__(self, adapter: PrefixAdapter, budget_bytes: int):
        self.adapter, self.budget = adapter, budget_bytes
        self._lru: OrderedDict[int, PrefixKV] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._largest: Optional[int] = None  # the largest task's bytes seen (warm's estimate)
        self._lock = threading.Lock()  # forget() comes from request threads

    def get(self, tasks: list[ServedTask]) -> list[PrefixKV]:
        """Keys/values of `tasks` (computed where not resident), then the budget enforced."""
        with self._lock:
            have = {t.uid: self._lru[t.uid] for t in tasks if t.uid in self._lru}
        todo = [t for t in tasks if t.uid not in have]
        self.hits, self.misses = self.hits + len(have), self.misses + len(todo)
        for i in range(0, len(todo), self.CHUNK):
            part = todo[i: i + self.CHUNK]
            for t, kv in zip(part, self.adapter.compute(torch.stack([t.prompt for t in part]))):
                have[t.uid] = kv
        with self._lock:
            for t in tasks:
                if t.uid not in self._lru:
                    self.bytes += have[t.uid].nbytes
                    self._largest = max(self._largest or 0, have[t.uid].nbytes)
                self._lru[t.uid] = have[t.uid]
                self._lru.move_to_end(t.uid)
            self._evict()
        return [have[t.uid] for t in tasks]

    def warm(self, tasks: list[ServedTask]) -> int:
        """Compute keys/values of tasks not resident, as many as fit the budget; returns how many."""
        with self._lock:
            todo = [t for t in dict.fromkeys(tasks) if t.uid not in self._lru]
        n = 0
        while todo and self.budget > 0:
            with self._lock:
                room, per = self.budget - self.bytes, self._largest
            k = 1 if per is None else min(len(todo), int(room // per))
            if k <= 0:
                break
            self.get(todo[:k])
            n, todo = n + k, todo[k:]
        return n

    def forget(self, tasks: list[ServedTask]) -> None:
        with self._lock:
            for t in tasks:
                kv = self._lru.pop(t.uid, None)
                if kv is not None:
                    self.bytes -= kv.nbytes

    def _evict(self) -> None:
        while self.bytes > self.budget and self._lru:
            _, kv = self._lru.popitem(last=False)
            self.bytes -= kv.nbytes

    def stats(self) -> dict:
        with self._lock:
            return {"resident_tasks": len(self._lru), "bytes": self.bytes, "budget_bytes": self.budget,
                    "hits": self.hits, "misses": self.misses}


class Engine:
    """Runs batches of Items on one frozen backbone (called from the batcher's single thread)."""

    def __init__(self, backbone, limits: Limits, kv_budget_bytes: int):
        self.backbone, self.limits = backbone, limits
        self.encoder = TextEncoder(backbone.tokenizer, backbone.kind, limits.max_source_length, limits.max_new_tokens)
        self.adapter = PrefixAdapter(backbone)
        self.cache = KVCache(self.adapter, kv_budget_bytes)
        self._choice_ids: dict[int, list[list[int]]] = {}
        self.mixed_task_batches = 0  # batches that held inputs of more than one task

    @property
    def prefix_cache(self) -> bool:
        return self.adapter.cached

    # -- inputs ---------------------------------------------------------------
    def encode(self, task: ServedTask, value: Any, where: str) -> Item:
        """One request input (the model input text, or an object of the template's fields, as a line of
        predict's input file) -> Item; InputError names `where`."""
        if isinstance(value, str):
            source = value
        elif isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, (str, int, float, bool))]
            if bad:
                raise InputError(f"{where}.{bad[0]}", "template fields must be strings or numbers")
            if "source" in value:
                source = str(value["source"])
            else:
                try:
                    source = task.task.template.format(**value)
                except (KeyError, IndexError) as e:
                    raise InputError(where, f"missing field {e} needed by the template of task {task.task.name!r} "
                                            f"({task.task.template!r}); or give the input text as a string") from None
        else:
            raise InputError(where, f"expected a string or an object of template fields, got {_json_type(value)}")
        if not source.strip():
            raise InputError(where, "empty input")
        if len(source) > self.limits.max_input_chars:
            raise InputError(where, f"{len(source)} characters; the limit is max_input_chars="
                                    f"{self.limits.max_input_chars}")
        ids = self.backbone.tokenizer(source, add_special_tokens=True)["input_ids"]
        if len(ids) > self.limits.max_source_length:
            raise InputError(where, f"{len(ids)} tokens; the limit is data.max_source_length="
                                    f"{self.limits.max_source_length}")
        if not ids:
            raise InputError(where, "the input tokenises to nothing")
        return Item(task, ids)

    # -- batches --------------------------------------------------------------
    @torch.no_grad()
    def run(self, items: list[Item]) -> list[dict]:
        """Outputs for items of any tasks, in order. Items are grouped by how they are answered (rank,
        generated label with its token budget, generated text) and prompt length (rows of one model call
        share a prompt length); each group is one model call."""
        self.mixed_task_batches += len({it.task.uid for it in items}) > 1
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((self._answer(it.task), it.task.prompt.shape[0]), []).append(i)
        out: list[Optional[dict]] = [None] * len(items)
        for (answer, _), idx in groups.items():
            part = [items[i] for i in idx]
            if answer == "rank":
                res = self._classify(part)
            elif answer == "text":
                res = [{"text": t} for t in self._generate(part, self.limits.max_new_tokens)]
            else:  # eval.mode=generate: the label's text, matched as predict does (budget: longest label + EOS)
                res = [_matched(it.task, t) for it, t in zip(part, self._generate(part, answer))]
            for i, o in zip(idx, res):
                out[i] = o
        return out  # type: ignore[return-value]

    def _answer(self, task: ServedTask):
        """'rank', 'text', or the token budget of a generated label (eval.mode=generate)."""
        if task.choices is None:
            return "text"
        return "rank" if task.ranked else label_budget(self._choices(task))

    def _table(self, part: list[Item]) -> tuple[list[ServedTask], list[int]]:
        """Distinct tasks of the part (first-seen order) and each item's index into them."""
        slot: dict[int, int] = {}
        tasks: list[ServedTask] = []
        for it in part:
            if it.task.uid not in slot:
                slot[it.task.uid] = len(tasks)
                tasks.append(it.task)
        return tasks, [slot[it.task.uid] for it in part]

    def _choices(self, task: ServedTask) -> list[list[int]]:
        ids = self._choice_ids.get(task.uid)
        if ids is None:
            ids = self._choice_ids[task.uid] = [self.encoder.target(c) for c in task.choices]
        return ids

    def _classify(self, part: list[Item]) -> list[dict]:
        tasks, index = self._table(part)
        feats = [Feature(it.ids, [], k) for it, k in zip(part, index)]
        batch, row_example = collate_choices(feats, [self._choices(it.task) for it in part], self.backbone.kind,
                                             self.backbone.pad_id)
        batch = {k: v.to(self.backbone.device) for k, v in batch.items()}
        scores = self.backbone.score_choices(self._prompts(tasks), batch).float().cpu()
        out = []
        for i, it in enumerate(part):
            s = scores[row_example == i]
            best = int(s.argmax())  # as predict: the first of equal scores
            ranked = label_scores(it.task.choices, s.tolist())
            for v in ranked.values():
                v["logprob"] = _finite(v["logprob"])
            out.append({"label": it.task.choices[best], "label_index": best, "scores": ranked})
        return out

    def _generate(self, part: list[Item], max_new_tokens: int) -> list[str]:
        tasks, index = self._table(part)
        batch = collate_source([Feature(it.ids, [], k) for it, k in zip(part, index)], self.backbone.kind,
                               self.backbone.pad_id)
        batch = {k: v.to(self.backbone.device) for k, v in batch.items()}
        return self.backbone.generate(self._prompts(tasks), batch, max_new_tokens)

    def _prompts(self, tasks: list[ServedTask]):
        """The tasks' resident keys/values as one table (decoder-only), else their prompt table [T, l, d]."""
        if self.prefix_cache:
            return self.adapter.table(self.cache.get(tasks))
        return torch.stack([t.prompt for t in tasks]).to(self.backbone.device)

    def warm(self, tasks: list[ServedTask]) -> int:
        """Compute the prompts' keys/values now (as far as the budget allows), not at first request."""
        return self.cache.warm(tasks) if self.prefix_cache else 0

    def forget(self, tasks: list[ServedTask]) -> None:
        self.cache.forget(tasks)
        for t in tasks:
            self._choice_ids.pop(t.uid, None)


def _matched(task: ServedTask, text: str) -> dict:
    """A generated label: the label it matches (eval.match), or label None and label_index -1 (invalid)."""
    i = choice_index(task.choices, text, task.how.match)
    return {"label": task.choices[i] if i >= 0 else None, "label_index": i, "text": text}


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None  # JSON has no -inf


def _json_type(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", type(None): "null"}.get(type(v),
                                                                                                  type(v).__name__)
