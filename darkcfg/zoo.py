"""Published cfg/weights pairs by name, the download store, and where darkcfg looks for weights.

*Zoo index*: ``darkcfg/data/zoo.json``, shipped inside the package (``$DARKCFG_ZOO`` or
``--index`` may name another).  Each model lists its files (cfg, weights, names) with the
upstream URL (pinned to a commit or a release), the byte size and the hash the upstream
project or a packager published (sha256, sha1 or sha512).  Files published without any hash
(the CSPNet models on Google Drive) are *unverified*: they are downloaded only with
``trust=True`` (``--trust``, or a yes on a terminal prompt); their sha256 is then printed and
recorded in the store (``tofu.json`` beside them) and checked on every later use: trust on
first use.

*Store*: :func:`fetch` puts model ``NAME``'s files into ``<store>/NAME/``, where the store is
``--store``, else ``$DARKCFG_HOME``, else the user cache folder (``~/.cache/darkcfg`` on Linux,
``~/Library/Caches/darkcfg`` on macOS, ``%LOCALAPPDATA%\\darkcfg\\Cache`` on Windows) and never
the installed package.  Downloads are bounded and atomic (:mod:`darkcfg.download`).

*Weights discovery* for a cfg given by path (no ``--weights``): ``<cfg stem>.weights`` beside the
cfg, then the folders of ``$DARKCFG_WEIGHTS`` (``os.pathsep``-separated), ``./weights`` and, in a
source checkout, its ``weights/`` folder (:func:`store_dirs`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Optional

from .download import DEFAULT_DEADLINE, HASHES, env_seconds, check_url, download, file_digests
from .errors import DarkcfgError
from .fileio import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_INDEX = PACKAGE_DIR / "data" / "zoo.json"
CHECKOUT = PACKAGE_DIR.parent
TOFU_FILE = "tofu.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HEX_LEN = {"sha256": 64, "sha1": 40, "sha512": 128}


def check_name(name: str, what: str = "model name") -> str:
    """``name`` if it is one plain path component (letters, digits, ``._+-``; no ``..``); else an error.

    Model and file names are joined onto the store: ``../../x`` or ``/etc/x`` must never escape it.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise DarkcfgError(f"invalid {what} {name!r}: must be a single file name (letters, digits, '.', '_', "
                           "'+', '-'; no '/', no '..')")
    return name


def cache_home() -> Path:
    """The zoo store: ``$DARKCFG_HOME``, else the platform's per-user cache folder."""
    home = os.environ.get("DARKCFG_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "darkcfg" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "darkcfg"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "darkcfg"


def store_dirs() -> list[Path]:
    """Folders searched for ``<cfg stem>.weights``: ``$DARKCFG_WEIGHTS``, ``./weights``, a checkout's ``weights/``."""
    dirs = [Path(p) for p in os.environ.get("DARKCFG_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "weights")
    if (CHECKOUT / "setup.cfg").is_file():  # a source checkout, not site-packages
        dirs.append(CHECKOUT / "weights")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


@dataclass(frozen=True)
class ZooFile:
    role: str  # cfg, weights, names
    url: str
    bytes: int
    hashes: dict[str, str] = field(default_factory=dict)  # published: sha256/sha1/sha512 -> hex
    name: str = ""  # file name in the store (default: the URL's last component)

    @property
    def filename(self) -> str:
        return self.name or self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def sha256(self) -> str:
        return self.hashes.get("sha256", "")

    @property
    def verified(self) -> bool:
        return bool(self.hashes)


@dataclass(frozen=True)
class ZooModel:
    name: str
    task: str
    dataset: str
    input: tuple[int, int]
    source: str
    files: tuple[ZooFile, ...]
    license: str = ""
    note: str = ""

    @property
    def upto(self) -> Optional[int]:
        """For a partial backbone ``*.conv.N``: how many layers its weights file covers."""
        tail = self.name.rsplit(".", 1)[-1]
        return int(tail) if self.task == "backbone" and tail.isdigit() else None

    def file(self, role: str) -> Optional[ZooFile]:
        return next((f for f in self.files if f.role == role), None)

    @property
    def verified(self) -> bool:
        return all(f.verified for f in self.files)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "dataset": self.dataset, "input": list(self.input),
                "source": self.source, "license": self.license, "verified": self.verified, "note": self.note,
                "files": {f.role: {"url": f.url, "bytes": f.bytes, "file": f.filename, **f.hashes}
                          for f in self.files}}


def _parse_file(role: str, f: dict[str, Any]) -> ZooFile:
    check_name(role, "file role")
    check_url(f["url"])
    size = f["bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"{role}: bytes must be a positive integer")
    hashes = {}
    for algo in HASHES:
        if algo in f:
            value = str(f[algo]).lower()
            if not re.fullmatch(f"[0-9a-f]{{{_HEX_LEN[algo]}}}", value):
                raise ValueError(f"{role}: {algo} is not {_HEX_LEN[algo]} hex digits")
            hashes[algo] = value
    zf = ZooFile(role, f["url"], size, hashes, f.get("file", ""))
    check_name(zf.filename, f"{role} file name")
    return zf


def load_index(path: "str | os.PathLike[str] | None" = None) -> list[ZooModel]:
    """The models of a zoo index (``path``, else ``$DARKCFG_ZOO``, else the one in the package)."""
    index = Path(path or os.environ.get("DARKCFG_ZOO") or DEFAULT_INDEX)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DarkcfgError(f"{index}: zoo index not found (set DARKCFG_ZOO to a zoo.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DarkcfgError(f"{index}: cannot read the zoo index: {exc}") from None
    models: list[ZooModel] = []
    entry: Any = None
    try:
        for entry in data["models"]:
            files = tuple(_parse_file(role, f) for role, f in entry["files"].items())
            if not any(f.role == "cfg" for f in files) or not any(f.role == "weights" for f in files):
                raise KeyError("a cfg and a weights file")
            if len({f.filename for f in files}) != len(files):
                raise ValueError("two files with the same name")
            size = entry.get("input", (0, 0))
            models.append(ZooModel(check_name(entry["name"]), entry.get("task", ""), entry.get("dataset", ""),
                                   (int(size[0]), int(size[1])), entry.get("source", ""), files,
                                   entry.get("license", ""), entry.get("note", "")))
    except DarkcfgError as exc:
        raise DarkcfgError(f"{index}: {_entry_name(entry)}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DarkcfgError(f"{index}: malformed zoo index entry {_entry_name(entry)} ({exc})") from None
    return models


def _entry_name(entry: Any) -> str:
    return repr(entry.get("name")) if isinstance(entry, dict) else "(top level)"


def find_model(name: str, index: "str | os.PathLike[str] | None" = None) -> ZooModel:
    """The index entry of model ``name`` (an error listing the known names if there is none)."""
    check_name(name)
    models = load_index(index)
    for m in models:
        if m.name == name:
            return m
    known = ", ".join(m.name for m in models)
    raise DarkcfgError(f"'{name}' is neither a cfg file nor a zoo model (known: {known})")


# ------------------------------------------------------------------------------ trust on first use
def _read_tofu(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / TOFU_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DarkcfgError(f"{path}: unreadable trust-on-first-use record ({exc}); delete it to trust the "
                           "upstream files anew") from None


def _write_tofu(folder: Path, records: dict[str, dict[str, Any]]) -> None:
    """Atomically (temp file + rename): a crash never leaves a half-written record."""
    atomic_write_text(folder / TOFU_FILE, json.dumps(records, indent=1, sort_keys=True))


def _ask_trust(model: ZooModel, f: ZooFile) -> bool:
    """On a terminal, ask; elsewhere (scripts, CI) never trust without ``--trust``."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(f"{model.name}: {f.filename} ({f.bytes / 1e6:.1f} MB) is published without a hash at\n"
                     f"  {f.url}\nDownload it and record its sha256 for later checks (trust on first use)? [y/N] ")
    sys.stderr.flush()
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False


# ------------------------------------------------------------------------------------------ fetch
def _deadline_seconds() -> float:
    return env_seconds("DARKCFG_DOWNLOAD_DEADLINE", DEFAULT_DEADLINE)


def _remove_stale_parts(folder: Path, filename: str) -> None:
    """``*.part`` files a killed process (SIGKILL, power loss) left behind.  A live download writes
    to its part file at least every read timeout and ends by its deadline, so a part file untouched
    for longer than the deadline belongs to nobody; fresher ones may be another process's."""
    stale_after = _deadline_seconds()
    now = time.time()
    for part in folder.glob(f"{filename}.*.part"):
        try:
            if now - part.stat().st_mtime > stale_after:
                part.unlink()
        except OSError:
            pass


def _progress(label: str) -> Callable[[int, int], None]:
    start = time.monotonic()

    def report(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        rate = done / max(time.monotonic() - start, 1e-6) / 1e6
        sys.stderr.write(f"\r{label} [{bar}] {done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def fetch(name: str, store: "str | os.PathLike[str] | None" = None, index: "str | os.PathLike[str] | None" = None,
          progress: Optional[bool] = None, trust: Optional[bool] = None, timeout: Optional[float] = None,
          deadline: Optional[float] = None, roles: Optional[Collection[str]] = None) -> dict[str, Path]:
    """Make model ``name``'s files (those of ``roles``; default all) present and verified in the
    store; returns role -> path.

    Verified files are checked against the published hashes; unverified ones against the sha256
    recorded at their first download (which needs ``trust``: True, or None to ask on a terminal).
    Files already present and matching are not downloaded again.
    """
    model = find_model(name, index)
    root = Path(store) if store else cache_home()
    folder = root / check_name(model.name)
    show = sys.stderr.isatty() if progress is None else progress
    paths: dict[str, Path] = {}
    files = [f for f in model.files if roles is None or f.role in roles]
    records = _read_tofu(folder)
    for f in files:  # decide about trust before downloading anything
        if not f.verified and f.filename not in records and not (
                trust if trust is not None else _ask_trust(model, f)):
            raise DarkcfgError(f"{model.name}: {f.filename} is published without a hash ({f.url}); fetch it "
                               f"once with `darkcfg zoo fetch {model.name} --trust` to download it and record "
                               "its sha256 (trust on first use)")
    for f in files:
        dest = folder / f.filename
        recorded = None if f.verified else records.get(f.filename)
        want = f.hashes or ({"sha256": str(recorded["sha256"])} if recorded else {})
        if want and dest.is_file() and dest.stat().st_size == f.bytes and file_digests(dest, set(want)) == want:
            paths[f.role] = dest
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(folder, f.filename)
        digests = download(f.url, dest, size=f.bytes, hashes=want, timeout=timeout, deadline=deadline,
                           report=_progress(f"{model.name}/{f.filename}") if show else None)
        if not f.verified and not recorded:
            records[f.filename] = {"sha256": digests["sha256"], "bytes": f.bytes, "url": f.url,
                                   "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_tofu(folder, records)
            print(f"{model.name}: {f.filename} sha256 {digests['sha256']} (unverified upstream; recorded in "
                  f"{folder / TOFU_FILE} and checked on every later use)", file=sys.stderr)
        paths[f.role] = dest
    return paths
