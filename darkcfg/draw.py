"""Drawing detections: boxes with readable ``name prob%`` labels (what ``--out`` writes).

Colours are stable per class (a golden-ratio walk around the hue circle), labels sit on a
filled tab above the box (inside it when there is no room), with black or white text
chosen by the tab's luminance, and boxes are drawn in increasing probability so the most
confident label ends on top.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Sequence

from .errors import DarkcfgError


def _color(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue walk)."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def annotate(img_rgb: Any, dets: Sequence[Any]) -> Any:
    """A BGR copy of the image with boxes and ``name prob%`` labels on a filled tab."""
    import cv2

    out = cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    scale = max(0.4, min(h, w) / 900)
    for d in sorted(dets, key=lambda d: d.prob):
        x1, y1, x2, y2 = d.box_int
        color = _color(d.class_id)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick + 1)
        label = f"{d.name} {100 * d.prob:.0f}%"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y1 + th + base + 4
        cv2.rectangle(out, (x1, ty - th - base), (min(w - 1, x1 + tw + 4), ty + base // 2), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, label, (x1 + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color, thick,
                    cv2.LINE_AA)
    return out


def write_annotated(path: Path, img: Any, dets: Sequence[Any]) -> None:
    import cv2

    if not cv2.imwrite(str(path), annotate(img, dets)):
        raise DarkcfgError(f"{path}: could not write the annotated image")
