"""Run a plan of stages (:func:`mptune.plan.plan`): skip finished ones, run the rest,
optionally on several worker processes.

A stage whose folder is complete (stage.json) is skipped when its config.yaml matches
the plan's (otherwise the launch is refused, naming what changed); an unfinished one
resumes from its checkpoints (the recipes do that, refusing changed settings too).
A launch that runs stages beside finished ones made on another device or library versions
says so first, naming what differs (their results are no exact replicas of each other).
With ``workers > 1`` each stage runs in one of ``workers`` spawned processes with
``threads`` torch threads; a stage starts as soon as the stages it needs are done,
earliest in the plan first. On a small
model two 1-thread processes usually get more out of 2 cores than one 2-thread
process (small matrices parallelise poorly). ``workers = 1`` runs in this process.
Spawned workers import the caller's main module, so a script that calls this with
``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.

A worker's stage writes its progress bars and messages to ``<folder>/output.log``
(side by side they would garble the terminal); this process prints one line as
each stage starts and finishes. A worker ends itself when this process is gone (killed,
say), so no orphan goes on writing into a stage folder. Every stage gets a record: start and finish times
(epoch seconds, so stages that overlapped keep their own wall time) and the CPU
seconds of its process.

Several launches may share a plan's folders (e.g. ``benchmarks/quality_cpu/run.py --reverse``
beside a forward launch, meeting half way): a launch holds a lock on each stage it runs
(``flock`` on ``<folder>/.lock``, let go when the stage ends or the launch dies), and a stage
that another launch holds is not started twice: this launch runs other stages meanwhile,
then waits for it and counts it as finished elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: no flock; launches sharing a folder are not guarded there
    fcntl = None

from .config import ConfigError
from .plan import Stage
from .recipes.common import environments
from .utils import environment


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _init_worker(threads: Optional[int], parent: int) -> None:
    """A worker's start: its torch threads, and a watchdog that ends the worker once `parent` (the
    runner) is gone, e.g. killed: an orphaned worker would go on writing into the stage folders that
    the next launch resumes."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        os._exit(3)

    threading.Thread(target=watch, name="mptune-orphan-watchdog", daemon=True).start()
    _set_threads(threads)


WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}  # the workers' environment: no tokenizer threads on top
LOG_FILE = "output.log"  # a worker's stage writes its progress bars and messages here, not to the terminal
ORPHAN_POLL_S = 0.5  # how often a worker checks that the runner is still there
LOCK_FILE = ".lock"  # in a stage folder: flock-ed by the launch running that stage (never deleted: see _Claim)
BUSY_POLL_S = 5.0  # how often a launch looks again at stages that another launch is running


class _Claim:
    """This launch's hold on one stage folder: an exclusive flock on <folder>/.lock, taken without
    waiting. The file stays when let go: deleting it would let a third launch lock a new file while a
    second still holds the old one. The lock ends with the launch's process, so a killed launch never
    leaves a stage locked."""

    def __init__(self, folder: Path):
        self.fd: Optional[int] = None
        if fcntl is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor lets the flock go
            self.fd = None


def _run_stage(stage: Stage, to_log: bool = False) -> dict:
    """Run one stage (in whichever process calls this); its times. `to_log`: its stdout and stderr go
    to <folder>/output.log (stages running side by side would interleave their progress bars)."""
    t0, c0 = time.time(), time.process_time()
    if to_log:
        stage.folder.mkdir(parents=True, exist_ok=True)
        with open(stage.folder / LOG_FILE, "a", encoding="utf-8") as f, \
                contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            stage.run(stage.config)
    else:
        stage.run(stage.config)
    return {"started": round(t0, 3), "finished": round(time.time(), 3), "cpu_s": round(time.process_time() - c0, 1)}


DONE_LINE = re.compile(r"^\[[0-9:]+\] done  (?P<stage>.+) \((?P<s>[0-9.]+)s\)$")  # a done_line as _say prints it


def done_line(name: str, times: dict) -> str:
    """The message for a finished stage (DONE_LINE reads it back from a launch's log)."""
    return f"done  {name} ({times['finished'] - times['started']:.0f}s)"


def record(stage: Stage, times: Optional[dict]) -> dict:
    """What happened to a stage in this launch: skipped (finished earlier) or ran, with its times."""
    rec = {"stage": stage.name, "folder": str(stage.folder), "skipped": times is None}
    if times is not None:
        rec.update(times, wall_s=round(times["finished"] - times["started"], 1))
    return rec


def check(stages: Sequence[Stage]) -> None:
    """Names unique, every dependency planned before its dependant."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ConfigError(f"plan: two stages are named {s.name!r}")
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise ConfigError(f"plan: stage {s.name!r} needs {missing}, which are not planned before it")
        seen.add(s.name)


def run_plan(stages: Sequence[Stage], workers: int = 1, threads: Optional[int] = None,
             say: Callable[[str], None] = _say) -> list[dict]:
    """Run `stages` (a plan, dependencies first); one record per stage, in plan order.

    A failing stage stops the launch: stages already running finish, nothing new
    starts, and the error is raised (finished stages stay finished for a rerun)."""
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    check(stages)
    finished = {s.name for s in stages if s.done()}
    stale([s for s in stages if s.name in finished])
    times: dict[str, Optional[dict]] = {}
    pending = []
    for s in stages:
        if s.name in finished:
            times[s.name] = None
            say(f"[skip] {s.name} ({s.folder} already complete)")
        else:
            pending.append(s)
    if pending:
        note = environment_note([s for s in stages if s.name in finished], environment())
        if note:
            say(note)
        if workers == 1:
            _set_threads(threads)
            error = _schedule(_InProcess(), pending, times, 1, say)
        else:
            error = _run_parallel(pending, times, workers, threads, say)
        if error is not None:
            raise error
    return [record(s, times[s.name]) for s in stages]


def environment_note(finished: Sequence[Stage], here: dict) -> Optional[str]:
    """A note for a launch that runs stages beside finished ones made in another environment (their
    stage.json's: device, library versions), naming what differs. Not a refusal (a folder may move to a
    faster machine), but their runs are no exact replicas: a CPU of another kind alone changed what the
    same teachers learned (benchmarks/quality_cpu/v2/README.md, section 22). None when all match."""
    other = [e for e in environments(s.folder for s in finished) if e["environment"] and e["environment"] != here]
    if not other:
        return None
    diffs = []
    for key in dict.fromkeys([*here, *(k for e in other for k in e["environment"])]):
        theirs = sorted({str(e["environment"].get(key)) for e in other if e["environment"].get(key) != here.get(key)})
        if theirs:
            diffs.append(f"{key} {' / '.join(theirs)} (here {here.get(key)})")
    n = sum(e["stages"] for e in other)
    return (f"[note] {n} finished stage{'s were' if n > 1 else ' was'} made in another environment: "
            f"{'; '.join(diffs)}. The stages run now are no exact replicas of theirs: compare runs of one "
            "environment (stage.json: environment)")


def stale(finished: Sequence[Stage], shown: int = 4) -> None:
    """Refuse to reuse finished stages that ran with other settings than the plan's (ConfigError naming
    each folder and key): skipping them would report an old run as the new setting's."""
    lines = []
    for s in finished:
        changed = s.changes()
        if changed:
            more = f"; and {len(changed) - shown} more" if len(changed) > shown else ""
            lines.append(f"  {s.name} ({s.folder}): {'; '.join(changed[:shown])}{more}")
    if lines:
        raise ConfigError("finished stages ran with other settings than this plan's (their config.yaml):\n"
                          + "\n".join(lines) + "\nuse another output_dir, restore those settings, or remove "
                          "those folders to run them again")


class _InProcess:
    """The executor of ``workers = 1``: runs a stage in this process when it is submitted."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the scheduler like a worker's error
            f.set_exception(e)
        return f


def _run_parallel(pending: list[Stage], times: dict, workers: int, threads: Optional[int],
                  say) -> Optional[BaseException]:
    added = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    os.environ.update(added)  # spawned workers copy this process's environment when they start
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads, os.getpid())) as pool:
            error = _schedule(pool, pending, times, workers, say)
    finally:
        for k in added:
            os.environ.pop(k, None)
    return error


def _schedule(pool, pending: list[Stage], times: dict, workers: int, say) -> Optional[BaseException]:
    """Start each stage whose dependencies are done while a worker is free (earliest in the plan first);
    a stage that another launch is running waits until that launch lets it go (then it is done, or this
    launch runs it); after a failure start nothing new. The first error, once the running stages are done."""
    running: dict[Future, tuple[Stage, _Claim]] = {}
    busy: set[str] = set()  # stages another launch holds (said once)
    error: Optional[BaseException] = None
    while running or (pending and error is None):
        ready = [s for s in pending if all(n in times for n in s.needs)] if error is None else []
        skipped = False  # a stage finished elsewhere: those waiting on it may start now
        for s in ready:
            if len(running) >= workers:
                break
            try:
                claim = _Claim(s.folder)
            except BlockingIOError:
                if s.name not in busy:
                    busy.add(s.name)
                    say(f"[busy] {s.name} (another launch is running it; waiting for it)")
                continue
            pending.remove(s)
            if s.done():  # finished by another launch since this one looked
                claim.release()
                try:
                    stale([s])
                except ConfigError as e:  # that launch ran another setting: stop as after a failure
                    error = error or e
                    continue
                times[s.name], skipped = None, True
                say(f"[skip] {s.name} (finished by another launch)")
                continue
            say(f"start {s.name}")
            running[pool.submit(_run_stage, s, workers > 1)] = (s, claim)
        if error is not None and not running:  # a stage finished elsewhere under other settings
            break
        held = busy & {s.name for s in pending}  # still held by another launch: look again in a while
        if not running:  # pending may have emptied just above
            if not pending:  # the last stages were finished by another launch
                break
            if skipped:
                continue
            if not held:  # cannot happen for a checked plan; never wait on nothing
                raise ConfigError(f"plan: no stage can start; waiting: {[s.name for s in pending]}")
            time.sleep(BUSY_POLL_S)  # only stages held elsewhere (or waiting on them) are left
            continue
        finished, _ = wait(list(running), timeout=BUSY_POLL_S if held else None, return_when=FIRST_COMPLETED)
        for f in finished:
            s, claim = running.pop(f)
            claim.release()
            try:
                times[s.name] = f.result()
            except BaseException as e:  # noqa: BLE001 - raised once the running stages are done
                say(f"FAILED {s.name}: {type(e).__name__}: {e} (its output: {s.folder / LOG_FILE})")
                error = error or e
                continue
            say(done_line(s.name, times[s.name]))
    return error
