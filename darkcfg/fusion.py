"""Run short chains of small layers as one native kernel call, for CPU inference (``optimize()``).

Why: the inverted-residual blocks of Yolo-Fastest and the MobileNet YOLOs are
``1x1 expand -> depthwise k x k -> 1x1 linear project -> [dropout] -> [shortcut] from=-N``, each
layer a few MFLOPs.  Run one by one, each writes its output to memory for the next to read back,
and each pays a Python call.  Two folds remove most of that:

* **the shortcut into the projection**: the direct 1x1 kernel adds the residual while its sums are
  still in registers (:meth:`darkcfg.layers.direct_conv.DirectConv.with_residual`), so the conv,
  dropout (an identity at inference) and shortcut are one pass: Darknet's ``act_s(conv + from)``
  with the same float32 sum and the same add, so bit-identical;
* **the expanding 1x1 and the depthwise conv into the projecting 1x1** (:func:`darkcfg.layers.direct_conv.fused_block`):
  each thread makes the expanded rows its depthwise windows need in a small ring of row buffers
  and each depthwise output row in another, fed straight to the projecting 1x1 kernel, so the
  expanded and depthwise maps -- the block's largest tensors -- never go through memory.  Every
  value comes from the same code as the separate kernels: bit-identical too.

A third fold is for the dense CSP nets: a ``[route]`` of several maps read by the layer after it
alone never makes its concatenation (the largest copies of those nets) when that layer is

* a ``[maxpool]`` (yolov4-tiny's three stages): each part is pooled straight into its channels of
  the output (:func:`darkcfg.layers.direct_conv.pool_concat_nhwc`; a max pool works channel by
  channel, so the values are the route-then-pool's);
* a 1x1 conv with the direct kernel, on two parts (yolov4-tiny's other three routes): the kernel
  reads both in place (:meth:`darkcfg.layers.direct_conv.DirectConv.on_parts`; the same sums in
  the same order, bit-identical).

And a linear ``[shortcut]`` after a 3x3 conv that Winograd runs (yolov4's 23 residual blocks)
is added by the conv's output transform after its activation, while each tile is in registers
(:class:`darkcfg.layers.winograd.WinogradConv` with a residual: Darknet's ``act(conv) + from``,
the same float add, bit-identical).

Only where nothing else can tell: the skipped layers' outputs are read by the chain alone and are
not network outputs; the shortcut has no weights, two inputs of equal shapes and an activation the
kernel applies; and only in ``forward`` (``layer_outputs`` returns every layer as Darknet computes
it), outside training, autograd and tracing.  A call the kernels refuse runs the layers one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from .layers.conv import ConvLayer
from .layers.direct_conv import ACTIVATIONS, DirectConv, StepCall, bind_block, bind_parts, bind_pool_concat
from .layers.merge import Route, Shortcut, route_parts
from .layers.misc import Dropout
from .layers.pool import PaddedMaxPool

if TYPE_CHECKING:
    from .model import Darknet


@dataclass(frozen=True)
class Fusion:
    """Layers ``start..last`` as one call: [[1x1 expand ->] depthwise ->] 1x1 [-> dropouts -> shortcut]."""

    last: int  # the last layer the call computes (its output is the call's)
    pointwise: int  # the (projecting) 1x1 conv
    depthwise: Optional[int] = None  # the depthwise conv before it, if folded
    residual: Optional[int] = None  # the shortcut's ``from`` layer, if a shortcut is folded
    act: int = 0  # the activation code applied last (the shortcut's, else the 1x1 conv's own)
    expand: Optional[int] = None  # the 1x1 conv before the depthwise one (the chain's start), if folded


@dataclass(frozen=True)
class FoldedRoute:
    """A ``[route]`` and the layer after it, its only reader (a ``[maxpool]`` or a 1x1 conv), as one call."""

    last: int  # the reader


@dataclass(frozen=True)
class FoldedShortcut:
    """A 3x3 conv (Winograd) and the linear ``[shortcut]`` after it, its only reader, as one call."""

    last: int  # the shortcut
    residual: int  # the shortcut's ``from`` layer


#: start layer -> its fusion
Fusions = Dict[int, Union[Fusion, FoldedRoute, FoldedShortcut]]


class _Net(NamedTuple):
    """What :func:`plan` reads of a model, its layers as a plain list: a plan looks layers up by
    index hundreds of times, and each ``nn.ModuleList`` lookup costs a microsecond or more."""

    layers: Sequence[nn.Module]
    layer_inputs: Sequence[Sequence[int]]
    output_layers: Sequence[int]


def _direct(layers: Sequence[nn.Module], i: int, kind: str) -> Optional[DirectConv]:
    layer = layers[i]
    direct = layer.direct if isinstance(layer, ConvLayer) else None
    return direct if direct is not None and direct.kind == kind and direct.usable else None


def _plain_shortcuts(model: _Net) -> Iterator[Tuple[int, Shortcut, int]]:
    """(index, layer, ``from`` layer) of each weightless two-input shortcut of equal shapes whose
    first input is the layer right before it (what a fold can take)."""
    for s, layer in enumerate(model.layers):
        if not isinstance(layer, Shortcut) or layer.legacy or layer.weight is not None or not layer.equal_shapes:
            continue
        inputs = model.layer_inputs[s]
        if len(inputs) == 2 and inputs[0] == s - 1:
            yield s, layer, inputs[1]


def _winograd_shortcuts(model: _Net, sole_reader: Callable[[int], bool]) -> Dict[int, FoldedShortcut]:
    """3x3 conv (Winograd, its activation fused) -> linear shortcut pairs, by conv index."""
    found: Dict[int, FoldedShortcut] = {}
    for s, layer, src in _plain_shortcuts(model):
        conv = model.layers[s - 1]
        if (layer.act.kind == "linear" and isinstance(conv, ConvLayer) and conv.winograd is not None
                and conv.winograd.fused_activation and conv.direct is None and sole_reader(s - 1) and 0 <= src < s - 1):
            found[s - 1] = FoldedShortcut(s, src)
    return found


def _shortcut_chains(model: _Net, sole_reader: Callable[[int], bool]) -> Dict[int, Fusion]:
    """1x1 linear conv -> dropout* -> shortcut chains, by conv index."""
    chains: Dict[int, Fusion] = {}
    for s, layer, src in _plain_shortcuts(model):
        act = ACTIVATIONS.get(layer.act.kind, -1)
        if act < 0:
            continue
        prev = s - 1
        conv_index = prev
        while isinstance(model.layers[conv_index], Dropout) and model.layer_inputs[conv_index] == [conv_index - 1]:
            conv_index -= 1
        direct = _direct(model.layers, conv_index, "pointwise")
        if direct is None or direct.act != 0 or not 0 <= src < conv_index:
            continue  # a linear 1x1 with a kernel, and a residual computed before it
        if not all(sole_reader(k) for k in range(conv_index, s)):
            continue  # someone else reads the conv or a dropout: its own output must exist
        chains[conv_index] = Fusion(last=s, pointwise=conv_index, residual=src, act=act)
    return chains


def _folded_routes(model: _Net, private: Callable[[int], bool], taken: Callable[[int], bool]) -> Dict[int, FoldedRoute]:
    """``[route]`` (two maps or more, channel slices allowed) -> plain ``[maxpool]`` or 1x1 conv
    (two maps) pairs, by route index; ``taken``: whether a layer is in another fold already."""
    found: Dict[int, FoldedRoute] = {}
    for r, route in enumerate(model.layers[:-1]):
        reader, parts = model.layers[r + 1], len(model.layer_inputs[r])
        if not isinstance(route, Route) or not route.bounds or parts < 2 or not private(r) or taken(r) or taken(r + 1):
            continue
        if (type(reader) is PaddedMaxPool and not reader.antialiasing) or (
                parts == 2 and _direct(model.layers, r + 1, "pointwise") is not None):
            found[r] = FoldedRoute(r + 1)
    return found


def plan(darknet: "Darknet") -> Fusions:
    """The foldable chains of ``darknet`` (after its layers' ``enable_onednn``), by start layer."""
    model = _Net(list(darknet.layers), darknet.layer_inputs, darknet.output_layers)
    readers: Dict[int, List[int]] = {}
    for i, inputs in enumerate(model.layer_inputs):
        for j in inputs:
            readers.setdefault(j, []).append(i)
    outputs = set(model.output_layers)

    def sole_reader(i: int) -> bool:  # layer i's output is read by layer i + 1 alone and is no network output
        return readers.get(i, []) == [i + 1] and i not in outputs

    def private(i: int) -> bool:  # ... and layer i + 1 reads nothing else
        return sole_reader(i) and model.layer_inputs[i + 1] == [i]

    chains = _shortcut_chains(model, sole_reader)

    last_covered = -1  # the chains below run in layer order; a layer belongs to one chain at most
    for pw_index in range(1, len(model.layers)):
        pointwise, d = _direct(model.layers, pw_index, "pointwise"), pw_index - 1
        if pointwise is None or _direct(model.layers, d, "depthwise") is None or not private(d) or d <= last_covered:
            continue
        chain = chains.pop(pw_index, None) or Fusion(pw_index, pw_index, act=pointwise.act)
        e = d - 1
        expand = e if e > last_covered and _direct(model.layers, e, "pointwise") is not None and private(e) else None
        chains[d if expand is None else expand] = Fusion(chain.last, pw_index, d, chain.residual, chain.act, expand)
        last_covered = chain.last
    covered = {k for start, f in chains.items() for k in range(start, f.last + 1)}
    fusions: Fusions = {**chains, **_folded_routes(model, private, covered.__contains__)}
    for start, shortcut in _winograd_shortcuts(model, sole_reader).items():  # (3x3 convs: in no fold above)
        if start not in covered:
            fusions[start] = shortcut
    return fusions


def run(layers: Sequence[nn.Module], fusion: Union[Fusion, FoldedRoute, FoldedShortcut], xs: List[Tensor],
        outs: List[Tensor]) -> Optional[Tensor]:
    """``fusion``'s layers (of the model's ``layers``: a plain list is quicker to index than its
    ``nn.ModuleList``) as one kernel call on the first layer's inputs ``xs`` (earlier outputs in
    ``outs``), or None where the kernels refuse this call (the caller runs the layers one by one)."""
    if isinstance(fusion, FoldedShortcut):
        layer = layers[fusion.last - 1]
        winograd = layer.winograd if isinstance(layer, ConvLayer) else None
        return None if winograd is None else winograd(xs[0], outs[fusion.residual])
    call = bind(layers, fusion, xs, outs)
    return None if call is None else call(xs, outs)


def bind(layers: Sequence[nn.Module], fusion: Union[Fusion, FoldedRoute, FoldedShortcut], xs: List[Tensor],
         outs: List[Tensor]) -> Optional[StepCall]:
    """``fusion``'s kernel call for inputs laid out like ``xs`` (and ``outs``), bound once (see
    :meth:`darkcfg.layers.direct_conv.DirectConv.bind`): :func:`run` calls it at once, a frame
    replay (:mod:`darkcfg.replay`) keeps it.  None where the kernels refuse these inputs, or the
    fusion has no bound form (a Winograd conv with its shortcut: :func:`run` only)."""
    if isinstance(fusion, FoldedShortcut):
        return None
    if isinstance(fusion, FoldedRoute):
        route, reader = layers[fusion.last - 1], layers[fusion.last]
        parts = route_parts(route, xs) if isinstance(route, Route) else None
        if parts is None:
            return None
        if type(reader) is PaddedMaxPool:
            on_parts = bind_pool_concat(parts, reader.size, reader.stride_x, reader.stride_y, reader.padding)
        else:
            reads = _direct(layers, fusion.last, "pointwise")
            on_parts = None if reads is None else reads.bind_parts(parts)
        return None if on_parts is None else bind_parts(on_parts, xs, parts)
    pointwise = _direct(layers, fusion.pointwise, "pointwise")
    if pointwise is None:
        return None
    x, residual_index = xs[0], fusion.residual
    residual = None if residual_index is None else outs[residual_index]
    if fusion.depthwise is None:
        if residual is None or pointwise.kind != "pointwise" or pointwise.act != 0 or fusion.act < 0:
            return None  # (what with_residual refuses)
        call = pointwise.bind(x, residual, fusion.act)
    else:
        depthwise = _direct(layers, fusion.depthwise, "depthwise")
        expand = None if fusion.expand is None else _direct(layers, fusion.expand, "pointwise")
        if depthwise is None or (expand is None) != (fusion.expand is None):
            return None
        call = bind_block(expand, depthwise, pointwise, x, residual, fusion.act)
    if call is None:
        return None
    bound = call
    if residual_index is None:
        return lambda xs, outs: bound(xs[0], None)
    return lambda xs, outs: bound(xs[0], outs[residual_index])
