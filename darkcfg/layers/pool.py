"""Modules for resampling layers: max/avg pools, upsample, reorg, crop."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from ..graph import LayerSpec
from . import functional as DF
from .direct_conv import StepCall, bind_pool_concat, maxpool_nhwc
from .registry import BuildContext, builder


class PaddedMaxPool(nn.Module):
    """``[maxpool]`` with Darknet's geometry: total padding split floor/ceil, pad = -inf.

    >>> import torch
    >>> PaddedMaxPool(2, 1, 1, 1)([torch.zeros(1, 1, 5, 5)]).shape   # tiny-YOLO's size-keeping pool
    torch.Size([1, 1, 5, 5])
    """

    def __init__(self, size: int, stride_x: int, stride_y: int, padding: int, antialiasing: int = 0):
        super().__init__()
        self.size, self.padding, self.antialiasing = size, padding, antialiasing
        self.stride_x, self.stride_y = stride_x, stride_y

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.antialiasing:
            y = DF.darknet_maxpool(xs[0], self.size, 1, 1, self.padding)
            return DF.antialias_blur(y, self.antialiasing, self.stride_x, self.stride_y)
        if self.training and xs[0].requires_grad:
            # F.max_pool2d routes the gradient to the FIRST maximal element, as Darknet's
            # backward does; the separable inference path would split it between ties.
            return DF.darknet_maxpool_train(xs[0], self.size, self.stride_x, self.stride_y, self.padding)
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():  # CPU NHWC inference: layers/direct_conv.py
            fast = maxpool_nhwc(xs[0], self.size, self.stride_x, self.stride_y, self.padding)
            if fast is not None:
                return fast
        return DF.darknet_maxpool(xs[0], self.size, self.stride_x, self.stride_y, self.padding)

    @torch.jit.unused
    def bind(self, xs: List[Tensor]) -> Optional[StepCall]:
        """The native pool :meth:`forward` runs on inputs laid out like ``xs``, bound once (a frame
        replay's step, :mod:`darkcfg.replay`), or None where it would not."""
        if self.antialiasing or type(self) is not PaddedMaxPool:  # (LocalAvgPool averages)
            return None
        call = bind_pool_concat(xs, self.size, self.stride_x, self.stride_y, self.padding)
        return None if call is None else lambda xs, outs: call([xs[0].data_ptr()])

    def extra_repr(self) -> str:
        return f"size={self.size}, stride=({self.stride_y}, {self.stride_x}), padding={self.padding}"


class DepthMaxPool(nn.Module):
    """``[maxpool] maxpool_depth=1``: max over strided channel groups."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.maxpool_depth(xs[0], self.out_channels)


class LocalAvgPool(PaddedMaxPool):
    """``[local_avgpool]``: the maxpool geometry, averaging only in-bounds pixels."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.local_avgpool(xs[0], self.size, self.stride_x, self.stride_y, self.padding)


@builder("maxpool", "local_avgpool")
def build_pool(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    if spec.kind == "local_avgpool":
        return LocalAvgPool(a.size, a.stride_x, a.stride_y, a.padding)
    if a.maxpool_depth:
        return DepthMaxPool(a.out_channels)
    return PaddedMaxPool(a.size, a.stride_x, a.stride_y, a.padding, a.antialiasing)


class GlobalAvgPool(nn.Module):
    """``[avgpool]``: mean over H x W -> C x 1 x 1."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        return xs[0].mean(dim=(2, 3), keepdim=True)


@builder("avgpool")
def build_avgpool(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return GlobalAvgPool()


class Upsample(nn.Module):
    """``[upsample]``: nearest x stride, times ``scale``; a negative stride sum-pools."""

    def __init__(self, stride: int, scale: float):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.upsample(xs[0], self.stride, self.scale)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, scale={self.scale}"


@builder("upsample")
def build_upsample(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return Upsample(spec.attrs.stride, spec.attrs.scale)


class Reorg(nn.Module):
    """``[reorg3d]`` (space-to-depth) or ``[reorg]`` (YOLOv2's buffer reinterpretation)."""

    def __init__(self, stride: int, reverse: bool, old: bool):
        super().__init__()
        self.stride, self.reverse, self.old = stride, reverse, old

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.old:
            return DF.reorg_old(xs[0], self.stride, self.reverse)
        return DF.reorg3d(xs[0], self.stride, self.reverse)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, reverse={self.reverse}, {'reorg' if self.old else 'reorg3d'}"


@builder("reorg", "reorg3d")
def build_reorg(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return Reorg(spec.attrs.stride, spec.attrs.reverse, spec.kind == "reorg")


class CenterCrop(nn.Module):
    """``[crop]`` at inference: the centre window, mapped to 2x-1 unless ``noadjust``."""

    def __init__(self, crop_h: int, crop_w: int, noadjust: bool):
        super().__init__()
        self.crop_h, self.crop_w, self.noadjust = crop_h, crop_w, noadjust

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.crop_center(xs[0], self.crop_h, self.crop_w, self.noadjust)


@builder("crop")
def build_crop(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return CenterCrop(spec.attrs.crop_height, spec.attrs.crop_width, spec.attrs.noadjust)
