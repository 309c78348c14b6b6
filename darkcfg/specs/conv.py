"""Spec rules for layers with learned weights: conv, deconv, connected, local, batchnorm.

Block order follows ``parser.c load_weights_upto``: a conv reads biases, then the
BN trio, then weights; a connected layer reads biases, weights, then the BN trio.
``params`` counts kernel weights only (the CSPNet paper's #Parameter column).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Context, RuleResult, WeightBlock, spec_rule
from .common import activation_of, bn_trio, cdiv, positive_groups

_CONV_TRAINING_KEYS = ("sway", "rotate", "stretch", "stretch_sway", "angle", "grad_centr", "reverse",
                       "dot", "assisted_excitation", "coordconv", "cbn", "binary", "bin_output")


@dataclass(frozen=True)
class ConvAttrs:
    filters: int
    size: int
    stride_x: int
    stride_y: int
    padding: int  # per side, before dilation (Darknet's l.pad)
    dilation: int
    groups: int
    batch_normalize: bool
    activation: str
    share_index: int | None  # absolute index of the conv whose parameters are reused
    antialiasing: int
    xnor: bool
    bin_output: bool
    flipped: bool


@spec_rule("convolutional")
def convolutional(ctx: Context) -> RuleResult:
    s = ctx.section
    c, h, w = ctx.require_image()
    filters = ctx.positive("filters", s.get_int("filters", 1))
    size = ctx.positive("size", s.get_int("size", 1))
    stride_x = s.get_int("stride_x", -1)
    stride_y = s.get_int("stride_y", -1)
    stride = s.get_int("stride", 1)
    if stride_x < 1:
        stride_x = stride
    if stride_y < 1:
        stride_y = stride
    ctx.positive("stride", min(stride_x, stride_y))
    dilation = 1 if size == 1 else ctx.positive("dilation", s.get_int("dilation", 1))
    padding = s.get_int("padding", 0)
    if s.get_int("pad", 0):
        padding = size // 2
    if padding < 0:
        raise ctx.error(f"'padding' must not be negative, got {padding}", "padding")
    xnor = s.get_int("xnor", 0) != 0
    groups = positive_groups(ctx)
    if xnor:
        groups = 1
    if c % groups or filters % groups:
        raise ctx.error(f"groups={groups} must divide both the input channels ({c}) and filters ({filters})",
                        "groups" if s.has("groups") else None)
    antialiasing = s.get_int("antialiasing", 0)
    if antialiasing not in (0, 1, 2):
        raise ctx.error(f"antialiasing must be 0, 1 or 2, got {antialiasing}", "antialiasing")
    bn = s.get_int("batch_normalize", 0) != 0 or s.get_int("cbn", 0) != 0
    share = None
    if s.has("share_index"):
        share = ctx.resolve("share_index", s.get_int("share_index"))
        src = ctx.layer(share)
        if src.kind != "convolutional" or src.attrs.share_index is not None:
            raise ctx.error(f"share_index points at layer {share} ([{src.kind}]), which is not a "
                            "convolutional layer with its own weights", "share_index")
        a = src.attrs
        if (a.size, a.filters, a.groups, src.in_shape[0]) != (size, filters, groups, c):
            raise ctx.error(f"share_index layer {share} has size {a.size}, filters {a.filters}, groups "
                            f"{a.groups}, {src.in_shape[0]} input channels; this layer needs size {size}, "
                            f"filters {filters}, groups {groups}, {c} channels (Darknet aborts here too)",
                            "share_index")
        if a.batch_normalize != bn:
            raise ctx.error("share_index source and this layer must agree on batch_normalize", "share_index")
    s.mark_used(*_CONV_TRAINING_KEYS)
    ctx.check_kernel(size, padding)
    # Darknet's shape formula ignores dilation (darknet-format.md 3.1).
    sx, sy = (1, 1) if antialiasing else (stride_x, stride_y)
    out_h = cdiv(h + 2 * padding - size, sy) + 1
    out_w = cdiv(w + 2 * padding - size, sx) + 1
    out = ctx.check_shape((filters, out_h, out_w))
    if dilation > 1:
        # The computation pads by padding*dilation with a dilated kernel; that only gives the
        # formula's shape when 2*padding == size-1 (pad=1).  Otherwise Darknet's im2col writes a
        # differently sized matrix than the one its GEMM reads: refuse rather than guess.
        span = dilation * (size - 1) + 1
        real = (cdiv(h + 2 * padding * dilation - span, sy) + 1, cdiv(w + 2 * padding * dilation - span, sx) + 1)
        if real != (out_h, out_w):
            raise ctx.error(f"dilation={dilation} with padding={padding} and size={size}: Darknet's shape formula "
                            f"gives {out_h}x{out_w} but its dilated convolution computes {real[0]}x{real[1]}; "
                            f"use pad=1 (padding=size/2)", "dilation")
    next_shape = None
    if antialiasing:
        pad = 1 if antialiasing == 1 else 0
        blur = 3 if antialiasing == 1 else 2
        next_shape = ctx.check_shape((filters, cdiv(out_h + 2 * pad - blur, stride_y) + 1,
                                      cdiv(out_w + 2 * pad - blur, stride_x) + 1))
    nweights = (c // groups) * filters * size * size
    attrs = ConvAttrs(filters, size, stride_x, stride_y, padding, dilation, groups, bn,
                      activation_of(ctx, "logistic"), share, antialiasing, xnor,
                      s.get_int("bin_output", 0) != 0, s.get_int("flipped", 0) != 0)
    blocks: tuple[WeightBlock, ...] = ()
    if share is None:
        blocks = (WeightBlock("biases", filters),) + (bn_trio(filters) if bn else ()) + \
            (WeightBlock("weights", nweights),)
    bflops = 2.0 * nweights * out_h * out_w / 1e9
    if xnor:
        bflops /= 32
    return RuleResult(attrs, out, inputs=(share,) if share is not None else (), blocks=blocks,
                      params=nweights if share is None else 0, bflops=bflops, next_shape=next_shape)


def _filters_size_stride(ctx: Context) -> tuple[int, int, int]:
    """``filters``, ``size``, ``stride`` (all default 1, all must be positive)."""
    s = ctx.section
    return (ctx.positive("filters", s.get_int("filters", 1)), ctx.positive("size", s.get_int("size", 1)),
            ctx.positive("stride", s.get_int("stride", 1)))


@dataclass(frozen=True)
class DeconvAttrs:
    filters: int
    size: int
    stride: int
    padding: int
    batch_normalize: bool
    activation: str


@spec_rule("deconvolutional")
def deconvolutional(ctx: Context) -> RuleResult:
    """pjreddie's transposed conv; the AlexeyAB fork does not know this section."""
    s = ctx.section
    c, h, w = ctx.require_image()
    filters, size, stride = _filters_size_stride(ctx)
    padding = s.get_int("padding", 0)
    if s.get_int("pad", 0):
        padding = size // 2
    bn = s.get_int("batch_normalize", 0) != 0
    out = ctx.check_shape((filters, (h - 1) * stride + size - 2 * padding, (w - 1) * stride + size - 2 * padding))
    nweights = c * filters * size * size
    blocks = (WeightBlock("biases", filters),) + (bn_trio(filters) if bn else ()) + (WeightBlock("weights", nweights),)
    return RuleResult(DeconvAttrs(filters, size, stride, padding, bn, activation_of(ctx, "logistic")), out,
                      blocks=blocks, params=nweights, bflops=2.0 * nweights * h * w / 1e9)


@dataclass(frozen=True)
class ConnectedAttrs:
    inputs: int
    output: int
    batch_normalize: bool
    activation: str


@spec_rule("connected")
def connected(ctx: Context) -> RuleResult:
    s = ctx.section
    n_in = ctx.in_outputs
    if n_in <= 0:
        raise ctx.error("the previous layer has no outputs")
    n_out = ctx.positive("output", s.get_int("output", 1))
    bn = s.get_int("batch_normalize", 0) != 0
    blocks = (WeightBlock("biases", n_out), WeightBlock("weights", n_in * n_out)) + (bn_trio(n_out) if bn else ())
    # Darknet's connected layer sets no bflops, so it adds nothing to the printed total.
    return RuleResult(ConnectedAttrs(n_in, n_out, bn, activation_of(ctx, "logistic")), (n_out, 1, 1),
                      blocks=blocks, params=n_in * n_out)


@dataclass(frozen=True)
class LocalAttrs:
    filters: int
    size: int
    stride: int
    pad: int
    activation: str


@spec_rule("local")
def local(ctx: Context) -> RuleResult:
    s = ctx.section
    c, h, w = ctx.require_image()
    filters, size, stride = _filters_size_stride(ctx)
    pad = s.get_int("pad", 0)  # a pixel count here, not a flag
    if pad < 0:
        raise ctx.error(f"'pad' must not be negative, got {pad}", "pad")
    ctx.check_kernel(size, pad)
    out_h = cdiv(h - 1 if pad else h - size, stride) + 1
    out_w = cdiv(w - 1 if pad else w - size, stride) + 1
    real = (cdiv(h + 2 * pad - size, stride) + 1, cdiv(w + 2 * pad - size, stride) + 1)
    if real != (out_h, out_w):
        # Darknet sizes the output with (h-1)/stride+1 but its im2col pads by `pad` pixels: the two
        # only agree when 2*pad == size-1 (or pad=0).
        raise ctx.error(f"pad={pad} with size={size}: Darknet's shape formula gives {out_h}x{out_w} but its "
                        f"im2col computes {real[0]}x{real[1]}; use pad=0 or pad=(size-1)/2", "pad")
    out = ctx.check_shape((filters, out_h, out_w))
    locations = out_h * out_w
    nweights = c * filters * size * size * locations
    blocks = (WeightBlock("biases", filters * locations), WeightBlock("weights", nweights))
    return RuleResult(LocalAttrs(filters, size, stride, pad, activation_of(ctx, "logistic")), out,
                      blocks=blocks, params=nweights)


@dataclass(frozen=True)
class BatchnormAttrs:
    channels: int


@spec_rule("batchnorm")
def batchnorm(ctx: Context) -> RuleResult:
    c, h, w = ctx.require_image()
    blocks = (WeightBlock("biases", c), WeightBlock("scales", c), WeightBlock("rolling_mean", c),
              WeightBlock("rolling_variance", c))
    return RuleResult(BatchnormAttrs(c), (c, h, w), blocks=blocks)


@dataclass(frozen=True)
class ImplicitAttrs:
    filters: int
    atoms: int


@spec_rule("implicit")
def implicit(ctx: Context) -> RuleResult:
    """Learned constant tensor (filters x atoms x 1), independent of the input."""
    s = ctx.section
    filters = ctx.positive("filters", s.get_int("filters", 128))
    atoms = ctx.positive("atoms", s.get_int("atoms", 1))
    s.mark_used("mean", "std")
    # It reads the previous layer only for the batch size.
    return RuleResult(ImplicitAttrs(filters, atoms), (filters, atoms, 1),
                      blocks=(WeightBlock("implicit_weights", filters * atoms),), params=filters * atoms)
