"""``darkcfg info``: Darknet's start-up layer table and its stable ``--json`` form.

Kept apart from the command line so the table can be printed (or tested) from a graph alone.
"""

from __future__ import annotations

from typing import Any


def info_lines(graph: Any, cfg: str) -> list[str]:
    """The table Darknet prints while building a network, plus totals (one string per line)."""
    lines = [f"{cfg}: input {graph.net.width} x {graph.net.height} x {graph.net.channels}, "
             f"{len(graph.layers)} layers",
             f"{'layer':>5} {'type':<15} {'filters':>7} {'size/strd(dil)':<15} {'input':>18}  ->  "
             f"{'output':<18} {'BFLOPs':>8}"]
    for s in graph.layers:
        lines.append(f"{s.index:5d} {s.section.raw_type[:15]:<15} {_filters(s):>7} {_geometry(s):<15} "
                     f"{_dims(s.in_shape, s.in_outputs):>18}  ->  {_dims(s.out_shape, s.outputs):<18} "
                     f"{s.bflops:8.3f}")
    lines.append(f"Total BFLOPS {graph.bflops:.3f}")
    lines.append(f"Parameters {graph.params:,} ({graph.params / 1e6:.2f}M, kernel weights only, as the CSPNet "
                 f"paper counts them); .weights floats {graph.weight_floats:,} "
                 f"({20 + 4 * graph.weight_floats:,} bytes with a 20-byte header)")
    return lines


def info_json(graph: Any, cfg: str) -> dict:
    """The documented ``darkcfg info --json`` object (README, "--json output")."""
    return {
        "cfg": str(cfg),
        "width": graph.net.width,
        "height": graph.net.height,
        "channels": graph.net.channels,
        "layers": [{"index": s.index, "type": s.kind, "input": list(s.in_shape), "output": list(s.out_shape),
                    "outputs": s.outputs, "params": s.params, "weight_floats": s.weight_floats,
                    "bflops": round(s.bflops, 6), "line": s.section.line} for s in graph.layers],
        "total": {"params": graph.params, "weight_floats": graph.weight_floats, "bflops": round(graph.bflops, 6)},
        "warnings": graph.warnings + graph.unused_options(),
    }


def _filters(s: Any) -> str:
    a = s.attrs
    for key in ("filters", "output", "out_channels"):
        if hasattr(a, key) and s.kind != "maxpool":
            return str(getattr(a, key))
    return ""


def _geometry(s: Any) -> str:
    a = s.attrs
    if s.kind == "convolutional":
        stride = f"{a.stride_x}" if a.stride_x == a.stride_y else f"{a.stride_x}x{a.stride_y}"
        dil = f"({a.dilation})" if a.dilation > 1 else ""
        grp = f" g{a.groups}" if a.groups > 1 else ""
        return f"{a.size}x{a.size}/{stride}{dil}{grp}"
    if s.kind in ("maxpool", "local_avgpool"):
        return f"{a.size}x{a.size}/{a.stride_x}"
    if s.kind == "route":
        return ",".join(map(str, a.layers)) + (f" {a.group_id}/{a.groups}" if a.groups > 1 else "")
    if s.kind == "shortcut":
        return ",".join(map(str, a.sources))
    if s.kind in ("sam", "scale_channels"):
        return str(a.source)
    if s.kind == "upsample":
        return f"x{a.stride}" if a.stride > 0 else f"/{-a.stride}"
    return ""


def _dims(shape: tuple[int, int, int], outputs: int) -> str:
    c, h, w = shape
    return f"{w} x {h} x {c}" if c * h * w == outputs else f"{outputs} (flat)"
