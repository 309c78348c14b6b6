"""Published cfg/weights pairs by name, and where darkcfg looks for weights.

*Weights store*: folders searched for ``<cfg stem>.weights`` when none is given
explicitly: ``$DARKCFG_WEIGHTS`` (``os.pathsep``-separated) first, then ``./weights``,
then the ``weights/`` folder of a source checkout.  Binaries never go into git.

*Zoo*: ``cfgs/zoo.json`` lists published models with the URL, size and sha256 of each
file.  :func:`fetch` downloads a model into ``<store>/<name>/`` (the first store
folder unless told otherwise): each file is streamed to a temporary file beside its
destination while hashing, checked against the index (size and sha256) and only then
renamed into place, so a cache never holds a partial or unverified file.  Files
already present with the right hash are not downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import DarkcfgError

REPO = Path(__file__).resolve().parents[1]
REPO_WEIGHTS = REPO / "weights"
DEFAULT_INDEX = REPO / "cfgs" / "zoo.json"


def store_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("DARKCFG_WEIGHTS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "weights", REPO_WEIGHTS]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


@dataclass(frozen=True)
class ZooFile:
    role: str  # cfg, weights, names
    url: str
    sha256: str
    bytes: int

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ZooModel:
    name: str
    task: str
    dataset: str
    input: tuple[int, int]
    source: str
    files: tuple[ZooFile, ...]

    def file(self, role: str) -> Optional[ZooFile]:
        return next((f for f in self.files if f.role == role), None)


def load_index(path: "str | os.PathLike | None" = None) -> list[ZooModel]:
    """The models of a zoo index (``$DARKCFG_ZOO``, else ``cfgs/zoo.json`` of the checkout)."""
    index = Path(path or os.environ.get("DARKCFG_ZOO") or DEFAULT_INDEX)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DarkcfgError(f"{index}: zoo index not found (set DARKCFG_ZOO to a zoo.json)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DarkcfgError(f"{index}: cannot read the zoo index: {exc}") from exc
    models = []
    try:
        for m in data["models"]:
            files = tuple(ZooFile(role, f["url"], f["sha256"].lower(), int(f["bytes"])) for role, f in m["files"].items())
            if not any(f.role == "cfg" for f in files) or not any(f.role == "weights" for f in files):
                raise KeyError("cfg/weights")
            models.append(ZooModel(m["name"], m.get("task", ""), m.get("dataset", ""), tuple(m.get("input", (0, 0))),
                                   m.get("source", ""), files))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DarkcfgError(f"{index}: malformed zoo index entry ({exc})") from exc
    return models


def find_model(name: str, index: "str | os.PathLike | None" = None) -> ZooModel:
    models = load_index(index)
    for m in models:
        if m.name == name:
            return m
    known = ", ".join(m.name for m in models)
    raise DarkcfgError(f"'{name}' is neither a cfg file nor a zoo model (known: {known})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(f: ZooFile, dest: Path, report: Optional[Callable[[int, int], None]]) -> None:
    """Stream ``f`` to a temp file beside ``dest``, verify, then rename atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    got = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(f.url, timeout=60) as resp:  # noqa: S310
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                if report:
                    report(got, f.bytes)
        if got != f.bytes or h.hexdigest() != f.sha256:
            raise DarkcfgError(f"{f.url}: downloaded {got} bytes with sha256 {h.hexdigest()}, the index says "
                               f"{f.bytes} bytes, sha256 {f.sha256}; the file was discarded")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise DarkcfgError(f"{f.url}: download failed: {getattr(exc, 'reason', exc)}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str, store: "str | os.PathLike | None" = None, index: "str | os.PathLike | None" = None,
          progress: Optional[bool] = None) -> dict[str, Path]:
    """Make model ``name``'s files present and verified in the store; returns role -> path."""
    model = find_model(name, index)
    folder = Path(store) if store else store_dirs()[0]
    folder = folder / model.name
    paths: dict[str, Path] = {}
    show = sys.stderr.isatty() if progress is None else progress
    for f in model.files:
        dest = folder / f.filename
        if not (dest.is_file() and dest.stat().st_size == f.bytes and _sha256(dest) == f.sha256):
            def report(done: int, total: int, label: str = f.filename) -> None:
                sys.stderr.write(f"\r{label}: {done / 1e6:.1f}/{total / 1e6:.1f} MB")
                if done >= total:
                    sys.stderr.write("\n")
            _download(f, dest, report if show else None)
        paths[f.role] = dest
    return paths
