"""``darkcfg run`` on a video: frame by frame through the predictor, annotated copy to ``--out``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .progress import Progress
from .results import is_classification, print_result


def run_video(path: Path, predict: Callable[[list], list], as_json: bool, out_dir: Optional[Path]) -> int:
    """Detect in every frame; returns the number of failed inputs (0 or 1)."""
    import cv2

    from .draw import annotate

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        print(f"darkcfg run: skipped {path}: cannot open video", file=sys.stderr)
        return 1
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer: Any = None
    progress = Progress(total, f"{path.name}")
    frame_no = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets = predict([rgb])[0]
            print_result(as_json, path, rgb, dets, frame=frame_no)
            if out_dir and not is_classification(dets):
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = cv2.VideoWriter(str(out_dir / (path.stem + ".mp4")), cv2.VideoWriter_fourcc(*"mp4v"),
                                             fps, (w, h))
                writer.write(annotate(rgb, dets))
            frame_no += 1
            progress.update()
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        progress.close()
    if frame_no == 0:
        print(f"darkcfg run: skipped {path}: no frames could be decoded", file=sys.stderr)
        return 1
    return 0
