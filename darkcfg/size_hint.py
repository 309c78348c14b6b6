"""When ``--size W H`` does not fit a network, say which sizes do.

Downsampling layers make a network accept only some input sizes (typically multiples of its
total stride, 32 for YOLO). Building the layer graph computes shapes without allocating
tensors, so trying a few candidate sizes is cheap; the hint names the nearest sizes that
build, below and above the request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def _builds(sections: object, w: int, h: int) -> bool:
    from .errors import DarkcfgError
    from .graph import build_graph

    try:
        build_graph(sections, size=(w, h))  # type: ignore[arg-type]
    except DarkcfgError:
        return False
    return True


def sizes_that_work(cfg: Path, w: int, h: int) -> Optional[str]:
    """``"sizes that work: 96 x 96, 128 x 128 (multiples of 32)"``, or ``None`` when the cfg does not
    build at its own size either (then the size is not the problem)."""
    from .cfg import read_cfg
    from .errors import DarkcfgError

    try:
        sections = read_cfg(cfg)
    except DarkcfgError:
        return None
    if not _builds_default(sections):
        return None
    for step in (2, 4, 8, 16, 32, 64, 128, 256):
        lo = (max(step, w // step * step), max(step, h // step * step))
        hi = (-(-w // step) * step, -(-h // step) * step)
        if _builds(sections, *lo) and _builds(sections, *hi):
            picks = [lo] if lo == hi else [lo, hi]
            return ("sizes that work: " + ", ".join(f"{a} x {b}" for a, b in picks)
                    + f" (width and height multiples of {step})")
    return "no nearby size builds; try the cfg's own [net] width and height"


def _builds_default(sections: object) -> bool:
    from .errors import DarkcfgError
    from .graph import build_graph

    try:
        build_graph(sections)  # type: ignore[arg-type]
    except DarkcfgError:
        return False
    return True
