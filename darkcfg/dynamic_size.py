"""Which input sizes a dynamic height/width export (``convert --dynamic-size``) computes exactly.

An exported graph is traced at one size.  Convolutions, upsampling, routes, shortcuts, the heads
and the box decoding follow any input size, but a few things are fixed when traced: the padding
of every ``[maxpool]``/``[local_avgpool]`` (Darknet's right/bottom padding depends on the input's
size modulo the stride), which inputs of a route or shortcut have equal shapes, and whether a
strided layer's input divides evenly.  The export is exact at the sizes where all of these are as
at the traced size: ``width = W0 + i*step``, ``height = H0 + j*step`` down to a minimum, the step
being the smallest power of two for which the graph (built without tensors, as ``size_hint``
does) shows the same padding, residues and shape relations at several sizes.  For YOLO models
that is "multiples of 32".  Models whose layers do not follow the input size (``[connected]``
on a feature map, ``[local]``, ``[crop]``, flat prefix shortcuts) are refused, naming the layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

from .errors import CfgError, DarkcfgError
from .graph import Graph, LayerSpec, build_graph

if TYPE_CHECKING:
    from .model import Darknet

STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Sizes tried above the traced one on each axis, in steps (floors that drift show within these).
PROBES = (1, 2, 3)
#: Smaller sizes tried at most, looking for the minimum.
MAX_DOWN = 64


@dataclass(frozen=True)
class SizeRule:
    """The sizes a dynamic-size export is exact at: ``width = width0 + i*step >= min_width`` (same for height)."""

    width: int
    height: int
    step: int
    min_width: int
    min_height: int

    def accepts(self, w: int, h: int) -> bool:
        return ((w - self.width) % self.step == 0 and (h - self.height) % self.step == 0
                and w >= self.min_width and h >= self.min_height)

    def describe(self) -> str:
        """E.g. ``"width and height multiples of 32, at least 64 x 64"``."""
        if self.width % self.step == 0 and self.height % self.step == 0:
            what = f"width and height multiples of {self.step}"
        else:
            what = (f"width {self.width} + i*{self.step}, height {self.height} + j*{self.step} "
                    f"(whole i, j)")
        return f"{what}, at least {self.min_width} x {self.min_height}"

    def as_metadata(self) -> dict:
        return {**asdict(self), "rule": self.describe()}


def check_size(rule: "SizeRule | dict", w: int, h: int) -> None:
    """Raise :class:`DarkcfgError` unless the dynamic-size export described by ``rule`` (a
    :class:`SizeRule` or the metadata's ``dynamic_size`` entry) is exact at ``w`` x ``h``."""
    if isinstance(rule, dict):
        rule = SizeRule(**{k: int(rule[k]) for k in ("width", "height", "step", "min_width", "min_height")})
    if not rule.accepts(w, h):
        raise DarkcfgError(f"input {w} x {h}: this dynamic-size export is exact only for {rule.describe()} "
                           f"(traced at {rule.width} x {rule.height})")


def size_rule(model: "Darknet") -> SizeRule:
    """The sizes ``model`` can be exported for with a dynamic height/width, or a located
    :class:`DarkcfgError` when its shape logic cannot follow the input size."""
    graph = model.graph
    _refuse_fixed_layers(model)
    w0, h0 = graph.net.width, graph.net.height
    last_problem = ""
    for step in STEPS:
        problem, slopes = _probe(graph, step)
        if problem is None:
            return SizeRule(w0, h0, step, _minimum(graph, step, 0, slopes[0]), _minimum(graph, step, 1, slopes[1]))
        last_problem = problem
    raise DarkcfgError(f"{last_problem}; no size step up to {STEPS[-1]} keeps it as at {w0} x {h0}, so this model "
                       "cannot be exported with a dynamic height/width (export without --dynamic-size)")


def _refuse_fixed_layers(model: "Darknet") -> None:
    """Layers whose traced form is tied to one size whatever the step."""
    from .layers.merge import Route, Shortcut

    for spec, module in zip(model.graph.layers, model.layers):
        why = ""
        if spec.kind == "crop":
            why = "crops a fixed window at an offset computed from the traced size"
        elif spec.kind == "local":
            why = "has weights per output location"
        elif isinstance(module, Shortcut) and (module.legacy or not module.equal_shapes):
            why = "adds layers of different shapes (a flat prefix add whose bounds are traced constants)"
        elif isinstance(module, Route) and not module.bounds and (len(spec.inputs) > 1 or module.groups > 1) \
                and not all(model.graph.layers[i].is_flat for i in spec.inputs if i >= 0):
            why = "joins layers of different sizes (a flat concatenation)"
        if why:
            raise DarkcfgError(f"{spec.where}: {why}: this model cannot be exported "
                               "with a dynamic height/width (export without --dynamic-size)")


Shapes = list[tuple[int, int]]  # every layer's (height, width)


def _probe(graph: Graph, step: int) -> tuple[Optional[str], list[Shapes]]:
    """(None, per-axis slopes) when sizes ``step`` apart behave like the traced one: on each axis,
    several steps up, the same baked constants and every layer's size growing by a constant amount
    per step (a floor that drifts would make the traced reshapes and paddings wrong)."""
    w0, h0 = graph.net.width, graph.net.height
    base = _hw(graph)
    slopes: list[Shapes] = []
    for axis in (0, 1):
        slope: Optional[Shapes] = None
        for k in PROBES:
            size = (w0 + k * step, h0) if axis == 0 else (w0, h0 + k * step)
            other, problem = _compare(graph, size)
            if problem is not None or other is None:
                return problem, []
            shapes = _hw(other)
            if slope is None:
                slope = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(base, shapes)]
            problem = _drift(graph, shapes, base, slope, k, size)
            if problem is not None:
                return problem, []
        slopes.append(slope or [])
    return None, slopes


def _hw(graph: Graph) -> Shapes:
    return [(s.tensor_shape[1], s.tensor_shape[2]) for s in graph.layers]


def _drift(graph: Graph, shapes: Shapes, base: Shapes, slope: Shapes, k: int, size: tuple[int, int]) -> Optional[str]:
    for spec, got, b, d in zip(graph.layers, shapes, base, slope):
        if got != (b[0] + k * d[0], b[1] + k * d[1]):
            return (f"{spec.where}: is {got[1]} x {got[0]} at {size[0]} x {size[1]}, "
                    "not in step with the input size")
    return None


def _minimum(graph: Graph, step: int, axis: int, slope: Shapes) -> int:
    """The smallest size on ``axis`` (0: width), ``step`` at a time down, that still behaves the same."""
    w0, h0 = graph.net.width, graph.net.height
    base = _hw(graph)
    n0 = (w0, h0)[axis]
    best = n0
    for i in range(1, MAX_DOWN + 1):
        n = n0 - i * step
        if n < 1:
            break
        size = (n, h0) if axis == 0 else (w0, n)
        other, problem = _compare(graph, size)
        shapes = _hw(other) if other is not None else []
        if problem is not None or _drift(graph, shapes, base, slope, -i, size) is not None \
                or min(min(hw) for hw in shapes) < 1:
            break
        best = n
    return best


def _compare(graph: Graph, size: tuple[int, int]) -> tuple[Optional[Graph], Optional[str]]:
    """The graph at ``size`` and what it bakes in differently from the traced graph (or None)."""
    w, h = size
    try:
        other = build_graph(graph.cfg, size=size)
    except CfgError as exc:
        return None, f"at {w} x {h}: {exc}"
    for old, new in zip(graph.layers, other.layers):
        why = _layer_differs(old, new, graph, other, f"at {w} x {h}")
        if why:
            return other, f"{old.where}: {why}"
    return other, None


def _layer_differs(old: LayerSpec, new: LayerSpec, g_old: Graph, g_new: Graph, where: str) -> str:
    """Why layer ``new`` (of the graph built ``where``) would not run as the traced ``old`` does ("" if it would)."""
    if [b.count for b in old.blocks] != [b.count for b in new.blocks]:
        return f"has {old.weight_floats} parameters at the traced size but {new.weight_floats} {where}"
    if old.is_flat != new.is_flat or (old.is_flat and old.outputs != new.outputs):
        return f"is a flat vector whose length changes with the input size ({old.outputs}, {new.outputs} {where})"
    for a, b in zip(_baked(old), _baked(new)):
        if a != b:
            return f"has {b[0]} {b[1]} {where} but {a[1]} at the traced size"
    same_old = _equal_inputs(old, g_old)
    if same_old is not None and same_old != _equal_inputs(new, g_new):
        return f"reads inputs whose shapes {'agree' if same_old else 'differ'} at the traced size but not {where}"
    return ""


def _baked(spec: LayerSpec) -> list[tuple[str, Any]]:
    """What the traced graph takes as constants for this layer: pool padding, input size residues
    modulo downsampling strides."""
    from .layers.functional import pool_pads_hw

    a = spec.attrs
    _, h, w = spec.in_shape
    out: list[tuple[str, Any]] = []
    if spec.kind in ("maxpool", "local_avgpool") and not getattr(a, "maxpool_depth", 0):
        out.append(("padding", pool_pads_hw(h, w, a.size, a.stride_x, a.stride_y, a.padding)))
    stride = getattr(a, "stride", 1)
    if spec.kind == "upsample":
        stride = -stride if isinstance(stride, int) and stride < 0 else 1  # only a sum-pool downsamples
    stride = stride if isinstance(stride, int) and stride > 0 else 1
    sx: int = getattr(a, "stride_x", None) or stride
    sy: int = getattr(a, "stride_y", None) or stride
    if sx > 1 or sy > 1:
        out.append(("input size residues", (h % sy, w % sx)))
    return out


def _equal_inputs(spec: LayerSpec, graph: Graph) -> Optional[bool]:
    """For a route/shortcut: whether its inputs have equal spatial shapes (what the build decided)."""
    if spec.kind not in ("route", "shortcut", "sam", "scale_channels"):
        return None
    shapes = [graph.layers[i].tensor_shape[1:] if i >= 0 else (graph.net.height, graph.net.width)
              for i in spec.inputs]
    return len(set(shapes)) == 1


def spatial_axes(model: "Darknet", rule: SizeRule) -> list[tuple[bool, bool]]:
    """Per output layer: whether its height and width follow the input size (they get named
    dynamic axes in the ONNX file; a classifier's 1 x 1 output stays fixed)."""
    graph = model.graph
    other = build_graph(graph.cfg, size=(rule.width + rule.step, rule.height + rule.step))
    return [(graph.layers[i].tensor_shape[1] != other.layers[i].tensor_shape[1],
             graph.layers[i].tensor_shape[2] != other.layers[i].tensor_shape[2]) for i in model.output_layers]
