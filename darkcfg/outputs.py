"""Where command outputs go, decided before any work so that no user file is ever lost.

``darkcfg run --out DIR`` policy (README, "Output files"):

* an output keeps its input's file name and extension (``dog.png`` -> ``DIR/dog.png``); label files
  take the same stem (``DIR/dog.txt``);
* an output never lands on an input: when ``DIR/dog.png`` *is* an input (``--out .``), or is where
  a ``.txt`` of another input would go, the stem gets ``_1``, ``_2``, ... (first free);
* two inputs with the same stem (``a/dog.jpg b/dog.jpg``, or ``dog.jpg dog.png``) never share an
  output: the later one gets ``_1``, ... and a note on stderr says so;
* an existing file that is not an input is replaced only with ``--overwrite``; otherwise the run
  stops before doing anything, naming the file;
* files are written to a temporary name in the folder and renamed, so an interrupted run never
  leaves a half-written image in place of a good one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional

from .errors import DarkcfgError
from .fileio import atomic_write_bytes
from .inputs import Source

_WRITABLE_VIDEO = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}


def _key(path: Path) -> str:
    """Identity of a path for clobber checks: resolved, case-folded (case-insensitive file systems)."""
    return os.path.normcase(os.path.realpath(path)).casefold()


def prepare_out_dir(out: str) -> Path:
    """The ``--out`` folder, created if missing; a clear error if it is a file or not writable."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DarkcfgError(f"--out {out}: is a file, not a folder (give a folder for the annotated outputs)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DarkcfgError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DarkcfgError(f"--out {out}: the folder is not writable")
    return path


def check_output_file(out: Path, reads: Iterable[Optional[Path]] = (), what: str = "--out") -> None:
    """An output *file* path (``convert --out``, ``run --save-json``): its folder must exist and be
    writable, it must not be a folder, and it must not be one of the files being read."""
    if out.is_dir():
        raise DarkcfgError(f"{what} {out}: is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DarkcfgError(f"{what} {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DarkcfgError(f"{what} {out}: folder {parent} is not writable")
    for src in reads:
        if src is not None and _key(out) == _key(src):
            raise DarkcfgError(f"{what} {out}: is one of the input files; choose another name")


class OutputPlan:
    """Output names for every input, fixed before the run (see the module docstring)."""

    def __init__(self, out_dir: Path, srcs: list[Source], label_files: bool, overwrite: bool):
        self.out_dir = out_dir
        self.overwrite = overwrite
        self.label_files = label_files
        self.inputs = {_key(s.path) for s in srcs if s.path is not None}
        self.notes: list[str] = []
        self._stems: dict[int, str] = {}
        self._exts: dict[int, str] = {}
        used: set[str] = set()
        for n, src in enumerate(srcs):
            base, ext = self._base(src, n)
            stem = base
            k = 0
            while stem.casefold() in used or self._hits_input(stem, ext):
                k += 1
                stem = f"{base}_{k}"
            used.add(stem.casefold())
            self._stems[n], self._exts[n] = stem, ext
            if stem != base:
                self.notes.append(f"{src.label} -> {out_dir / (stem + ext)} "
                                  f"({base + ext} is an input or another input's output)")

    @staticmethod
    def _base(src: Source, n: int) -> tuple[str, str]:
        if src.kind == "camera":
            return f"camera{src.target}", ".mp4"
        if src.kind == "stream":
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(src.target).split("://", 1)[-1]).strip("._") or "stream"
            return name[:80], ".mp4"
        path = src.target
        assert isinstance(path, Path)
        ext = path.suffix
        if src.kind == "video" and ext.lower() not in _WRITABLE_VIDEO:
            ext = ".mp4"
        return path.stem or f"input{n}", ext or ".jpg"

    def _hits_input(self, stem: str, ext: str) -> bool:
        names = [stem + ext] + ([stem + ".txt"] if self.label_files else [])
        return any(_key(self.out_dir / name) in self.inputs for name in names)

    def media(self, n: int) -> Path:
        """The annotated image or video for input ``n``."""
        return self.out_dir / (self._stems[n] + self._exts[n])

    def labels(self, n: int, frame: Optional[int] = None) -> Path:
        """The YOLO label file for input ``n`` (per frame for videos)."""
        stem = self._stems[n] + (f"_{frame:06d}" if frame is not None else "")
        return self.out_dir / (stem + ".txt")

    def planned(self, n: int, frames: bool, annotate: bool) -> list[Path]:
        return ([self.media(n)] if annotate else []) + ([self.labels(n)] if self.label_files and not frames else [])

    def refuse_existing(self, paths: Iterable[Path]) -> None:
        """Stop before any work if an output would replace an existing file (unless ``--overwrite``)."""
        if self.overwrite:
            return
        existing = [p for p in paths if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise DarkcfgError(f"{existing[0]} already exists{more}; pass --overwrite to replace earlier outputs, "
                               "or choose another --out folder")

    def may_write(self, path: Path) -> None:
        """For names found during the run (video frame labels): never replace an input; an existing
        file only with ``--overwrite``."""
        if _key(path) in self.inputs or (path.exists() and not self.overwrite):
            raise DarkcfgError(f"{path} already exists; pass --overwrite to replace it")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, data)
