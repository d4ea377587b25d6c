"""Safe files: pickles never run code. A pickle prompt (.bin/.pt/...) is refused unless the caller
passes allow_pickle=True, and even then it goes through torch's weights-only unpickler, which
refuses every payload below before calling it. Checkpoints are safetensors + JSON, never pickles.
Prompt-file metadata is validated (fuzzed)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import mptune.checkpoint as ckpt
from mptune.cli import main
from mptune.prompts.io import PICKLE_SUFFIXES, PromptFileError, PromptMeta, load_prompt, save_prompt

from .tally import tally


def payloads(marker: str) -> dict[str, object]:
    """Objects whose unpickling would create `marker` (each through a different callable)."""
    import builtins
    import subprocess

    cmd = f"touch {marker}"

    class OsSystem:
        def __reduce__(self):
            return (os.system, (cmd,))

    class Subprocess:
        def __reduce__(self):
            return (subprocess.call, (["touch", marker],))

    class Exec:
        def __reduce__(self):
            return (builtins.exec, (f"open({marker!r}, 'w').close()",))

    class Eval:
        def __reduce__(self):
            return (builtins.eval, (f"open({marker!r}, 'w')",))

    class Open:
        def __reduce__(self):
            return (builtins.open, (marker, "w"))

    class Nested:  # the payload hides inside a plausible prompt dict
        def __reduce__(self):
            return (os.system, (cmd,))

    return {"os.system": OsSystem(), "subprocess.call": Subprocess(), "builtins.exec": Exec(),
            "builtins.eval": Eval(), "builtins.open": Open(),
            "inside a prompt dict": {"prompt": torch.zeros(4, 32), "meta": Nested()}}


def _writers():
    def raw(proto):
        def w(obj, path):
            path.write_bytes(pickle.dumps(obj, protocol=proto))
        return w

    def torch_zip(obj, path):
        torch.save(obj, str(path))  # torch's zip container, data.pkl inside

    return {**{f"pickle protocol {p}": raw(p) for p in (0, 2, 4, 5)}, "torch.save zip": torch_zip}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickles_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    n = 0
    for pname, obj in payloads(str(marker)).items():
        for wname, write in _writers().items():
            for suffix in PICKLE_SUFFIXES[:3] + (".safetensors",):
                f = tmp_path / f"evil{suffix}"
                write(obj, f)
                with pytest.raises(PromptFileError) as e:  # default: refused outright
                    load_prompt(f)
                if suffix != ".safetensors":
                    assert "pickle files" in str(e.value) and "allow_pickle" in str(e.value)
                with pytest.raises(PromptFileError) as e:  # with the flag: the weights-only unpickler refuses
                    load_prompt(f, allow_pickle=True)
                assert not marker.exists(), f"{pname} via {wname} as {suffix} ran code"
                n += 2
    tally("bad inputs: malicious pickle loads (payload x format x suffix x flag)", n)


def test_sanity_the_payload_does_run_with_plain_pickle(tmp_path):
    """The payloads are real: plain pickle.loads creates the marker (so 'absent' above means something)."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(payloads(str(marker))["builtins.open"]))
    assert marker.exists()


def test_cli_refuses_a_pickle_prompt_unless_allowed(tmp_path, tiny_t5_dir, capsys):
    from synthetic import write_glue_rte

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save(payloads(str(marker))["inside a prompt dict"], str(evil))
    write_glue_rte(tmp_path / "data", n_train=4, n_dev=4)
    base = [f"model.name={tiny_t5_dir}", "task=rte", f"data.data_dir={tmp_path / 'data'}", "split=dev"]
    capsys.readouterr()
    assert main(["evaluate", f"prompt={evil}", *base]) == 2
    err = capsys.readouterr().err
    assert "pickle files" in err and "allow_pickle" in err and "Traceback" not in err and not marker.exists()
    assert main(["evaluate", f"prompt={evil}", "allow_pickle=true", *base]) == 2
    err = capsys.readouterr().err
    assert "weights-only unpickler" in err and "Traceback" not in err and not marker.exists()
    tally("bad inputs: malicious pickle loads (payload x format x suffix x flag)", 2)
    good = tmp_path / "trusted.pt"  # a trusted pickle prompt, accepted only with the flag
    torch.save({"prompt": torch.zeros(4, 32)}, str(good))
    assert main(["evaluate", f"prompt={good}", *base]) == 2
    assert main(["evaluate", f"prompt={good}", "allow_pickle=true", f"output_dir={tmp_path / 'ev'}", *base]) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_a_pickle_planted_in_a_checkpoint_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, {"a": torch.zeros(2)}, {"x": 1})
    d = root / "step-000000001"
    evil = pickle.dumps(payloads(str(marker))["os.system"])
    (d / "tensors.safetensors").write_bytes(evil)
    state = json.loads((d / "state.json").read_text())
    state["tensors_sha256"] = hashlib.sha256(evil).hexdigest()  # a forger who also fixes the checksums
    state["state_sha256"] = ckpt._state_digest(state)
    (d / "state.json").write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError, match="not readable"):
        ckpt.load_checkpoint(d)
    assert ckpt.latest_checkpoint(root) is None and not marker.exists()
    tally("bad inputs: malicious pickle loads (payload x format x suffix x flag)")


def test_trusted_pickle_prompts_load_only_with_the_flag(tmp_path):
    g = torch.Generator().manual_seed(0)
    good = torch.randn(4, 32, generator=g)
    for name, obj in {"plain": {"prompt": good}, "bare tensor": good, "peft adapter_model.bin": {"prompt_embeddings": good},
                      "state_dict wrapper": {"state_dict": {"prompt": good}}}.items():
        f = tmp_path / f"{name.replace(' ', '_')}.bin"
        torch.save(obj, str(f))
        with pytest.raises(PromptFileError, match="allow_pickle"):
            load_prompt(f, dim=32)
        tensors, meta = load_prompt(f, dim=32, allow_pickle=True)
        assert torch.equal(tensors["prompt"], good) and meta.kind == "soft" and (meta.length, meta.dim) == (4, 32)
        with pytest.raises(PromptFileError, match="hidden size is 32"):
            load_prompt(f, dim=64, allow_pickle=True)
    for bad in ({"prompt": torch.full((4, 32), float("nan"))}, {"prompt": torch.zeros(4, 32, dtype=torch.long)},
                {"prompt": torch.zeros(2, 3, 4)}, {"weights": good}, [good], {"prompt": 3}, {}):
        f = tmp_path / "bad.pt"
        torch.save(bad, str(f))
        with pytest.raises(PromptFileError):
            load_prompt(f, allow_pickle=True)
        tally("bad inputs: malformed prompt files")


# -- prompt metadata ---------------------------------------------------------------

META = {"format": "mptune-prompt", "format_version": "1", "kind": "soft", "backbone": "tiny", "length": "4",
        "dim": "32", "tasks": '["rte"]'}
VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["", "0", "-1", "4", "32", "2", "99", "1e3", "nan", "null",
                                                          "[]", '["rte"]', "[1]", '{"a":1}', "soft", "decomposed"]))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drop=st.sets(st.sampled_from(sorted(META)), max_size=2),
       change=st.dictionaries(st.sampled_from(sorted(META) + ["rank", "extra"]), VALUES, max_size=3),
       shape=st.sampled_from([(4, 32), (4, 31), (5, 32), (4,), (1, 4, 32), (0, 32)]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.int64]),
       tensor_name=st.sampled_from(["prompt", "prompt", "shared", "weight"]))
def test_prompt_metadata_fuzz(tmp_path_factory, drop, change, shape, dtype, tensor_name):
    """Any damaged metadata or tensor: PromptFileError, or a load whose result matches the metadata."""
    md = {k: v for k, v in META.items() if k not in drop}
    md.update(change)
    f = tmp_path_factory.getbasetemp() / "fuzz-prompt.safetensors"
    save_file({tensor_name: torch.ones(shape).to(dtype)}, str(f), metadata=md)
    try:
        tensors, meta = load_prompt(f, dim=32, backbone="tiny")
    except PromptFileError as e:
        assert str(f) in str(e)
        tally("bad inputs: prompt metadata/tensor fuzz")
        return
    # accepted: then it really is a valid soft prompt for this backbone
    assert meta.kind == "soft" and meta.backbone == "tiny" and meta.dim == 32
    assert tuple(tensors["prompt"].shape) == (meta.length, 32) and tensors["prompt"].is_floating_point()
    tally("bad inputs: prompt metadata/tensor fuzz")


def test_prompt_files_are_written_atomically(tmp_path, monkeypatch):
    f = tmp_path / "prompt.safetensors"
    meta = PromptMeta(kind="soft", backbone="tiny", length=4, dim=32, tasks=["rte"])
    save_prompt(f, {"prompt": torch.zeros(4, 32)}, meta)
    before = f.read_bytes()
    import mptune.utils as utils

    def crash(fd):
        raise KeyboardInterrupt("killed during fsync")

    monkeypatch.setattr(utils.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_prompt(f, {"prompt": torch.ones(4, 32)}, meta)
    monkeypatch.undo()
    assert f.read_bytes() == before and load_prompt(f)[0]["prompt"].sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["prompt.safetensors"]  # no temp file left behind
    tally("faults: killed while writing a prompt file")
