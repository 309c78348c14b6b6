"""Spec rules for resampling layers: pools, upsample, reorg, crop."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Context, RuleResult, spec_rule
from .common import cdiv


@dataclass(frozen=True)
class PoolAttrs:
    size: int
    stride_x: int
    stride_y: int
    padding: int  # TOTAL padding: left/top get padding//2, right/bottom the rest
    maxpool_depth: bool = False
    out_channels: int = 1
    antialiasing: int = 0


def _pool_geometry(ctx: Context) -> tuple[int, int, int, int]:
    s = ctx.section
    stride = s.get_int("stride", 1)
    stride_x = s.get_int("stride_x", stride)
    stride_y = s.get_int("stride_y", stride)
    ctx.positive("stride", min(stride_x, stride_y))
    size = ctx.positive("size", s.get_int("size", stride))
    padding = s.get_int("padding", size - 1)
    if padding < 0:
        raise ctx.error(f"'padding' must not be negative, got {padding}", "padding")
    return size, stride_x, stride_y, padding


@spec_rule("maxpool", "local_avgpool")
def maxpool(ctx: Context) -> RuleResult:
    """``[maxpool]`` and ``[local_avgpool]`` share Darknet's ``make_maxpool_layer`` geometry."""
    s = ctx.section
    c, h, w = ctx.require_image()
    size, sx, sy, padding = _pool_geometry(ctx)
    ctx.check_transient((c, h + padding, w + padding), "padded input")
    depth = antialiasing = 0
    out_channels = 1
    if ctx.section.type == "maxpool":
        depth = s.get_int("maxpool_depth", 0)
        out_channels = s.get_int("out_channels", 1)
        antialiasing = s.get_int("antialiasing", 0)
        s.mark_used("maxpool_zero_nonmax")
        if antialiasing not in (0, 1, 2):
            raise ctx.error(f"antialiasing must be 0, 1 or 2, got {antialiasing}", "antialiasing")
    if depth:
        ctx.positive("out_channels", out_channels)
        out = (out_channels, h, w)
    else:
        hx, hy = (1, 1) if antialiasing else (sx, sy)
        out = ctx.check_shape((c, cdiv(h + padding - size, hy) + 1, cdiv(w + padding - size, hx) + 1))
    next_shape = None
    if antialiasing:
        pad = 1 if antialiasing == 1 else 0
        blur = 3 if antialiasing == 1 else 2
        next_shape = ctx.check_shape((out[0], cdiv(out[1] + 2 * pad - blur, sy) + 1,
                                      cdiv(out[2] + 2 * pad - blur, sx) + 1))
    bflops = float(size * size * c * out[1] * out[2]) / 1e9
    return RuleResult(PoolAttrs(size, sx, sy, padding, bool(depth), out_channels, antialiasing), out,
                      bflops=bflops, next_shape=next_shape)


@dataclass(frozen=True)
class NoAttrs:
    """For layers with nothing to configure."""


@spec_rule("avgpool")
def avgpool(ctx: Context) -> RuleResult:
    c, _, _ = ctx.require_image()
    return RuleResult(NoAttrs(), (c, 1, 1))


@dataclass(frozen=True)
class UpsampleAttrs:
    stride: int  # negative: sum-pool by |stride| (Darknet's "reverse" upsample)
    scale: float


@spec_rule("upsample")
def upsample(ctx: Context) -> RuleResult:
    s = ctx.section
    c, h, w = ctx.require_image()
    stride = s.get_int("stride", 2)
    if stride == 0:
        raise ctx.error("'stride' must not be 0", "stride")
    scale = s.get_float("scale", 1.0)
    if stride > 0:
        out = (c, h * stride, w * stride)
    else:
        k = -stride
        if h % k or w % k:
            raise ctx.error(f"a negative stride {stride} needs H and W divisible by {k}, got {h}x{w}", "stride")
        out = (c, h // k, w // k)
    return RuleResult(UpsampleAttrs(stride, scale), ctx.check_shape(out))


@dataclass(frozen=True)
class ReorgAttrs:
    stride: int
    reverse: bool


@spec_rule("reorg", "reorg3d")
def reorg(ctx: Context) -> RuleResult:
    """``[reorg3d]`` is space-to-depth; ``[reorg]`` is YOLOv2's buffer-reinterpreting variant."""
    s = ctx.section
    c, h, w = ctx.require_image()
    stride = ctx.positive("stride", s.get_int("stride", 1))
    reverse = s.get_int("reverse", 0) != 0
    s2 = stride * stride
    if reverse:
        if c % s2:
            raise ctx.error(f"reverse reorg needs channels ({c}) divisible by stride^2 ({s2})", "stride")
        if ctx.section.type == "reorg3d" and c % (s2 * s2):
            # reorg_cpu runs on the output dims: out_c / stride^2 must be a whole number too
            raise ctx.error(f"reverse [reorg3d] needs channels ({c}) divisible by stride^4 ({s2 * s2})", "stride")
        out = (c // s2, h * stride, w * stride)
    else:
        if h % stride or w % stride:
            raise ctx.error(f"reorg stride {stride} must divide the input size {h}x{w}", "stride")
        if ctx.section.type == "reorg" and c % s2:
            raise ctx.error(f"[reorg] needs channels ({c}) divisible by stride^2 ({s2})", "stride")
        out = (c * s2, h // stride, w // stride)
    return RuleResult(ReorgAttrs(stride, reverse), ctx.check_shape(out))


@dataclass(frozen=True)
class CropAttrs:
    crop_height: int
    crop_width: int
    noadjust: bool


@spec_rule("crop")
def crop(ctx: Context) -> RuleResult:
    """Inference crop: the centre ``crop_height x crop_width`` window (then 2x-1 unless noadjust)."""
    s = ctx.section
    c, h, w = ctx.require_image()
    ch = ctx.positive("crop_height", s.get_int("crop_height", 1))
    cw = ctx.positive("crop_width", s.get_int("crop_width", 1))
    if ch > h or cw > w:
        raise ctx.error(f"crop {ch}x{cw} is larger than its input {h}x{w} (Darknet would read outside its buffer)")
    s.mark_used("flip", "angle", "saturation", "exposure", "shift")
    return RuleResult(CropAttrs(ch, cw, s.get_int("noadjust", 0) != 0), (c, ch, cw))
