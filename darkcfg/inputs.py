"""What ``darkcfg run`` was asked to read: files, folders, globs and videos, in the order given."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm", ".pgm", ".ppm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"}


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, directories (their images/videos, sorted) and globs, in the order given."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            out += [Path(m) for m in matches] if matches else [path]  # a glob with no match is reported
        else:
            out.append(path)
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS
