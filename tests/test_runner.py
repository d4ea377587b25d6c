"""The plan runner (mptune.runner): dependencies, parallel stages, skipping, failures.
Stages here are a fake recipe that sleeps; the spawned workers import it from this module."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from mptune.config import ConfigError
from mptune.plan import Stage
from mptune.recipes import common
from mptune.runner import run_plan


@dataclass
class NapConfig:
    output_dir: str
    seconds: float = 1.0
    fail: bool = False
    meet: Optional[str] = None  # another stage's folder: start napping only once that stage has started


def nap(cfg: NapConfig) -> dict:
    Path(cfg.output_dir + ".started").touch()
    if cfg.meet:  # overlap by construction, not by timing (a loaded machine may start a worker late)
        deadline = time.monotonic() + 120
        while not Path(cfg.meet + ".started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    print(f"napping {cfg.seconds}s")
    time.sleep(cfg.seconds)
    if cfg.fail:
        raise ValueError(f"{cfg.output_dir}: boom")
    common.write_stage(Path(cfg.output_dir), "nap", cfg)
    return {}


def _stage(root: Path, name: str, needs=(), **kw) -> Stage:
    return Stage(name, root / name, "nap", nap, NapConfig(str(root / name), **kw), tuple(needs))


def test_parallel_stages_keep_their_own_wall_time_and_wait_for_dependencies(tmp_path):
    meet = lambda other: str(tmp_path / other)  # noqa: E731
    stages = [_stage(tmp_path, "a", meet=meet("b")), _stage(tmp_path, "b", seconds=1.5, meet=meet("a")),
              _stage(tmp_path, "c", ["a", "b"])]
    recs = {r["stage"]: r for r in run_plan(stages, workers=2, threads=1, say=lambda m: None)}
    a, b, c = recs["a"], recs["b"], recs["c"]
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # a and b overlapped
    assert c["started"] >= max(a["finished"], b["finished"])  # c waited for both
    for r, slept in ((a, 1.0), (b, 1.5), (c, 1.0)):  # each its own start -> finish, not a gap between finishes
        assert r["wall_s"] == pytest.approx(r["finished"] - r["started"], abs=0.06)
        assert slept <= r["wall_s"] and not r["skipped"]
    assert c["wall_s"] < 2.5  # c's own nap, not counted from the run's start (>= 2.5 s: a and b first)
    assert all((tmp_path / n / "stage.json").is_file() for n in "abc")
    assert (tmp_path / "b" / "output.log").read_text() == "napping 1.5s\n"  # a worker's output: in its folder

    again = run_plan(stages, workers=2, say=lambda m: None)  # rerun: all finished, nothing started
    assert [r["skipped"] for r in again] == [True] * 3 and all("wall_s" not in r for r in again)


def test_a_failing_stage_stops_what_depends_on_it(tmp_path):
    stages = [_stage(tmp_path, "a", seconds=0.1), _stage(tmp_path, "b", seconds=0.1, fail=True),
              _stage(tmp_path, "c", ["b"], seconds=0.1)]
    for workers in (1, 2):
        with pytest.raises(ValueError, match="boom"):
            run_plan(stages, workers=workers, say=lambda m: None)
        assert (tmp_path / "a" / "stage.json").is_file() and not (tmp_path / "c").exists()


def test_in_process_runner_runs_in_plan_order(tmp_path):
    said = []
    stages = [_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "b", ["a"], seconds=0)]
    recs = run_plan(stages, workers=1, say=said.append)
    assert recs[0]["finished"] <= recs[1]["started"]
    assert said == ["start a", said[1], "start b", said[3]] and said[1].startswith("done  a")


def test_plan_order_and_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="needs \\['b'\\]"):
        run_plan([_stage(tmp_path, "a", ["b"]), _stage(tmp_path, "b")], say=lambda m: None)
    with pytest.raises(ConfigError, match="two stages are named 'a'"):
        run_plan([_stage(tmp_path, "a"), _stage(tmp_path, "a")], say=lambda m: None)
    with pytest.raises(ConfigError, match="workers"):
        run_plan([], workers=0)


def test_workers_end_when_the_runner_is_killed(tmp_path):
    """kill -9 of the runner: its spawned workers notice and exit instead of running on as orphans."""
    import json
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from test_runner import _stage\n"
        "from mptune.runner import run_plan\n"
        "if __name__ == '__main__':\n"
        f"    root = Path({str(tmp_path)!r})\n"
        "    run_plan([_stage(root, 'a', seconds=300), _stage(root, 'b', seconds=300)], workers=2)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{n}.started").exists() for n in "ab") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all((tmp_path / f"{n}.started").exists() for n in "ab"), "the workers did not start"
        kids = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
        assert kids, "no worker processes"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"  # a zombie has exited (its new parent may not reap it at once)

    deadline = time.monotonic() + 30
    while any(alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in kids if alive(p)]
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    # the resource tracker is a child too; the stage workers are what must not run on
    assert not left, json.dumps({"still running": left})


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_stage_another_launch_holds_is_not_run_twice(tmp_path, monkeypatch, other_finishes):
    """Two launches on one folder (run.py --reverse beside a forward launch): a stage the other launch
    holds is left to it; this launch runs the rest meanwhile, then counts it as finished elsewhere, or
    runs it itself if the other launch let it go unfinished (killed, say)."""
    import fcntl
    import os

    from mptune import runner

    monkeypatch.setattr(runner, "BUSY_POLL_S", 0.05)
    stages = [_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "b", seconds=0)]
    (tmp_path / "a").mkdir()
    other = os.open(tmp_path / "a" / runner.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the other launch" is running a
    said = []

    def say(msg: str) -> None:
        said.append(msg)
        if msg.startswith("done  b"):  # the other launch ends a while this one has been waiting for it
            if other_finishes:
                common.write_stage(tmp_path / "a", "nap", stages[0].config)
            os.close(other)

    recs = {r["stage"]: r for r in run_plan(stages, workers=1, say=say)}
    assert said[0].startswith("[busy] a") and said[1] == "start b"
    assert not recs["b"]["skipped"]
    if other_finishes:
        assert recs["a"]["skipped"] and not (tmp_path / "a.started").exists()  # not run a second time
        assert said[-1] == "[skip] a (finished by another launch)"
    else:
        assert not recs["a"]["skipped"] and (tmp_path / "a.started").exists()
        assert (tmp_path / "a" / "stage.json").is_file() and said[-2] == "start a"


def test_a_launch_lets_go_of_its_stages(tmp_path):
    """The lock ends with the stage: a second launch can take a stage the first one ran or failed."""
    import fcntl
    import os

    from mptune.runner import LOCK_FILE

    stages = [_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "b", seconds=0, fail=True)]
    with pytest.raises(ValueError, match="boom"):
        run_plan(stages, workers=2, say=lambda m: None)
    for name in "ab":
        fd = os.open(tmp_path / name / LOCK_FILE, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
        os.close(fd)


def test_a_finished_stage_run_with_other_settings_is_refused_not_reused(tmp_path):
    run_plan([_stage(tmp_path, "a", seconds=0)], workers=1, say=lambda m: None)
    said = []
    with pytest.raises(ConfigError) as e:  # an old result is never passed off as the new setting's
        run_plan([_stage(tmp_path, "a", seconds=0.5), _stage(tmp_path, "b", seconds=0)], workers=1, say=said.append)
    assert f"a ({tmp_path / 'a'}): seconds: 0 -> 0.5" in str(e.value) and "output_dir" in str(e.value)
    assert said == [] and not (tmp_path / "b").exists()  # refused before anything started
    assert common.stage_changes(tmp_path / "a", NapConfig(str(tmp_path / "a"), seconds=0)) == []


def test_a_moved_run_folder_or_an_older_config_still_counts_as_finished(tmp_path):
    run_plan([_stage(tmp_path / "old", "a", seconds=0)], workers=1, say=lambda m: None)
    (tmp_path / "old").rename(tmp_path / "new")  # output_dir in its config.yaml names the old place
    saved = tmp_path / "new" / "a" / "config.yaml"
    saved.write_text(saved.read_text().replace("meet: null\n", ""))  # a run made before `meet` existed
    recs = run_plan([_stage(tmp_path / "new", "a", seconds=0)], workers=1, say=lambda m: None)
    assert recs[0]["skipped"]


def test_a_launch_beside_stages_of_another_environment_names_what_differs(tmp_path):
    import json

    from mptune.utils import environment

    run_plan([_stage(tmp_path, "a", seconds=0)], workers=1, say=lambda m: None)
    said = []
    run_plan([_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "b", seconds=0)], workers=1, say=said.append)
    assert not any("[note]" in m for m in said)  # made here: nothing to say
    marker = tmp_path / "a" / "stage.json"
    stage = json.loads(marker.read_text())
    stage["environment"] = {**stage["environment"], "device": "Other CPU", "torch": "9.9"}
    marker.write_text(json.dumps(stage))
    said = []
    run_plan([_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "b", seconds=0)], workers=1, say=said.append)
    assert not any("[note]" in m for m in said)  # b is finished too: nothing runs beside a, nothing to say
    said = []
    run_plan([_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "c", ["a"], seconds=0)], workers=1, say=said.append)
    here = environment()
    note = next(m for m in said if m.startswith("[note]"))
    assert said.index(note) < said.index("start c")  # said before anything runs
    assert f"torch 9.9 (here {here['torch']})" in note and f"device Other CPU (here {here['device']})" in note
    assert "1 finished stage was made in another environment" in note and "transformers" not in note


@pytest.mark.parametrize("same_settings", [True, False])
def test_a_stage_waiting_on_one_finished_elsewhere_starts_once_it_is_done(tmp_path, monkeypatch, same_settings):
    """A second launch whose next stage needs one the first launch is running: once that one is finished
    elsewhere, the waiting stage starts (it used to end the launch: "no stage can start"); if the other
    launch ran it under other settings, this launch stops, naming them."""
    import fcntl
    import os
    import threading

    from mptune import runner

    monkeypatch.setattr(runner, "BUSY_POLL_S", 0.05)
    stages = [_stage(tmp_path, "a", seconds=0), _stage(tmp_path, "c", ["a"], seconds=0)]
    (tmp_path / "a").mkdir()
    other = os.open(tmp_path / "a" / runner.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the other launch" is running a

    def other_finishes():
        common.write_stage(tmp_path / "a", "nap", NapConfig(str(tmp_path / "a"), seconds=0 if same_settings else 2))
        os.close(other)

    threading.Timer(0.3, other_finishes).start()
    said = []
    if not same_settings:
        with pytest.raises(ConfigError, match="seconds: 2 -> 0"):
            run_plan(stages, workers=1, say=said.append)
        assert not (tmp_path / "c").exists()
        return
    recs = {r["stage"]: r for r in run_plan(stages, workers=1, say=said.append)}
    assert recs["a"]["skipped"] and not recs["c"]["skipped"] and (tmp_path / "c" / "stage.json").is_file()
    assert said[:3] == ["[busy] a (another launch is running it; waiting for it)",
                        "[skip] a (finished by another launch)", "start c"]
