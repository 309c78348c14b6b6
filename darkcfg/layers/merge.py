"""Modules for layers that combine other layers: route, shortcut, sam, scale_channels."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..graph import LayerSpec
from . import functional as DF
from .activations import Activation
from .direct_conv import StepCall, bind_concat, bind_parts, concat_nhwc
from .registry import BuildContext, WeightedLayer, builder
from .tracing import as_map


class Route(nn.Module):
    """``[route]``: concatenate the listed layers, each cut to channel group ``group_id`` of ``groups``.

    ``channels`` (the inputs' channel counts, known from the graph) is given when every input is
    an image of the same H x W with channels divisible by ``groups``: then each input is one
    channel slice with constant bounds and the route is one Concat.  Channel counts do not change
    with the input size; the H x W match is re-checked eagerly and trusted while tracing (an
    exporter then records one Slice per input and no shape arithmetic).
    """

    def __init__(self, groups: int, group_id: int, flat: bool, channels: Optional[List[int]] = None):
        super().__init__()
        self.groups, self.group_id, self.flat = groups, group_id, flat
        self.channels = channels if channels is not None and not flat and all(c % groups == 0 for c in channels) \
            else None
        self.bounds: List[Tuple[int, int]] = [] if self.channels is None else [
            (group_id * (c // groups), (group_id + 1) * (c // groups)) for c in self.channels]

    def forward(self, xs: List[Tensor]) -> Tensor:
        if len(xs) == 1 and self.groups == 1:
            return xs[0]
        tracing = torch.jit.is_tracing()
        parts = [x[:, lo:hi] for x, (lo, hi) in zip(xs, self.bounds)] if tracing else route_parts(self, xs)
        if parts:
            if len(parts) == 1:
                return parts[0]
            if not tracing and not torch.jit.is_scripting() and not torch.compiler.is_compiling():
                y = concat_nhwc(parts)  # NHWC maps (optimize()): the native copy, 1.3-1.5x torch.cat's speed
                if y is not None:
                    return y
            return torch.cat(parts, 1)
        if self.flat:
            parts = [x.flatten(1) for x in xs]
            parts = [p.chunk(self.groups, 1)[self.group_id] if self.groups > 1 else p for p in parts]
            return as_map(torch.cat(parts, 1))
        return DF.route(xs, self.groups, self.group_id)

    @torch.jit.unused
    def bind(self, xs: List[Tensor]) -> Optional[StepCall]:
        """The native concatenation :meth:`forward` makes of inputs laid out like ``xs``, bound
        once (a frame replay's step, :mod:`darkcfg.replay`); a lone input passed through as is;
        None otherwise (the replay calls the layer)."""
        if len(xs) == 1 and self.groups == 1:
            return lambda xs, outs: xs[0]
        parts = route_parts(self, xs)
        if parts is None or len(parts) < 2:
            return None
        call = bind_concat(parts)
        return None if call is None else bind_parts(call, xs, parts)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, group_id={self.group_id}" if self.groups > 1 else ""


def route_parts(route: Route, xs: List[Tensor]) -> Optional[List[Tensor]]:
    """The channel slices ``route`` concatenates, when its inputs are images of one H x W with the
    graph's channel counts (the one-Concat case of :class:`Route`), else None."""
    if not route.bounds or not _same_images(xs, route.channels):
        return None
    return [x[:, lo:hi] for x, (lo, hi) in zip(xs, route.bounds)]


def _same_images(xs: List[Tensor], channels: Optional[List[int]]) -> bool:
    """True when ``xs`` are images of one H x W with the given channel counts."""
    if channels is None or len(xs) != len(channels):
        return False
    h, w = xs[0].shape[-2:]
    return all(x.dim() == 4 and x.shape[1] == c and x.shape[2] == h and x.shape[3] == w
               for x, c in zip(xs, channels))


@builder("route")
def build_route(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    sources = [ctx.graph.layers[i] for i in spec.inputs]
    flat = spec.is_flat or any(s.is_flat for s in sources)
    hw = {s.out_shape[1:] for s in sources}
    channels = [s.out_shape[0] for s in sources] if len(hw) == 1 else None
    return Route(spec.attrs.groups, spec.attrs.group_id, flat, channels)


class Shortcut(WeightedLayer):
    """``[shortcut]``: ``act(prev + sum(from))`` with Darknet's prefix add (and optional weights).

    The first input is the previous layer, the rest the ``from`` layers.
    """

    weights_type: str
    normalization: str
    legacy: bool

    def __init__(self, n_sources: int, channels: int, activation: str, weights_type: str, normalization: str,
                 legacy: bool, equal_shapes: bool = False):
        super().__init__()
        self.weights_type, self.normalization, self.legacy = weights_type, normalization, legacy
        # Every `from` layer has prev's shape (known from the graph): a plain elementwise add,
        # bit-identical to Darknet's flat prefix add, one Add node when exported, and it keeps
        # channels-last tensors channels-last.  Re-checked eagerly, trusted while tracing.
        self.equal_shapes = equal_shapes and not legacy
        count = {"none": 0, "per_feature": n_sources + 1, "per_channel": (n_sources + 1) * channels}[weights_type]
        self.weight = nn.Parameter(torch.ones(count)) if count else None
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.legacy:
            y = DF.shortcut_legacy(xs[0], xs[1])
        elif self.equal_shapes and (torch.jit.is_tracing() or all(f.shape == xs[0].shape for f in xs[1:])):
            y = DF.shortcut_add_same_shape(xs[0], xs[1:], self.weight, self.weights_type, self.normalization)
        else:
            y = DF.shortcut_add(xs[0], xs[1:], self.weight, self.weights_type, self.normalization)
        return self.act(y)

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return [] if self.weight is None else [("shortcut_weights", self.weight)]


@builder("shortcut")
def build_shortcut(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    equal = not spec.is_flat and all(i >= 0 and ctx.graph.layers[i].out_shape == spec.out_shape
                                     and not ctx.graph.layers[i].is_flat for i in spec.inputs)
    return Shortcut(len(a.sources), spec.out_shape[0], a.activation, a.weights_type, a.weights_normalization,
                    a.legacy, equal)


class ScaleChannels(nn.Module):
    """``[scale_channels]`` (SE block) and ``[sam]``: ``act(from * prev)``; inputs are (prev, from)."""

    mode: str

    def __init__(self, mode: str, activation: str):
        super().__init__()
        self.mode = mode  # "channels", "wh" or "sam"
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        prev, src = xs[0], xs[1]
        if self.mode == "sam":
            y = DF.sam(prev, src)
        else:
            y = DF.scale_channels(prev, src, self.mode == "wh")
        return self.act(y)

    def extra_repr(self) -> str:
        return self.mode


@builder("scale_channels", "sam")
def build_scale(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    mode = "sam" if spec.kind == "sam" else ("wh" if spec.attrs.scale_wh else "channels")
    return ScaleChannels(mode, spec.attrs.activation)
