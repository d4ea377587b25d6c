"""Numerical guards: a non-finite loss or gradient stops the run with a clear message before
the update is applied and leaves the last good checkpoint as it was; fp16 loss scaling skips
overflowing steps instead of stopping; on CPU, mixed precision falls back to float32."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import mptune.checkpoint as ckpt
from mptune.cli import main
from mptune.engine import TrainingError
from mptune.losses import TokenNLL
from synthetic import write_glue_rte

from .tally import tally
from .toy import make, outcome, same, toy_config

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class HugeGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient (overflow without a bad loss)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    t = make(tmp_path_factory.mktemp("base") / "run", toy_config())
    return outcome(t, t.fit())


def test_non_finite_loss_at_every_step_stops_and_keeps_last_checkpoint(tmp_path, baseline):
    for name, value in BAD.items():
        for k in range(1, 13):
            out = tmp_path / f"{name}-{k}"

            def poison(t, per, _k=k, _v=value):
                return per * _v if t.step + 1 == _k else per

            t = make(out, toy_config(), per_example_hook=poison)
            before = {p.name: (p / "tensors.safetensors").read_bytes() for p in ckpt.list_checkpoints(t.ckpt_dir)}
            with pytest.raises(TrainingError) as e:
                t.fit()
            msg = str(e.value)
            assert f"non-finite loss ({value})" in msg and f"at step {k}" in msg and "not applied" in msg
            good = (k - 1) // 2 * 2  # checkpoint_every=2
            if good:
                assert f"last good checkpoint: {t.ckpt_dir / f'step-{good:09d}'}" in msg
                assert ckpt.latest_checkpoint(t.ckpt_dir)[0].name == f"step-{good:09d}"
            else:
                assert "no checkpoint was written yet" in msg
            assert all((t.ckpt_dir / n / "tensors.safetensors").read_bytes() == b for n, b in before.items())
            rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
            assert rows[-1] == {"step": k, "error": f"non-finite loss ({value})"}
            # the cause fixed, the run resumes from the last good checkpoint and ends as if nothing happened
            same(outcome(t2 := make(out, toy_config()), t2.fit()), baseline)
            tally("faults: non-finite loss injected (nan/inf/-inf x every step)")


def test_non_finite_gradient_with_finite_loss_stops(tmp_path):
    for k in (1, 4, 7):
        def blow(t, per, _k=k):
            return HugeGrad.apply(per, float("inf")) if t.step + 1 == _k else per

        with pytest.raises(TrainingError, match=rf"non-finite gradient norm \(\w+\) at step {k}"):
            make(tmp_path / f"g{k}", toy_config(), per_example_hook=blow).fit()
        tally("faults: non-finite gradient injected")


def test_nan_in_a_real_prompt_tune_run(tmp_path, tiny_t5_dir, monkeypatch, capsys):
    data = tmp_path / "data"
    write_glue_rte(data, n_train=16, n_dev=8)
    argv = ["prompt-tune", f"model.name={tiny_t5_dir}", "task=rte", f"data.data_dir={data}", "prompt.length=4",
            "train.batch_size=4", "train.max_steps=6", "train.checkpoint_every=2", "train.eval_every=3",
            "train.eval_limit=4", "train.eval_batch_size=4", "train.log_every=1", "data.max_source_length=40",
            "data.max_target_length=6"]
    out, ref = tmp_path / "run", tmp_path / "ref"
    real, calls = TokenNLL.forward, {"n": 0}

    def nan_at_5(self, o):
        calls["n"] += 1
        loss = real(self, o)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(TokenNLL, "forward", nan_at_5)
    capsys.readouterr()
    assert main([*argv, f"output_dir={out}"]) == 2  # a clear message, no traceback
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 5" in err and "step-000000004" in err and "Traceback" not in err
    assert not (out / "prompt.safetensors").exists()
    monkeypatch.setattr(TokenNLL, "forward", real)
    assert main([*argv, f"output_dir={out}"]) == 0  # resumes from step 4
    assert main([*argv, f"output_dir={ref}"]) == 0
    assert torch.equal(load_file(str(out / "prompt.safetensors"))["prompt"],
                       load_file(str(ref / "prompt.safetensors"))["prompt"])
    tally("faults: non-finite loss injected (real prompt-tune, CLI)")


def test_mixed_precision_on_cpu_falls_back_to_float32(tmp_path, baseline, caplog):
    for mp in ("fp16", "bf16"):
        with caplog.at_level(logging.WARNING, logger="mptune.engine"):
            t = make(tmp_path / mp, toy_config(mixed_precision=mp))
        assert f"train.mixed_precision={mp} needs a GPU" in caplog.text and t.acc.mixed_precision == "no"
        same(outcome(t, t.fit()), baseline)  # exactly the float32 run


def test_fp16_loss_scaling_skips_overflowing_steps(tmp_path):
    """accelerate's GradScaler path, driven on CPU (CPU autocast to float16 + torch's CPU GradScaler): an overflow
    skips the update and the LR schedule, shrinks the scale, and training goes on."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import reliability.toy as toy

    AcceleratorState._reset_state(True)
    try:
        acc = Accelerator(cpu=True, mixed_precision="fp16")
        acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4), True
        orig = toy.accelerator
        toy.accelerator = lambda: acc
        try:
            seen = {}

            def overflow_at_3(t, per):
                if t.step + 1 == 3:
                    seen["w"] = t._raw().weight.detach().clone()
                    return HugeGrad.apply(per, 1e38)
                return per

            t = make(tmp_path / "fp16", toy_config(eval_every=0, checkpoint_every=0), per_example_hook=overflow_at_3)
            assert t.fp16_scaling
            t.fit()
        finally:
            toy.accelerator = orig
        rows = [json.loads(x) for x in (tmp_path / "fp16" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r.get("skipped_fp16_overflow")] == [3]
        assert rows[2]["lr"] == rows[1]["lr"]  # the schedule did not advance on the skipped step
        assert acc.scaler.get_scale() < 2.0 ** 4
        assert torch.isfinite(t._raw().weight).all()
        tally("faults: fp16 overflow (step skipped by the loss scaler)")
    finally:
        AcceleratorState._reset_state(True)
