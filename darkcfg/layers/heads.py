"""Modules for output layers: they return exactly what Darknet writes into ``l.output``.

Box decoding is not done here (see :mod:`darkcfg.detect`): a head's tensor is the
raw material Darknet's ``get_network_boxes`` reads, so conformance can compare it
element by element.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..datafiles import find_data_file, read_tree  # noqa: F401  (find_data_file re-exported)
from ..graph import LayerSpec
from . import functional as DF
from .registry import BuildContext, builder
from .tracing import as_map


class YoloOutput(nn.Module):
    """``[yolo]`` / ``[Gaussian_yolo]``: logistic on the right channels, then the scale_x_y affine."""

    def __init__(self, n: int, classes: int, scale_x_y: float, new_coords: bool, gaussian: bool):
        super().__init__()
        self.n, self.classes, self.scale_x_y = n, classes, scale_x_y
        self.new_coords, self.gaussian = new_coords, gaussian

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.gaussian:
            return DF.gaussian_yolo_output(xs[0], self.n, self.classes, self.scale_x_y)
        return DF.yolo_output(xs[0], self.n, self.classes, self.scale_x_y, self.new_coords)

    def extra_repr(self) -> str:
        return f"anchors={self.n}, classes={self.classes}, scale_x_y={self.scale_x_y}" + (
            ", new_coords" if self.new_coords else "") + (", gaussian" if self.gaussian else "")


@builder("yolo", "Gaussian_yolo")
def build_yolo(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return YoloOutput(a.n, a.classes, a.scale_x_y, a.new_coords, a.gaussian)


class RegionOutput(nn.Module):
    """``[region]`` (YOLOv2): per-box records, logistic objectness, class softmax (or tree softmax)."""

    def __init__(self, n: int, coords: int, classes: int, softmax: bool, tree: Optional[List[Tuple[int, int]]]):
        super().__init__()
        self.n, self.coords, self.classes, self.softmax = n, coords, classes, softmax
        self.tree = tree

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.region_output(xs[0], self.n, self.coords, self.classes, self.softmax, self.tree)


@builder("region")
def build_region(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    tree = None
    if a.tree:
        tree = read_tree(find_data_file(a.tree, ctx.graph.path, spec, "tree")).groups()
    return RegionOutput(a.num, a.coords, a.classes, a.softmax, tree)


class FlatSoftmax(nn.Module):
    """``[softmax]``: softmax over ``groups`` contiguous chunks of the flat input (or a tree)."""

    def __init__(self, groups: int, temperature: float, tree: Optional[List[Tuple[int, int]]]):
        super().__init__()
        self.groups, self.temperature, self.tree = groups, temperature, tree

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0].flatten(1)
        if self.tree is not None:
            y = DF.tree_softmax(x, self.tree)
        else:
            y = DF.softmax_groups(x, self.groups, self.temperature)
        return as_map(y)


@builder("softmax")
def build_softmax(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    tree = read_tree(find_data_file(a.tree, ctx.graph.path, spec, "tree")).groups() if a.tree else None
    return FlatSoftmax(a.groups, a.temperature, tree)


class DetectionOutput(nn.Module):
    """``[detection]`` (YOLOv1): the flat input, with a per-cell class softmax if ``softmax=1``."""

    def __init__(self, side: int, classes: int, softmax: bool):
        super().__init__()
        self.side, self.classes, self.softmax = side, classes, softmax

    def forward(self, xs: List[Tensor]) -> Tensor:
        return as_map(DF.detection_output(xs[0].flatten(1), self.side, self.classes, self.softmax))


@builder("detection")
def build_detection(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return DetectionOutput(a.side, a.classes, a.softmax)


class ZeroOutput(nn.Module):
    """``[cost]`` / ``[contrastive]``: training losses; Darknet leaves their output at zero."""

    def __init__(self, outputs: int):
        super().__init__()
        self.outputs = outputs

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        return torch.zeros(x.shape[0], self.outputs, 1, 1, dtype=x.dtype, device=x.device)


@builder("cost", "contrastive")
def build_cost(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return ZeroOutput(spec.outputs)
