"""Dynamic batching: inputs of any tasks that arrive together run as one batch.

One worker thread owns the model. It waits for the first queued input, then up to
`max_wait_s` more (or until `max_batch` inputs are queued), and runs what it has as
one mixed-task batch. The queue is bounded (`max_queue` inputs; a request that does
not fit is refused whole, never half queued). A batch that raises is retried input
by input, so one bad input fails alone and the thread never dies. `close()` stops
accepting and returns once everything already queued has been answered.
Jobs (`call`) run on the same thread, taking turns with batches (e.g. computing new tasks'
prompt keys/values chunk by chunk while requests keep being answered), so the model is only
ever used from one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable, Sequence

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


class Closed(RuntimeError):
    pass


class Batcher:
    def __init__(self, run: Callable[[list], list], max_batch: int = 32, max_wait_s: float = 0.005,
                 max_queue: int = 1024):
        self._run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self._queue: deque[tuple[object, Future, float]] = deque()
        self._jobs: deque[tuple[Callable[[], object], Future]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self.batches = self.items_done = 0
        self._thread = threading.Thread(target=self._loop, name="mptune-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence) -> list[Future]:
        """Queue `items` (all or none); each future resolves to run()'s output for it."""
        with self._cv:
            if self._closing:
                raise Closed("the server is shutting down")
            if len(self._queue) + len(items) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} inputs queued; the limit is max_queue={self.max_queue}")
            now = time.monotonic()
            futures = [Future() for _ in items]
            self._queue.extend((it, f, now) for it, f in zip(items, futures))
            self._cv.notify()
        return futures

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the worker thread (before the next batch)."""
        with self._cv:
            if self._closing:
                raise Closed("the server is shutting down")
            f: Future = Future()
            self._jobs.append((fn, f))
            self._cv.notify()
        return f

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting; answer everything queued; stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------
    def _loop(self) -> None:
        last_was_job = False
        while True:
            with self._cv:
                while not self._queue and not self._jobs and not self._closing:
                    self._cv.wait()
                if self._jobs and (last_was_job is False or not self._queue):  # jobs and batches take turns
                    job, batch = self._jobs.popleft(), None
                elif self._queue:
                    deadline = self._queue[0][2] + self.max_wait_s
                    while len(self._queue) < self.max_batch and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                    batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                    job = None
                else:  # closing and nothing left
                    return
            last_was_job = job is not None
            if job is not None:
                _settle(job[1], job[0])
            else:
                self._answer(batch)

    def _answer(self, batch: list) -> None:
        try:
            outs = self._run([it for it, _, _ in batch])
        except Exception as e:  # noqa: BLE001 - the thread lives on; retry alone, so one bad input fails alone
            if len(batch) == 1:
                log.error("input failed: %s: %s", type(e).__name__, e, exc_info=e)
                batch[0][1].set_exception(e)
            else:
                log.warning("a batch of %d failed (%s: %s); answering its inputs one by one", len(batch),
                            type(e).__name__, e)
                for it, f, _ in batch:
                    _settle(f, lambda it=it: self._run([it])[0])
        else:
            for (_, f, _), o in zip(batch, outs):
                f.set_result(o)
        self.batches += 1
        self.items_done += len(batch)


def _settle(future: Future, fn: Callable[[], object]) -> None:
    try:
        future.set_result(fn())
    except Exception as e:  # noqa: BLE001 - the caller gets the error, the thread lives on
        log.error("failed: %s: %s", type(e).__name__, e, exc_info=e)
        future.set_exception(e)
