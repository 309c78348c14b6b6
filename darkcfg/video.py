"""``darkcfg run`` on frame sources: video files, cameras (``0``) and streams (``rtsp://...``).

Frames go through the predictor one at a time; the annotated copy (``--out``) is written under
a temporary name and renamed when the source ends, so an interrupted run (Ctrl-C on a camera)
still leaves a playable file and never a half-replaced one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DarkcfgError
from .inputs import Source
from .progress import Progress

if TYPE_CHECKING:
    from .run_command import RunState

#: Seconds a stream may take to open or to deliver a frame before it is reported as failed.
STREAM_TIMEOUT_S = 15


def open_capture(src: Source) -> Any:
    """An opened ``cv2.VideoCapture``, or a :class:`DarkcfgError` saying why not."""
    import cv2

    if src.kind == "video":
        path = src.path
        assert path is not None
        if not path.is_file():
            raise DarkcfgError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
        cap = cv2.VideoCapture(str(path))
    elif src.kind == "camera":
        assert isinstance(src.target, int)
        cap = cv2.VideoCapture(src.target)
    else:
        ms = STREAM_TIMEOUT_S * 1000
        cap = cv2.VideoCapture(str(src.target), cv2.CAP_ANY,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if not cap.isOpened():
        cap.release()
        why = {"video": "cannot open video (unsupported or corrupt file)",
               "camera": "cannot open camera (no such device, in use, or no camera support in this OpenCV)",
               "stream": f"cannot open stream (unreachable, refused, or not a video stream; waited up to "
                         f"{STREAM_TIMEOUT_S} s)"}[src.kind]
        raise DarkcfgError(f"{src.label}: {why}")
    return cap


def run_frames(state: "RunState", n: int, src: Source) -> None:
    """Run on every frame of one source; a source that cannot be opened or read counts as failed."""
    import cv2

    try:
        cap = open_capture(src)
    except DarkcfgError as exc:
        state.fail(str(exc))
        return
    annotate_to = state.plan.media(n) if state.plan is not None and state.predictor.is_detector else None
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if src.kind == "video" else 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer: Any = None
    partial = None
    progress = Progress(total or None, Path(src.label).name if src.kind == "video" else src.label)
    frame_no = 0
    finished = False
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            result = state.predictor.infer(state.predictor.prepare(rgb), [(rgb.shape[1], rgb.shape[0])])[0]
            shown = state.handle(n, src, rgb, result, frame=frame_no)
            if annotate_to is not None:
                from .draw import annotate

                if writer is None:
                    partial = annotate_to.with_name(f".{annotate_to.stem}.partial{annotate_to.suffix}")
                    writer = _open_writer(partial, fps, rgb.shape[1], rgb.shape[0])
                writer.write(annotate(rgb, shown))
            frame_no += 1
            progress.update()
        finished = True
    except (OSError, DarkcfgError) as exc:
        state.fail(f"{src.label} frame {frame_no}: {exc}")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        progress.close()
        if partial is not None and annotate_to is not None and partial.exists():
            if frame_no:
                os.replace(partial, annotate_to)  # also after Ctrl-C: the frames so far are a valid video
            else:
                partial.unlink()
    if finished and frame_no == 0:
        state.fail(f"{src.label}: no frames could be decoded")


def _open_writer(path: Path, fps: float, width: int, height: int) -> Any:
    import cv2

    fourcc = cv2.VideoWriter.fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not writer.isOpened():
        raise DarkcfgError(f"{path}: OpenCV cannot write this video format")
    return writer
