"""Any input size the graph allows, without rebuilding the model (Darknet's ``resize_network``).

Convolutions, pools, routes and the detection heads have no size-dependent parameters, so one
module runs at every size whose shapes line up.  A size is accepted when the cfg's graph builds
at it with the same float blocks in every layer; the verdict is cached per size.  A refused size
is a :class:`DarkcfgError` saying which sizes the network takes (e.g. multiples of 32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple

from torch import Tensor

from ..errors import CfgError, DarkcfgError
from ..graph import build_graph

if TYPE_CHECKING:
    from ..model import Darknet


def _problem(model: "Darknet", w: int, h: int) -> Optional[str]:
    """Why the model cannot run at w x h, or None when it can."""
    try:
        graph = build_graph(model.graph.cfg, size=(w, h))
    except CfgError as exc:
        return str(exc)
    for old, new in zip(model.graph.layers, graph.layers):
        if [b.count for b in old.blocks] != [b.count for b in new.blocks]:
            return (f"{old.where}: [{old.section.raw_type}] has {sum(b.count for b in new.blocks)} parameters at "
                    f"{w}x{h} but {sum(b.count for b in old.blocks)} at the cfg's size")
    return None


def _sizes_hint(model: "Darknet", w: int, h: int) -> str:
    """The smallest power-of-two step d such that the cfg size plus 1..4 steps all work."""
    net = model.graph.net
    for d in (1, 2, 4, 8, 16, 32, 64, 128):
        if net.width % d or net.height % d:
            break
        if all(_problem(model, net.width + k * d, net.height + k * d) is None for k in (1, 2, 3, 4)):
            if w % d or h % d:
                return (f"widths and heights that are multiples of {d} (e.g. {net.width}x{net.height}, "
                        f"{net.width + d}x{net.height + d})")
            break
    return f"only {net.width}x{net.height} and the sizes its layers' shapes allow"


def check_input_size(model: "Darknet", x: Tensor) -> None:
    """Accept ``x`` when the graph takes its size; else raise :class:`DarkcfgError` naming what works."""
    net = model.graph.net
    if x.dim() != 4 or x.shape[1] != net.channels:
        raise DarkcfgError(f"{model.graph.path}: expected input N x {net.channels} x H x W, got {tuple(x.shape)}")
    w, h = int(x.shape[3]), int(x.shape[2])
    cache: Dict[Tuple[int, int], Optional[str]] = model.__dict__.setdefault("_size_verdicts", {})
    if (w, h) not in cache:
        cache[(w, h)] = _problem(model, w, h)
    problem = cache[(w, h)]
    if problem is not None and " parameters at " in problem:
        raise DarkcfgError(f"{model.graph.path}: cannot run at {w}x{h}: {problem}. This network takes only "
                           f"{net.width}x{net.height}")
    if problem is not None:
        raise DarkcfgError(f"{model.graph.path}: cannot run at {w}x{h}: {problem}. This network takes "
                           f"{_sizes_hint(model, w, h)}")
