"""Darknet ``.data`` files (``classes=``, ``train=``, ``valid=``, ``names=``, ``backup=``,
``eval=``), image lists, and the image -> label path rule of Darknet's
``replace_image_to_label``.

Darknet resolves every path against the current directory; a ``.data`` shipped with a
data set usually names paths relative to *its own* folder.  Both are tried (the current
directory first, as Darknet does), so either convention works.  A ``backup`` folder that
exists in neither place is created beside the ``.data`` file (Darknet would fail to save).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .errors import DarkcfgError

#: Darknet's image-folder -> label-folder rewrites (COCO and Pascal VOC layouts).
_LABEL_DIRS = (("/images/train2017/", "/labels/train2017/"), ("/images/val2017/", "/labels/val2017/"),
               ("/JPEGImages/", "/labels/"), ("/images/train2014/", "/labels/train2014/"),
               ("/images/val2014/", "/labels/val2014/"))
_IMAGE_EXTS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM", ".tiff", ".TIFF")


@dataclass
class DataFile:
    """A parsed ``.data`` file; paths already resolved (``None`` when absent)."""

    path: Path
    classes: int
    train: Optional[Path]
    valid: Optional[Path]
    names: Optional[Path]
    backup: Path
    eval: Optional[str] = None
    options: Dict[str, str] = field(default_factory=dict)

    def get_int(self, key: str, default: int) -> int:
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise DarkcfgError(f"{self.path}: '{key}' expects an integer, got '{value}'") from None


def _resolve(value: str, base: Path) -> Path:
    """``value`` against the current directory (Darknet), else against ``base``."""
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    alt = base / p
    return alt if alt.exists() else p


def parse_data_file(path: "str | os.PathLike") -> DataFile:
    """Read a Darknet ``.data`` file; a malformed line is an error naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DarkcfgError(f"{path}: cannot read .data file: {exc.strerror or exc}") from exc
    opts: Dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise DarkcfgError(f"{path}:{lineno}: expected 'key=value', got '{line}'")
        key, value = (part.strip() for part in line.split("=", 1))
        opts.setdefault(key, value)
    base = path.parent
    try:
        classes = int(opts.get("classes", "0"))
    except ValueError:
        raise DarkcfgError(f"{path}: 'classes' expects an integer, got '{opts['classes']}'") from None
    train = _resolve(opts["train"], base) if "train" in opts else None
    valid = _resolve(opts["valid"], base) if "valid" in opts else None
    names = _resolve(opts["names"], base) if "names" in opts else None
    backup = _resolve(opts.get("backup", "backup"), base)
    if not backup.is_absolute() and not backup.exists():
        backup = base / backup  # Darknet would fail to save; keep new checkpoints beside the .data file
    return DataFile(path, classes, train, valid, names, backup, opts.get("eval"), opts)


def read_image_list(path: "str | os.PathLike") -> List[Path]:
    """The image paths of a Darknet list file (one per line; relative ones resolved as above)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DarkcfgError(f"{path}: cannot read image list: {exc.strerror or exc}") from exc
    out = [_resolve(line.strip(), path.parent) for line in text.splitlines() if line.strip()]
    if not out:
        raise DarkcfgError(f"{path}: the image list is empty")
    return out


def label_path_for(image: "str | os.PathLike") -> Path:
    """Where Darknet looks for an image's labels (``replace_image_to_label``).

    Darknet's folder rewrites first; if none applies, a path component ``images`` becomes
    ``labels`` (the layout ``darknet`` users create by hand); then the image extension
    becomes ``.txt``.
    """
    s = os.fspath(image).replace("\\", "/")
    rewritten = s
    for a, b in _LABEL_DIRS:
        rewritten = rewritten.replace(a, b)
    if rewritten == s:
        parts = s.split("/")
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] == "images":
                parts[i] = "labels"
                break
        rewritten = "/".join(parts)
    for ext in _IMAGE_EXTS:
        if rewritten.endswith(ext):
            rewritten = rewritten[: -len(ext)] + ".txt"
            break
    else:
        rewritten = os.path.splitext(rewritten)[0] + ".txt"
    return Path(rewritten)
