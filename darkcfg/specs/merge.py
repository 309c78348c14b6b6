"""Spec rules for layers that read other layers: route, shortcut, sam, scale_channels."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Context, RuleResult, WeightBlock, spec_rule
from .common import activation_of, layer_list


@dataclass(frozen=True)
class RouteAttrs:
    layers: tuple[int, ...]
    groups: int
    group_id: int


@spec_rule("route")
def route(ctx: Context) -> RuleResult:
    s = ctx.section
    layers = layer_list(ctx, "layers")
    groups = ctx.positive("groups", s.get_int("groups", 1))
    group_id = s.get_int("group_id", 0)
    if not 0 <= group_id < groups:
        raise ctx.error(f"group_id={group_id} must be in 0..{groups - 1}", "group_id")
    srcs = [ctx.layer(i) for i in layers]
    for src in srcs:
        if src.outputs % groups:
            raise ctx.error(f"groups={groups} does not divide the {src.outputs} outputs of layer {src.index}",
                            "groups")
        if not src.is_flat and src.out_shape[0] % groups:
            raise ctx.error(f"groups={groups} does not divide the {src.out_shape[0]} channels of layer "
                            f"{src.index}", "groups")
    first = srcs[0]
    _, h, w = first.out_shape
    for src in srcs[1:]:
        if src.out_shape[1:] != (h, w):
            raise ctx.error(f"route inputs have different sizes: layer {first.index} is {first.out_shape[1]}x"
                            f"{first.out_shape[2]}, layer {src.index} is {src.out_shape[1]}x{src.out_shape[2]}",
                            "layers")
    outputs = sum(src.outputs for src in srcs) // groups
    c = sum(src.out_shape[0] for src in srcs) // groups
    return RuleResult(RouteAttrs(layers, groups, group_id), (c, h, w), outputs=outputs,
                      inputs=layers, reads_prev=False)


@dataclass(frozen=True)
class ShortcutAttrs:
    sources: tuple[int, ...]
    activation: str
    weights_type: str  # none | per_feature | per_channel
    weights_normalization: str  # none | relu | softmax
    legacy: bool  # pjreddie semantics: a source of another H x W is strided/sampled


_WEIGHTS_TYPES = {"none": "none", "per_feature": "per_feature", "per_layer": "per_feature",
                  "per_channel": "per_channel"}
_NORMALIZATIONS = {"none": "none", "relu": "relu", "avg_relu": "relu", "softmax": "softmax"}


@spec_rule("shortcut")
def shortcut(ctx: Context) -> RuleResult:
    """out = activation(prev + sum of sources); output shape = the previous layer's.

    Sources of a different H x W are what the AlexeyAB fork rejects and the original
    pjreddie Darknet supports (classic ResNet cfgs): marked ``legacy`` and run with
    pjreddie's strided-sampling rule.
    """
    s = ctx.section
    c, h, w = ctx.require_image()
    sources = layer_list(ctx, "from")
    wt = _WEIGHTS_TYPES.get(s.get_str("weights_type", "none") or "none")
    if wt is None:
        raise ctx.error("weights_type must be none, per_feature (per_layer) or per_channel", "weights_type")
    wn = _NORMALIZATIONS.get(s.get_str("weights_normalization", "none") or "none")
    if wn is None:
        raise ctx.error("weights_normalization must be none, relu (avg_relu) or softmax", "weights_normalization")
    legacy = False
    for i in sources:
        src = ctx.layer(i)
        if src.is_flat:
            raise ctx.error(f"shortcut source layer {i} has a flat output", "from")
        if src.out_shape[1:] != (h, w):
            legacy = True
    if legacy and (len(sources) > 1 or wt != "none"):
        raise ctx.error("a shortcut between different spatial sizes (pjreddie semantics) supports one "
                        "unweighted source only", "from")
    n = len(sources)
    blocks: tuple[WeightBlock, ...] = ()
    if wt == "per_feature":
        blocks = (WeightBlock("shortcut_weights", n + 1),)
    elif wt == "per_channel":
        blocks = (WeightBlock("shortcut_weights", (n + 1) * c),)
    bflops = float(w * h * c * n) / 1e9 * (2 if wt != "none" else 1)
    attrs = ShortcutAttrs(sources, activation_of(ctx, "linear"), wt, wn, legacy)
    return RuleResult(attrs, (c, h, w), inputs=sources, blocks=blocks, bflops=bflops)


@dataclass(frozen=True)
class ScaleAttrs:
    source: int
    activation: str
    scale_wh: bool = False


@spec_rule("scale_channels")
def scale_channels(ctx: Context) -> RuleResult:
    """SE block: ``out = from * prev`` with prev 1x1xC (or HxWx1 when ``scale_wh=1``)."""
    s = ctx.section
    c, h, w = ctx.require_image()
    (src_i,) = _single_source(ctx)
    src = ctx.layer(src_i)
    scale_wh = s.get_int("scale_wh", 0) != 0
    sc, sh, sw = src.out_shape
    ok = (h, w) == (sh, sw) and c == 1 if scale_wh else (h, w) == (1, 1) and c == sc
    if not ok or src.is_flat:
        want = f"1x{sh}x{sw}" if scale_wh else f"{sc}x1x1"
        raise ctx.error(f"[scale_channels] needs the previous layer to be {want} to scale layer {src_i} "
                        f"({sc}x{sh}x{sw}), got {c}x{h}x{w}", "from")
    return RuleResult(ScaleAttrs(src_i, activation_of(ctx, "linear"), scale_wh), src.out_shape, inputs=(src_i,))


@spec_rule("sam")
def sam(ctx: Context) -> RuleResult:
    """Spatial attention: ``out = from * prev`` element-wise (same shapes)."""
    c, h, w = ctx.require_image()
    (src_i,) = _single_source(ctx)
    src = ctx.layer(src_i)
    if src.out_shape != (c, h, w):
        raise ctx.error(f"[sam] needs layer {src_i} ({'x'.join(map(str, src.out_shape))}) to have the previous "
                        f"layer's shape {c}x{h}x{w}", "from")
    return RuleResult(ScaleAttrs(src_i, activation_of(ctx, "linear")), src.out_shape, inputs=(src_i,))


def _single_source(ctx: Context) -> tuple[int]:
    sources = layer_list(ctx, "from")
    if len(sources) != 1:
        raise ctx.error(f"expects exactly one 'from' layer, got {len(sources)}", "from")
    return (sources[0],)
