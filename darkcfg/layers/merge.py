"""Modules for layers that combine other layers: route, shortcut, sam, scale_channels."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from ..graph import LayerSpec
from . import functional as DF
from .activations import Activation
from .registry import BuildContext, WeightedLayer, builder


class Route(nn.Module):
    """``[route]``: concatenate the listed layers, each cut to channel group ``group_id`` of ``groups``."""

    def __init__(self, groups: int, group_id: int, flat: bool):
        super().__init__()
        self.groups, self.group_id, self.flat = groups, group_id, flat

    def forward(self, xs: List[Tensor]) -> Tensor:
        if len(xs) == 1 and self.groups == 1:
            return xs[0]
        if self.flat:
            parts = [x.flatten(1) for x in xs]
            parts = [p.chunk(self.groups, 1)[self.group_id] if self.groups > 1 else p for p in parts]
            return torch.cat(parts, 1)[:, :, None, None]
        return DF.route(xs, self.groups, self.group_id)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, group_id={self.group_id}" if self.groups > 1 else ""


@builder("route")
def build_route(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    flat = spec.is_flat or any(ctx.graph.layers[i].is_flat for i in spec.inputs)
    return Route(spec.attrs.groups, spec.attrs.group_id, flat)


class Shortcut(WeightedLayer):
    """``[shortcut]``: ``act(prev + sum(from))`` with Darknet's prefix add (and optional weights).

    The first input is the previous layer, the rest the ``from`` layers.
    """

    weights_type: str
    normalization: str
    legacy: bool

    def __init__(self, n_sources: int, channels: int, activation: str, weights_type: str, normalization: str,
                 legacy: bool):
        super().__init__()
        self.weights_type, self.normalization, self.legacy = weights_type, normalization, legacy
        count = {"none": 0, "per_feature": n_sources + 1, "per_channel": (n_sources + 1) * channels}[weights_type]
        self.weight = nn.Parameter(torch.ones(count)) if count else None
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.legacy:
            y = DF.shortcut_legacy(xs[0], xs[1])
        else:
            y = DF.shortcut_add(xs[0], xs[1:], self.weight, self.weights_type, self.normalization)
        return self.act(y)

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return [] if self.weight is None else [("shortcut_weights", self.weight)]


@builder("shortcut")
def build_shortcut(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return Shortcut(len(a.sources), spec.out_shape[0], a.activation, a.weights_type, a.weights_normalization,
                    a.legacy)


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
