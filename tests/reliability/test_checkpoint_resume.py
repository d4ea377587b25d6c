"""Checkpoint and resume: a run killed anywhere and resumed ends exactly where an
uninterrupted run ends; damaged checkpoints are refused (checksums) and the previous
good one is used.

Most faults are injected into the toy workload (milliseconds per run, so every step
and every phase of a step can be hit); one test kills a real `mptune prompt-tune`
process with SIGKILL and resumes it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import mptune.checkpoint as ckpt
import mptune.engine as engine
from mptune.cli import main
from synthetic import write_glue_rte

from .launch import child_env
from .tally import tally
from .toy import Killed, make, outcome, same, toy_config

STEPS = 12


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    t = make(tmp_path_factory.mktemp("base") / "run", toy_config())
    return outcome(t, t.fit())


def _resume(out: Path) -> dict:
    t = make(out, toy_config())
    return outcome(t, t.fit())


def _kill_at(step: int):
    def hook(t):
        if t.step + 1 == step:
            raise Killed(f"killed before the loss of step {step}")
    return hook


def test_kill_before_every_step_then_resume_is_exact(tmp_path, baseline):
    for k in range(1, STEPS + 1):
        out = tmp_path / f"k{k}"
        with pytest.raises(Killed):
            make(out, toy_config(), loss_hook=_kill_at(k)).fit()
        same(_resume(out), baseline)
        tally("faults: process killed (toy, every step)")


def test_kill_during_checkpoint_write(tmp_path, baseline, monkeypatch):
    real = ckpt.save_file
    for k in range(2, STEPS + 1, 2):
        out = tmp_path / f"w{k}"

        def torn(tensors, filename, metadata=None, _k=k):
            real(tensors, filename, metadata)
            if Path(filename).parent.name == f".tmp-step-{_k:09d}":
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])  # half written, then the kill
                raise Killed(f"killed while writing checkpoint {_k}")

        monkeypatch.setattr(ckpt, "save_file", torn)
        with pytest.raises(Killed):
            make(out, toy_config()).fit()
        monkeypatch.setattr(ckpt, "save_file", real)
        assert (out / "checkpoints" / f".tmp-step-{k:09d}").is_dir()  # the torn write never looks whole
        same(_resume(out), baseline)
        tally("faults: killed mid checkpoint write")


def test_kill_during_eval_and_mid_log_line(tmp_path, baseline, monkeypatch):
    for k in (3, 6, 9, 12):  # eval steps: the loss row of step k is already in the log
        out = tmp_path / f"e{k}"

        def boom(t, _k=k):
            if t.step == _k:
                raise Killed("killed during dev evaluation")

        with pytest.raises(Killed):
            make(out, toy_config(), eval_hook=boom).fit()
        same(_resume(out), baseline)
        tally("faults: killed during evaluation")
    real = engine.append_jsonl
    for k in (1, 5, 8, 11):
        out = tmp_path / f"l{k}"

        def torn(path, row, _k=k):
            if row.get("step") == _k and "loss" in row:
                with open(path, "a") as f:
                    f.write(json.dumps(row)[:17])  # a torn line, no newline
                raise Killed("killed mid log line")
            real(path, row)

        monkeypatch.setattr(engine, "append_jsonl", torn)
        with pytest.raises(Killed):
            make(out, toy_config()).fit()
        monkeypatch.setattr(engine, "append_jsonl", real)
        same(_resume(out), baseline)
        tally("faults: killed mid log line")


def test_killed_twice(tmp_path, baseline):
    out = tmp_path / "twice"
    for k in (5, 10):
        with pytest.raises(Killed):
            make(out, toy_config(), loss_hook=_kill_at(k)).fit()
    same(_resume(out), baseline)
    tally("faults: process killed (toy, every step)", 2)


# -- damaged checkpoints ---------------------------------------------------------

def _killed_at_9(out: Path) -> Path:
    with pytest.raises(Killed):
        make(out, toy_config(), loss_hook=_kill_at(9)).fit()
    return out / "checkpoints"


def _flip(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    i = int(at * (len(data) - 1))
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "tensors truncated to half": lambda d: (d / "tensors.safetensors").write_bytes(
        (d / "tensors.safetensors").read_bytes()[: (d / "tensors.safetensors").stat().st_size // 2]),
    "tensors emptied": lambda d: (d / "tensors.safetensors").write_bytes(b""),
    "tensors bit flip in header": lambda d: _flip(d / "tensors.safetensors", 0.01),
    "tensors bit flip in data": lambda d: _flip(d / "tensors.safetensors", 0.97),
    "tensors garbage appended": lambda d: (d / "tensors.safetensors").write_bytes(
        (d / "tensors.safetensors").read_bytes() + b"\0" * 9),
    "tensors missing": lambda d: (d / "tensors.safetensors").unlink(),
    "tensors swapped for another checkpoint's": None,  # filled below
    "state.json missing": lambda d: (d / "state.json").unlink(),
    "state.json truncated": lambda d: (d / "state.json").write_text((d / "state.json").read_text()[:40]),
    "state.json not JSON": lambda d: (d / "state.json").write_bytes(b"\xff\xfe garbage"),
    "state.json value edited": lambda d: (d / "state.json").write_text(
        json.dumps({**json.loads((d / "state.json").read_text()), "best_score": 123.0})),
    "state.json checksum edited": lambda d: (d / "state.json").write_text(
        json.dumps({**json.loads((d / "state.json").read_text()), "tensors_sha256": "0" * 64})),
}


def _swap(d: Path) -> None:
    other = d.parent / "step-000000006" / "tensors.safetensors"
    (d / "tensors.safetensors").write_bytes(other.read_bytes())


DAMAGE["tensors swapped for another checkpoint's"] = _swap


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_refused_and_previous_used(tmp_path, baseline, damage, caplog):
    root = _killed_at_9(tmp_path / "run")
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000000008", "step-000000006"]
    DAMAGE[damage](root / "step-000000008")
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(root / "step-000000008")
    assert "step-000000008" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="mptune.checkpoint"):
        t = make(tmp_path / "run", toy_config())
    assert t.resumed_from.name == "step-000000006"
    assert "refusing damaged checkpoint" in caplog.text and "step-000000008" in caplog.text
    assert (root / "refused-step-000000008").is_dir()  # kept aside for inspection, out of the way
    same(outcome(t, t.fit()), baseline)
    tally("faults: damaged checkpoint (refused, previous used)")


def test_all_checkpoints_damaged_starts_over(tmp_path, baseline, caplog):
    root = _killed_at_9(tmp_path / "run")
    for d in ckpt.list_checkpoints(root):
        (d / "tensors.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="mptune.checkpoint"):
        t = make(tmp_path / "run", toy_config())
    assert t.resumed_from is None and caplog.text.count("refusing damaged checkpoint") == 2
    same(outcome(t, t.fit()), baseline)  # old log rows and checkpoints are gone, not mixed in
    tally("faults: damaged checkpoint (refused, previous used)", 2)


def test_resume_refuses_changed_settings(tmp_path):
    _killed_at_9(tmp_path / "run")
    for key, value in (("batch_size", 2), ("lr", 0.1), ("seed", 8), ("max_steps", 20)):
        with pytest.raises(ckpt.CheckpointError, match=f"train.{key}="):
            make(tmp_path / "run", toy_config(**{key: value}))
        tally("bad inputs: resume with changed train settings")


def test_resume_refuses_a_changed_loss(tmp_path):
    """The loss's reduction and what it is the likelihood of change the run as much as the lr does."""
    _killed_at_9(tmp_path / "run")
    for key, value in (("token_reduction", "sum"), ("target_loss", "labels")):
        with pytest.raises(ckpt.CheckpointError, match=f"train.{key}="):
            make(tmp_path / "run", toy_config(**{key: value}))


def test_resume_false_starts_fresh(tmp_path, baseline):
    _killed_at_9(tmp_path / "run")
    t = make(tmp_path / "run", toy_config(), resume=False)
    assert t.resumed_from is None and not ckpt.list_checkpoints(t.ckpt_dir)
    same(outcome(t, t.fit()), baseline)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(["tensors.safetensors", "state.json"]),
       how=st.sampled_from(["flip", "truncate", "insert", "overwrite"]),
       at=st.floats(0, 1), byte=st.integers(0, 255))
def test_checkpoint_damage_is_always_detected(tmp_path_factory, which, how, at, byte):
    """Any single damage to either file: refused, or (JSON whitespace only) the same checkpoint."""
    root = tmp_path_factory.getbasetemp() / "fuzz-ckpt"
    if not (root / "step-000000001").is_dir():
        g = torch.Generator().manual_seed(0)
        ckpt.save_checkpoint(root, 1, {"a": torch.randn(5, 3, generator=g), "b": torch.arange(4)},
                             {"x": [1, 2.5, "s"], "best_score": 0.25, "history": [{"step": 1}]})
    good = root / "step-000000001"
    case = root / "case"
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(good, case)
    f = case / which
    data = bytearray(f.read_bytes())
    i = min(int(at * len(data)), len(data) - 1)
    if how == "flip":
        data[i] ^= (byte or 1)
    elif how == "truncate":
        data = data[:i]
    elif how == "insert":
        data[i:i] = bytes([byte])
    else:
        data[i] = byte
    f.write_bytes(bytes(data))
    t0, s0 = ckpt.load_checkpoint(good)
    try:
        t1, s1 = ckpt.load_checkpoint(case)
    except ckpt.CheckpointError:
        tally("faults: random checkpoint byte damage (detected)")
        return
    assert s1 == s0 and t1.keys() == t0.keys() and all(torch.equal(t1[k], t0[k]) for k in t0)
    tally("faults: random checkpoint byte damage (detected)")


def test_every_single_byte_flip_is_detected(tmp_path):
    """Exhaustive: flip the low bit of every byte of both files of a small checkpoint."""
    g = torch.Generator().manual_seed(1)
    ckpt.save_checkpoint(tmp_path, 3, {"module.weight": torch.randn(3, 4, generator=g), "rng.0.torch": torch.arange(8).to(torch.uint8)},
                         {"optimizer": {"param_groups": [{"lr": 0.3, "params": [0]}], "scalars": {}},
                          "plan": {"epoch": 1, "cursor": 4}, "best_score": 0.5, "best_step": 2,
                          "history": [{"step": 2, "dev_score": 0.5}], "train": {"lr": 0.3}})
    d = tmp_path / "step-000000003"
    t0, s0 = ckpt.load_checkpoint(d)
    n = 0
    for name in ("tensors.safetensors", "state.json"):
        f = d / name
        orig = f.read_bytes()
        for i in range(len(orig)):
            bad = bytearray(orig)
            bad[i] ^= 0x01
            f.write_bytes(bytes(bad))
            try:
                t1, s1 = ckpt.load_checkpoint(d)
            except ckpt.CheckpointError:
                n += 1
                continue
            assert s1 == s0 and all(torch.equal(t1[k], t0[k]) for k in t0), (name, i)  # only harmless (JSON whitespace)
            n += 1
        f.write_bytes(orig)
    tally("faults: exhaustive single-byte flips in a checkpoint (detected)", n)


# -- a real process, SIGKILL -------------------------------------------------------

ARGS = ["task=rte", "prompt.length=4", "train.batch_size=4", "train.max_steps=30", "train.checkpoint_every=3",
        "train.eval_every=7", "train.eval_limit=4", "train.eval_batch_size=4", "train.log_every=1",
        "data.max_source_length=40", "data.max_target_length=6", "train.lr=0.3"]


def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path, tiny_t5_dir):
    data = tmp_path / "data"
    write_glue_rte(data, n_train=40, n_dev=16)
    argv = ["prompt-tune", f"model.name={tiny_t5_dir}", f"data.data_dir={data}", *ARGS]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    env = child_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mptune.cli", *argv, f"output_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not (killed / "checkpoints" / "step-000000006").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "prompt.safetensors").exists()  # really killed mid-run
    steps_done = max(json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines() if x.endswith("}"))
    assert 6 <= steps_done < 30
    tally("faults: SIGKILL of a real prompt-tune process")

    assert main([*argv, f"output_dir={killed}"]) == 0  # resume (in this process)
    assert main([*argv, f"output_dir={ref}"]) == 0  # uninterrupted
    a, b = load_file(str(killed / "prompt.safetensors")), load_file(str(ref / "prompt.safetensors"))
    assert torch.equal(a["prompt"], b["prompt"])  # bit for bit
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (killed, ref))
    assert ma == mb
    rows = lambda d: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}  # noqa: E731
                      for x in (d / "log.jsonl").read_text().splitlines()]
    assert rows(killed) == rows(ref)


ADAPT = ["tasks=[rte]", "prompt.length=4", "train.batch_size=4", "train.max_steps=6", "train.checkpoint_every=3",
         "train.eval_every=0", "train.log_every=1", "data.max_source_length=40", "data.max_target_length=6",
         "train.lr=0.3"]


@pytest.mark.parametrize("command", [["adapt"], ["distill", "distill.shared_init=vocab", "distill.weight=0"]])
def test_resume_refuses_a_changed_per_group_learning_rate(tmp_path, tiny_llama_dir, capsys, command):
    """Issue #15.7 on a tiny Llama: adapt with lr_task=0.01 for 6 steps, then resume from step 3 with
    lr_task=5.0. The checkpoint's param groups used to replace the new lr silently (exit 0, the prompt
    bit for bit that of the lr 0.01 run); now the resume is refused, naming the key and both values."""
    data = tmp_path / "data"
    write_glue_rte(data, n_train=24, n_dev=8)
    run = tmp_path / "run"
    argv = [*command, f"model.name={tiny_llama_dir}", f"data.data_dir={data}", f"output_dir={run}", *ADAPT]
    assert main([*argv, "lr_task=0.01"]) == 0
    done = load_file(str(run / "prompt.safetensors"))
    shutil.rmtree(run / "checkpoints" / "step-000000006")  # the newest checkpoint left is step 3

    assert main([*argv, "lr_task=5.0"]) == 2
    err = capsys.readouterr().err
    assert "step-000000003" in err and "lr_task=0.01 (now 5.0)" in err and "resume=false" in err, err
    if command[0] == "adapt":  # P*'s own lr (default train.lr)
        assert main([*argv, "lr_task=0.01", "lr_shared=0.7"]) == 2
        assert "with lr_shared=0.3 (now 0.7);" in capsys.readouterr().err
    assert ckpt.list_checkpoints(run / "checkpoints")[0].name == "step-000000003"  # nothing was touched
    tally("bad inputs: resume with changed train settings")

    # the same lr resumes and ends bit for bit where the uninterrupted run ended
    assert main([*argv, "lr_task=0.01"]) == 0
    again = load_file(str(run / "prompt.safetensors"))
    assert done.keys() == again.keys() and all(torch.equal(done[k], again[k]) for k in done)
    # resume=false starts afresh with the new lr (and so ends elsewhere)
    assert main([*argv, "lr_task=5.0", "resume=false"]) == 0
    fresh = load_file(str(run / "prompt.safetensors"))
    assert not torch.equal(fresh["task_u"], done["task_u"])


def test_resume_refuses_changed_group_lrs_of_any_trainer(tmp_path):
    """Every param group's lr is checked, named by the group's "name" (the setting behind it), else by
    train.lr (a group without its own lr) or its position."""
    _killed_at_9(tmp_path / "run")

    def groups_of(**lrs):
        def build(module):
            return [{"params": list(module.parameters()), **lrs}]
        return build

    cases = [({"lr": 0.5, "name": "lr_task"}, "lr_task=0.05 (now 0.5)"),
             ({"lr": 0.07}, "param group 0 lr=0.05 (now 0.07)")]
    for now, msg in cases:
        with pytest.raises(ckpt.CheckpointError, match=re.escape(msg)):
            make(tmp_path / "run", toy_config(), param_groups=groups_of(**now))
    # a group that takes train.lr is reported once, as train.lr
    with pytest.raises(ckpt.CheckpointError, match=r"train\.lr=0\.05 \(now 0\.1\); resuming") as e:
        make(tmp_path / "run", toy_config(lr=0.1))
    assert "param group" not in str(e.value)
    # the same lrs given explicitly still resume
    make(tmp_path / "run", toy_config(), param_groups=groups_of(lr=0.05, name="lr_task"))


def test_resume_refuses_another_text_format_or_dropout(tmp_path, tiny_llama_dir, capsys):
    """data.format changes every example's text and model.dropout the forward: a checkpoint written under
    one is not continued under the other (the error names the key and both values)."""
    data = tmp_path / "data"
    write_glue_rte(data, n_train=24, n_dev=8)
    run = tmp_path / "run"
    argv = ["prompt-tune", "task=rte", f"model.name={tiny_llama_dir}", f"data.data_dir={data}", f"output_dir={run}",
            "prompt.length=4", "train.max_steps=4", "train.batch_size=4", "train.checkpoint_every=2",
            "train.eval_every=0", "data.eval_limit=4"]
    assert main(argv) == 0
    shutil.rmtree(run / "checkpoints" / "step-000000004")  # the newest checkpoint left is step 2
    for change, said in (("data.format=natural", "data.format=t5 (now natural)"),
                         ("model.dropout=keep", "model.dropout=off (now keep)")):
        assert main([*argv, change]) == 2
        err = capsys.readouterr().err
        assert "step-000000002" in err and said in err, err
    assert main(argv) == 0  # the same settings resume
