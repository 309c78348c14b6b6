"""Spec rules for shape-preserving layers and the recurrent family."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Context, RuleResult, WeightBlock, spec_rule
from .common import activation_of, bn_trio, cdiv, positive_groups
from .pool import NoAttrs


@spec_rule("dropout", "empty")
def identity(ctx: Context) -> RuleResult:
    """Identity at inference (Darknet aliases the previous layer's buffer)."""
    ctx.section.mark_used("probability", "dropblock", "dropblock_size_rel", "dropblock_size_abs")
    return RuleResult(NoAttrs(), ctx.in_shape, outputs=ctx.in_outputs)


@dataclass(frozen=True)
class ActivationAttrs:
    activation: str


@spec_rule("activation")
def activation(ctx: Context) -> RuleResult:
    return RuleResult(ActivationAttrs(activation_of(ctx, "linear")), ctx.in_shape, outputs=ctx.in_outputs)


@dataclass(frozen=True)
class LrnAttrs:
    size: int
    alpha: float
    beta: float
    kappa: float


@spec_rule("lrn")
def lrn(ctx: Context) -> RuleResult:
    s = ctx.section
    shape = ctx.require_image()
    attrs = LrnAttrs(ctx.positive("size", s.get_int("size", 5)), s.get_float("alpha", 1e-4),
                     s.get_float("beta", 0.75), s.get_float("kappa", 1.0))
    return RuleResult(attrs, shape)


@dataclass(frozen=True)
class RecurrentAttrs:
    """Recurrent layers: graph-only (shapes, weights layout); not runnable by darkcfg."""

    output: int
    hidden: int
    batch_normalize: bool


def _connected_blocks(prefix: str, n_in: int, n_out: int, bn: bool) -> tuple[WeightBlock, ...]:
    return ((WeightBlock(f"{prefix}.biases", n_out), WeightBlock(f"{prefix}.weights", n_in * n_out))
            + tuple(WeightBlock(f"{prefix}.{b.role}", b.count, True) for b in (bn_trio(n_out) if bn else ())))


@spec_rule("rnn", "gru", "lstm")
def recurrent(ctx: Context) -> RuleResult:
    s = ctx.section
    n_in = ctx.in_outputs
    output = ctx.positive("output", s.get_int("output", 1))
    bn = s.get_int("batch_normalize", 0) != 0
    s.mark_used("activation", "logistic", "shortcut")
    if s.type == "rnn":
        hidden = ctx.positive("hidden", s.get_int("hidden", 1))
        subs = [("input_layer", n_in, hidden), ("self_layer", hidden, hidden), ("output_layer", hidden, output)]
    elif s.type == "gru":
        hidden = output
        subs = [(p, n_in, output) for p in ("input_z_layer", "input_r_layer", "input_h_layer")] + \
               [(p, output, output) for p in ("state_z_layer", "state_r_layer", "state_h_layer")]
    else:
        hidden = output
        subs = [(p, n_in, output) for p in ("wf", "wi", "wg", "wo")] + \
               [(p, output, output) for p in ("uf", "ui", "ug", "uo")]
    blocks = sum((_connected_blocks(p, i, o, bn) for p, i, o in subs), ())
    return RuleResult(RecurrentAttrs(output, hidden, bn), (output, 1, 1), blocks=blocks,
                      params=sum(i * o for _, i, o in subs))


@dataclass(frozen=True)
class CrnnAttrs:
    output: int
    hidden: int
    size: int
    stride: int
    padding: int
    dilation: int
    groups: int
    batch_normalize: bool
    activation: str
    shortcut: bool


@spec_rule("crnn", "conv_lstm", "history")
def conv_recurrent(ctx: Context) -> RuleResult:
    s = ctx.section
    c, h, w = ctx.require_image()
    if s.type == "history":
        size = ctx.positive("history_size", s.get_int("history_size", 4))
        return RuleResult(NoAttrs(), (c * size, h, w))
    output = ctx.positive("output", s.get_int("output", 1))
    hidden = s.get_int("hidden", 1) if s.type == "crnn" else output
    size = ctx.positive("size", s.get_int("size", 3))
    stride = ctx.positive("stride", s.get_int("stride", 1))
    dilation = ctx.positive("dilation", s.get_int("dilation", 1))
    groups = positive_groups(ctx)
    padding = s.get_int("padding", 0)
    if s.get_int("pad", 0):
        padding = size // 2
    bn = s.get_int("batch_normalize", 0) != 0
    act = activation_of(ctx, "logistic" if s.type == "crnn" else "linear")
    shortcut = s.get_int("shortcut", 0) != 0
    s.mark_used("xnor", "peephole", "bottleneck", "lstm_activation", "time_normalizer")
    ctx.check_kernel(size, padding)
    out_h = cdiv(h + 2 * padding - size, stride) + 1
    out_w = cdiv(w + 2 * padding - size, stride) + 1
    if (out_h, out_w) != (h, w):
        # Darknet builds every inner conv for an H x W input and feeds each one's output to the
        # next (and back as the state): only a size-preserving conv gives buffers that agree.
        raise ctx.error(f"the inner convolutions must keep the {h}x{w} size (stride=1 and pad=1, or "
                        f"padding=size/2), but size={size}, stride={stride}, padding={padding} give "
                        f"{out_h}x{out_w}", "size")
    blocks: tuple[WeightBlock, ...] = ()
    params = 0
    attrs: object = RecurrentAttrs(output, hidden, bn)
    if s.type == "crnn":
        if c % groups or hidden % groups or output % groups:
            raise ctx.error(f"groups={groups} must divide the channels {c}, hidden {hidden} and output {output}",
                            "groups")
        attrs = CrnnAttrs(output, hidden, size, stride, padding, dilation, groups, bn, act, shortcut)
        for prefix, ci, co in (("input_layer", c, hidden), ("self_layer", hidden, hidden),
                               ("output_layer", hidden, output)):
            n = ci // groups * co * size * size
            blocks += (WeightBlock(f"{prefix}.biases", co),) + tuple(
                WeightBlock(f"{prefix}.{b.role}", b.count, True) for b in (bn_trio(co) if bn else ())) + (
                WeightBlock(f"{prefix}.weights", n),)
            params += n
        convs = [(c, hidden), (hidden, hidden), (hidden, output)]
        extra = 0.0
    else:
        # conv_lstm: four input convs (U), four state convs (W), three peephole convs (V) when
        # peephole=1, plus Darknet's count of the element-wise gate arithmetic.
        peephole = s.get_int("peephole", 0) != 0
        convs = [(c, output)] * 4 + [(output, output)] * (7 if peephole else 4)
        extra = (12 if peephole else 9) * output * out_h * out_w / 1e9
    # Darknet's crnn/conv_lstm report the sum of their inner convolutions' BFLOPs.
    bflops = sum(2.0 * (ci // groups) * co * size * size * out_h * out_w for ci, co in convs) / 1e9 + extra
    return RuleResult(attrs, ctx.check_shape((output, out_h, out_w)),
                      blocks=blocks, params=params, bflops=bflops)
