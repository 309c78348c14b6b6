"""How ``darkcfg run`` reports a result: Darknet-style text or one stable JSON line per input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence


def is_classification(result: Sequence[Any]) -> bool:
    from .classify import Classification

    return bool(result) and isinstance(result[0], Classification)


def result_record(path: Path, img: Any, result: Sequence[Any], frame: Optional[int] = None) -> dict:
    """The documented ``run --json`` object for one image or video frame."""
    h, w = img.shape[:2]
    record: dict = {"image": str(path), "width": w, "height": h}
    if frame is not None:
        record["frame"] = frame
    if is_classification(result):
        record["classes"] = [{"class_id": c.class_id, "name": c.name, "prob": round(c.prob, 6)} for c in result]
    else:
        record["detections"] = [{"class_id": d.class_id, "name": d.name, "prob": round(d.prob, 6),
                                 "box": [round(v, 2) for v in d.box], "objectness": round(d.objectness, 6)}
                                for d in result]
    return record


def result_text(path: Path, result: Sequence[Any], frame: Optional[int] = None) -> list[str]:
    """Darknet's printout: ``name: 65%\t(left_x: ...)`` per box, ``%5.2f%%: name`` per class."""
    where = f"{path}" + (f" frame {frame}" if frame is not None else "")
    if is_classification(result):
        return [f"{where}:"] + [f"{100 * c.prob:5.2f}%: {c.name}" for c in result]
    lines = [f"{where}: {len(result)} detections"]
    for d in result:
        x1, y1, x2, y2 = d.box_int
        lines.append(f"{d.name}: {round(100 * d.prob)}%\t(left_x: {x1:4d}   top_y: {y1:4d}   "
                     f"width: {x2 - x1:4d}   height: {y2 - y1:4d})")
    return lines


def print_result(as_json: bool, path: Path, img: Any, result: Sequence[Any], frame: Optional[int] = None) -> None:
    """Print one result and flush, so a pipe sees each image as soon as it is done."""
    if as_json:
        print(json.dumps(result_record(path, img, result, frame)), flush=True)
    else:
        print("\n".join(result_text(path, result, frame)), flush=True)
