"""Spec rules for output layers: yolo, Gaussian_yolo, region, detection, softmax, cost.

Only the keys that matter at inference are kept in the attrs; Darknet's many
training-only keys are marked as read so they are not reported as unused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Context, RuleResult, spec_rule

_YOLO_TRAINING = ("jitter", "ignore_thresh", "truth_thresh", "iou_thresh", "iou_loss", "iou_normalizer",
                  "obj_normalizer", "cls_normalizer", "delta_normalizer", "random", "resize", "max_delta",
                  "counters_per_class", "label_smooth_eps", "objectness_smooth", "focal_loss", "max", "map",
                  "embedding_layer", "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show",
                  "track_ciou_norm", "show_details", "iou_thresh_kind")
NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")
YOLO_POINTS = ("center", "left_top", "right_bottom")


@dataclass(frozen=True)
class YoloAttrs:
    """A ``[yolo]`` / ``[Gaussian_yolo]`` layer: what inference, decoding and export need.

    This one description is both the spec's attrs and the decoder's head (``detect.YoloHead``
    is this class), so nothing is declared twice.  ``mask`` defaults to every anchor, which
    lets a decoder head be written as ``YoloHead(classes, used_anchors)``.
    """

    classes: int
    anchors: tuple[tuple[float, float], ...]  # all `num` pairs, network-input pixels
    scale_x_y: float = 1.0
    new_coords: bool = False
    gaussian: bool = False
    yolo_point: str = "center"
    nms_kind: str = "default"
    beta_nms: float = 0.6
    mask: tuple[int, ...] = ()  # empty: every anchor, in order

    def __post_init__(self) -> None:
        if self.nms_kind not in NMS_KINDS:
            raise ValueError(f"nms kind must be one of {NMS_KINDS}, got {self.nms_kind!r}")
        if self.yolo_point not in YOLO_POINTS:
            raise ValueError(f"yolo_point must be one of {YOLO_POINTS}, got {self.yolo_point!r}")
        if self.classes < 1 or not self.anchors:
            raise ValueError("a yolo head needs classes >= 1 and at least one anchor")
        object.__setattr__(self, "anchors", tuple((float(w), float(h)) for w, h in self.anchors))
        if not self.mask:
            object.__setattr__(self, "mask", tuple(range(len(self.anchors))))

    @property
    def n(self) -> int:
        return len(self.mask)

    @property
    def entries(self) -> int:
        """Channels per anchor: 4 box + objectness + classes (Gaussian: 8 box/sigma + obj)."""
        return (9 if self.gaussian else 5) + self.classes

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        """The (w, h) pairs this layer uses, in mask order (network-input pixels)."""
        return tuple(self.anchors[m] for m in self.mask)


@spec_rule("yolo", "Gaussian_yolo")
def yolo(ctx: Context) -> RuleResult:
    s = ctx.section
    gaussian = s.type == "Gaussian_yolo"
    c, h, w = ctx.require_image()
    classes = ctx.positive("classes", s.get_int("classes", 20))
    total = ctx.check_anchors(ctx.positive("num", s.get_int("num", 1)), "num")
    mask = tuple(s.get_ints("mask") if s.has("mask") else range(total))
    raw_anchors = s.get_floats("anchors", [])
    if len(raw_anchors) % 2:
        ctx.warn(f"'anchors' has an odd number of values ({len(raw_anchors)}): the pairs after the typo are "
                 "shifted (Darknet reads them the same way)", "anchors")
    for m in mask:
        if m < 0:
            raise ctx.error(f"mask index {m} is negative", "mask")
        if m >= total:
            # Darknet reads past its num*2 anchor array here.  When the cfg lists that anchor
            # (cspx-p7-mish.cfg: num=16 with 17 pairs), its intent is clear: use it and warn.
            if 2 * (m + 1) > len(raw_anchors):
                raise ctx.error(f"mask index {m} is beyond the {len(raw_anchors) // 2} anchors given (num={total}); "
                                "Darknet would read undefined memory for it", "mask")
            ctx.warn(f"mask index {m} is outside the num={total} anchors; Darknet reads undefined memory "
                     "for it, darkcfg uses the cfg's extra anchor values", "mask")
    count = max([total] + [m + 1 for m in mask])
    # Darknet reads at most num*2 values; missing ones stay 0.5.
    values = (raw_anchors + [0.5] * (2 * count))[:2 * count]
    anchors = tuple((values[2 * i], values[2 * i + 1]) for i in range(count))
    nms_kind = s.get_str("nms_kind", "default") or "default"
    if nms_kind not in NMS_KINDS or (nms_kind == "cornersnms" and not gaussian):
        nms_kind = "default"  # Darknet falls back silently
    yolo_point = (s.get_str("yolo_point", "center") or "center") if gaussian else "center"
    if yolo_point not in YOLO_POINTS:
        raise ctx.error(f"yolo_point must be center, left_top or right_bottom, got '{yolo_point}'", "yolo_point")
    s.mark_used(*_YOLO_TRAINING)
    if gaussian:
        s.mark_used("uc_normalizer")
    attrs = YoloAttrs(classes, anchors, s.get_float("scale_x_y", 1.0), s.get_int("new_coords", 0) != 0, gaussian,
                      yolo_point, nms_kind, s.get_float("beta_nms", 0.6), mask)
    if c != attrs.n * attrs.entries:
        raise ctx.error(f"the previous layer has {c} channels but {len(mask)} anchors x ({attrs.entries - classes} + "
                        f"{classes} classes) = {attrs.n * attrs.entries} are needed: set filters={attrs.n * attrs.entries} "
                        f"in the [convolutional] before it", "classes")
    return RuleResult(attrs, (c, h, w))


@dataclass(frozen=True)
class RegionAttrs:
    classes: int
    coords: int
    num: int
    anchors: tuple[tuple[float, float], ...]  # grid-cell units
    softmax: bool
    tree: str | None  # path of a softmax tree (yolo9000), as written in the cfg
    map: str | None
    classfix: int = 0  # -1: objectness below .5 is zeroed at decode time (get_region_boxes)


_REGION_TRAINING = ("jitter", "rescore", "thresh", "object_scale", "noobject_scale", "class_scale",
                    "coord_scale", "bias_match", "absolute", "random", "log", "sqrt", "mask_scale",
                    "focal_loss", "max")


@spec_rule("region")
def region(ctx: Context) -> RuleResult:
    s = ctx.section
    c, h, w = ctx.require_image()
    classes = s.get_int("classes", 20)
    coords = _box_coords(ctx, 4)
    num = ctx.check_anchors(ctx.positive("num", s.get_int("num", 1)), "num")
    if classes < 0:
        raise ctx.error("'classes' must not be negative", "classes")
    raw = s.get_floats("anchors", [])
    values = (raw + [0.5] * (2 * num))[:2 * num]
    anchors = tuple((values[2 * i], values[2 * i + 1]) for i in range(num))
    s.mark_used(*_REGION_TRAINING)
    attrs = RegionAttrs(classes, coords, num, anchors, s.get_int("softmax", 0) != 0,
                        s.get_str("tree"), s.get_str("map"), s.get_int("classfix", 0))
    need = num * (coords + 1 + classes)
    if c != need:
        raise ctx.error(f"the previous layer has {c} channels but num={num} x (coords {coords} + 1 + classes "
                        f"{classes}) = {need} are needed", "classes")
    return RuleResult(attrs, (c, h, w))


def _box_coords(ctx: Context, default: int) -> int:
    """``coords``: the box takes 4 entries of each record, so fewer cannot be decoded."""
    coords = ctx.section.get_int("coords", default)
    if coords < 4:
        raise ctx.error(f"'coords' must be at least 4 (x, y, w, h), got {coords}: Darknet would read the box "
                        "from the objectness and class entries", "coords")
    return coords


@dataclass(frozen=True)
class DetectionAttrs:
    classes: int
    coords: int
    num: int
    side: int
    softmax: bool
    sqrt: bool


@spec_rule("detection")
def detection(ctx: Context) -> RuleResult:
    s = ctx.section
    classes = s.get_int("classes", 1)
    if classes < 0:
        raise ctx.error(f"'classes' must not be negative, got {classes}", "classes")
    attrs = DetectionAttrs(classes, _box_coords(ctx, 1), ctx.positive("num", s.get_int("num", 1)),
                           ctx.positive("side", s.get_int("side", 7)), s.get_int("softmax", 0) != 0,
                           s.get_int("sqrt", 0) != 0)
    s.mark_used("rescore", "jitter", "object_scale", "noobject_scale", "class_scale", "coord_scale", "random",
                "reorg", "forced")
    need = attrs.side * attrs.side * ((1 + attrs.coords) * attrs.num + attrs.classes)
    if ctx.in_outputs != need:
        raise ctx.error(f"the previous layer has {ctx.in_outputs} outputs but side^2 x ((1+coords) x num + classes) "
                        f"= {need} are needed", "side")
    return RuleResult(attrs, (0, 0, 0), outputs=ctx.in_outputs)


@dataclass(frozen=True)
class SoftmaxAttrs:
    groups: int
    temperature: float
    tree: str | None


@spec_rule("softmax")
def softmax(ctx: Context) -> RuleResult:
    s = ctx.section
    groups = ctx.positive("groups", s.get_int("groups", 1))
    if ctx.in_outputs % groups:
        raise ctx.error(f"groups={groups} does not divide the {ctx.in_outputs} inputs", "groups")
    s.mark_used("spatial", "noloss")
    temperature = s.get_float("temperature", 1.0)
    if temperature == 0:
        raise ctx.error("'temperature' must not be 0 (every output would be NaN)", "temperature")
    attrs = SoftmaxAttrs(groups, temperature, s.get_str("tree"))
    return RuleResult(attrs, (0, 0, 0), outputs=ctx.in_outputs)


@dataclass(frozen=True)
class PassAttrs:
    """Layers whose inference output is not computed (training losses)."""


@spec_rule("cost", "contrastive")
def cost(ctx: Context) -> RuleResult:
    """Training losses: Darknet leaves their output at zero at inference."""
    s = ctx.section
    s.mark_used("type", "scale", "ratio", "noobject_scale", "thresh", "classes", "temperature", "yolo_layer",
                "cls_normalizer", "max_delta", "contrastive_neg_max", "cosine_similarity", "embedding_size")
    return RuleResult(PassAttrs(), (0, 0, 0), outputs=ctx.in_outputs)
