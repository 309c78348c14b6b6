"""Detections as files other tools read: Darknet/YOLO label files and COCO-style results.

* YOLO labels (``run --save-txt``): one line per detection, ``class x_center y_center width
  height`` relative to the image (what Darknet's training reads; ``detector test -save_labels``
  writes the same fields), the box first clipped to the image so every value is in [0, 1];
  ``--save-conf`` appends the detection's probability as a sixth column.
* COCO results (``run --save-json``): the list ``pycocotools`` ``loadRes`` takes: ``image_id``,
  ``category_id``, ``bbox`` [x, y, width, height] in pixels (clipped to the image, as Darknet's
  ``detector valid`` does), ``score``; plus ``file_name``, ``category_name`` (and ``frame`` for
  videos) for people reading it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

#: COCO's category ids of the 80 detection classes in Darknet's coco.names order (ids 1..90 minus
#: the 10 that the 2014 release never annotated); Darknet's ``detector valid`` maps with these.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


def _clipped(d: Any) -> tuple[float, float, float, float]:
    """The relative box (x, y, w, h) with its edges clipped to [0, 1] -> (x1, y1, x2, y2) relative."""
    x, y, w, h = d.rel_box
    x1, x2 = max(0.0, x - w / 2), min(1.0, x + w / 2)
    y1, y2 = max(0.0, y - h / 2), min(1.0, y + h / 2)
    return x1, y1, max(x1, x2), max(y1, y2)


def yolo_label_text(dets: Sequence[Any], width: int, height: int, conf: bool = False) -> str:
    """The label file for one image: ``class xc yc w h [prob]`` per line, 6 decimals."""
    lines = []
    for d in dets:
        x1, y1, x2, y2 = _clipped(d)
        fields = [str(d.class_id)] + [f"{v:.6f}" for v in ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)]
        if conf:
            fields.append(f"{d.prob:.6f}")
        lines.append(" ".join(fields))
    return "".join(line + "\n" for line in lines)


def coco_image_id(path: Union[Path, str]) -> Union[int, str]:
    """Darknet's rule for COCO file names: the number after the last ``_`` of the stem
    (``COCO_val2014_000000000042.jpg`` -> 42), an all-digit stem as a number, else the stem."""
    stem = Path(str(path)).stem
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if re.fullmatch(r"\d+", tail) else stem


def coco_records(path: Union[Path, str], dets: Sequence[Any], width: int, height: int, coco_ids: bool = False,
                 frame: Optional[int] = None) -> list[dict]:
    """COCO results entries for one image (or video frame)."""
    image_id = coco_image_id(path)
    out = []
    for d in dets:
        x1, y1, x2, y2 = _clipped(d)
        category = d.class_id
        if coco_ids:
            if not 0 <= category < len(COCO_CATEGORY_IDS):
                raise ValueError(f"--coco-ids needs an 80-class COCO model; got class {category}")
            category = COCO_CATEGORY_IDS[category]
        record: dict = {"image_id": image_id, "category_id": category,
                        "bbox": [round(x1 * width, 3), round(y1 * height, 3),
                                 round((x2 - x1) * width, 3), round((y2 - y1) * height, 3)],
                        "score": round(float(d.prob), 6), "file_name": str(path), "category_name": d.name}
        if frame is not None:
            record["frame"] = frame
        out.append(record)
    return out


def limit_detections(dets: Sequence[Any], classes: Optional[set[int]] = None,
                     max_det: Optional[int] = None) -> list:
    """CLI-layer filter for ``--classes`` and ``--max-det`` (kept here until the Python detect API
    takes ``classes``/``max_det`` itself; then ``darkcfg run`` should forward to it).

    Keeps detections whose class is in ``classes``, then the ``max_det`` most probable (ties: the
    earlier one), in their original (printout) order.
    """
    kept = [d for d in dets if classes is None or d.class_id in classes]
    if max_det is not None and len(kept) > max_det:
        best = sorted(range(len(kept)), key=lambda i: -kept[i].prob)[:max_det]
        kept = [kept[i] for i in sorted(best)]
    return kept
