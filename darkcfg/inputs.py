"""What ``darkcfg run`` was asked to read: files, folders, globs, videos, cameras and streams.

An input string is, in this order: a stream URL (``rtsp://``, ``http(s)://``, ``rtmp://``, ...),
an existing path, a camera index (digits, when no such file exists), a glob, or a file path
(which, if missing, is reported when read). Folders give their images and videos, sorted.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import DarkcfgError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm", ".pgm", ".ppm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"}
_STREAM = re.compile(r"^(rtsp|rtsps|rtmp|rtp|udp|tcp|http|https|srt)://", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """One thing to run on. ``kind``: image, video, camera or stream; ``target``: what OpenCV opens."""

    kind: str
    target: Union[Path, int, str]
    label: str

    @property
    def path(self) -> Optional[Path]:
        return self.target if isinstance(self.target, Path) else None

    @property
    def is_frames(self) -> bool:
        """Read frame by frame (video, camera, stream) rather than as one image."""
        return self.kind != "image"


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, directories (their images/videos, sorted) and globs, in the order given."""
    return [s.target for s in sources(inputs) if isinstance(s.target, Path)]


def sources(inputs: Sequence[str], empty_folders: Optional[list[str]] = None) -> list[Source]:
    """Every input as a :class:`Source`, in the order given. Folders without images or videos are
    appended to ``empty_folders`` (when given) so the caller can report them."""
    out: list[Source] = []
    for item in inputs:
        if not item.strip():
            raise DarkcfgError(f"empty input {item!r}: give an image, folder, glob, video, camera index or "
                               "stream URL (an empty name would mean the current folder)")
        path = Path(item)
        if _STREAM.match(item):
            out.append(Source("stream", item, item))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS and p.is_file())
            if not found and empty_folders is not None:
                empty_folders.append(item)
            out += [_file_source(p) for p in found]
        elif item.isdigit() and not path.exists():
            out.append(Source("camera", int(item), f"camera {item}"))
        elif any(ch in item for ch in "*?[") and not path.exists():
            matches = sorted(glob.glob(item, recursive=True))
            out += [_file_source(Path(m)) for m in matches if not Path(m).is_dir()] if matches else [_file_source(path)]
        else:
            out.append(_file_source(path))
    return out


def _file_source(path: Path) -> Source:
    return Source("video" if is_video(path) else "image", path, str(path))


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS
