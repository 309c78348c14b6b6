"""Detection-head decoding and NMS, reproducing ``darknet detector test``.

Pipeline (``detector.c test_detector``)::

    get_network_boxes(net, im.w, im.h, thresh, hier_thresh, 0, relative=1, &nboxes, letter)
    do_nms_sort(...) or diounms_sort(...)      # nms 0.45, nms_kind of the LAST detection head
    draw_detections_v3(...)                    # prints every class with prob > thresh

:func:`decode` is ``get_network_boxes`` (``get_yolo_detections``, ``get_gaussian_yolo_detections``,
``custom_get_region_detections``, ``get_detection_detections`` + ``correct_yolo_boxes``),
:func:`nms` is ``do_nms_sort`` / ``diounms_sort`` and :func:`to_pixel_list` is the text output of
``draw_detections_v3``. Everything is vectorised in torch and runs on the device of the inputs;
only the inherently sequential greedy suppression walks a small boolean matrix on the CPU.

Arithmetic mirrors darknet's C types where it is cheap to do so: box centres in float32,
``exp`` of w/h in double (C ``exp`` on a float argument) then stored as float.

Head descriptions are small frozen dataclasses: a yolo head is its spec attrs
(:class:`~darkcfg.specs.heads.YoloAttrs`, aliased :data:`YoloHead`); :class:`RegionHead` and
:class:`DetectionHead` are built from their spec attrs (``from_attrs``) plus, for a tree
[region], the loaded tree and map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .datafiles import DarknetTree
from .image import letterbox_size
from .specs.heads import NMS_KINDS, YOLO_POINTS, DetectionAttrs, RegionAttrs, YoloAttrs

__all__ = ["NMS_KINDS", "YOLO_POINTS", "YoloHead", "RegionHead", "DetectionHead", "decode", "nms"]
GREEDY_DIOU_EXPONENT = 0.6  # box.c box_diou: pow(d/c, 0.6), fixed, used by GREEDY_NMS
REGION_TREE_THRESH = 0.5  # region_layer.c get_region_boxes: `predictions[...] > .5`, hier_thresh never reaches it
REGION_MAP_LIMIT = 200  # get_region_boxes fills map classes `for (j = 0; j < 200; ++j)`


# --------------------------------------------------------------------------------------------
# head descriptions
# --------------------------------------------------------------------------------------------


YoloHead = YoloAttrs
"""A ``[yolo]`` or ``[Gaussian_yolo]`` head is described by its spec attrs (:class:`YoloAttrs`):
``masked_anchors`` are the (w, h) pairs the layer uses, in network-input pixels; ``scale_x_y``
is informational (the layer output already has the affine applied, forward_yolo_layer)."""


class _DefaultNms:
    """[region] and [detection] have no nms_kind key: Darknet uses DEFAULT_NMS for them."""

    nms_kind = "default"
    beta_nms = 0.6


@dataclass(frozen=True)
class RegionHead(_DefaultNms):
    """A ``[region]`` layer (YOLOv2, YOLO9000). ``anchors`` are in grid-cell units.

    ``tree`` (a :class:`~darkcfg.layers.functional.DarknetTree`, ``tree=`` of the cfg) makes it a
    hierarchical head (``l.softmax_tree``): see :func:`_region_tree_probs` for what Darknet does
    with it. ``map`` is the ``int *map`` argument of ``get_network_boxes`` (one tree index per
    output class, e.g. ``coco9k.map``): with it the head reports ``len(map)`` classes
    (:attr:`out_classes`); without it every tree node is a class. Only used with a tree.
    ``classfix=-1`` zeroes objectness below .5 (get_region_boxes). Tree and map are stored as
    tuples so the head stays hashable.
    """

    classes: int
    coords: int
    num: int
    anchors: tuple[tuple[float, float], ...]
    softmax: bool = False
    tree: Optional[DarknetTree] = None
    map: Optional[tuple[int, ...]] = None
    classfix: int = 0
    _plan: Optional["_TreePlan"] = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.anchors) < self.num:
            raise ValueError(f"RegionHead: {len(self.anchors)} anchors for num={self.num}")
        if self.map is not None:
            if self.tree is None:
                raise ValueError("RegionHead: map= is only used with a tree (hierarchical [region])")
            object.__setattr__(self, "map", tuple(int(v) for v in self.map))
            if not self.map:
                raise ValueError("RegionHead: the class map is empty")
            bad = [v for v in self.map if not 0 <= v < self.classes]
            if bad:
                raise ValueError(f"RegionHead: map entries must be tree indices in [0, {self.classes}), got {bad[:5]}")
        if self.tree is not None:
            tree = DarknetTree(*(tuple(f) for f in self.tree))
            object.__setattr__(self, "tree", tree)
            object.__setattr__(self, "_plan", _TreePlan.build(tree, self.classes))

    @classmethod
    def from_attrs(cls, attrs: "RegionAttrs", tree: Optional[DarknetTree] = None,
                   map: Optional[tuple[int, ...]] = None) -> "RegionHead":
        """The decoder head of a ``[region]`` spec; ``tree``/``map`` are the loaded files it names."""
        return cls(attrs.classes, attrs.coords, attrs.num, attrs.anchors, attrs.softmax, tree, map, attrs.classfix)

    @property
    def out_classes(self) -> int:
        """Columns of the decoded ``probs``: ``len(map)`` with a map, else ``classes``."""
        return len(self.map) if self.map is not None else self.classes


@dataclass(frozen=True)
class _TreePlan:
    """``tree.c hierarchy_predictions`` (only_leaves=0) as one vectorised step per tree level.

    Darknet walks the record once, ``for j in 0..classes-1: if parent >= 0: p[j] *= p[parent]``,
    in place. A parent listed before its child has already become an absolute probability, so
    for such trees (9k.tree) each node ends up as the product of the conditional probabilities
    along its path, accumulated root first in float32. A parent listed at or after its child is
    still its raw value when the child is visited; that is reproduced too (such a node is a
    "level 1" node reading the original value). Each step is ``(nodes, parents, parent_final)``.
    """

    steps: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]

    @staticmethod
    def build(tree: DarknetTree, classes: int) -> "_TreePlan":
        if len(tree.parent) < classes:
            raise ValueError(f"RegionHead: the tree has {len(tree.parent)} nodes for classes={classes}")
        level = [0] * classes
        for j in range(classes):
            p = tree.parent[j]
            if p < 0:
                continue
            if p >= classes:
                raise ValueError(f"RegionHead: tree node {j} has parent {p}, outside classes={classes}")
            level[j] = level[p] + 1 if p < j else 1
        lv = np.asarray(level, dtype=np.int64)
        parent = np.asarray(tree.parent[:classes], dtype=np.int64)
        steps = []
        for depth in range(1, int(lv.max(initial=0)) + 1):
            nodes = np.flatnonzero(lv == depth)
            steps.append((nodes, parent[nodes], parent[nodes] < nodes))
        return _TreePlan(tuple(steps))

    def apply(self, x: Tensor) -> Tensor:
        """Absolute probabilities from the tree-softmax outputs ``x`` (..., classes), float32."""
        final = x.clone()
        for nodes, parents, from_final in self.steps:
            idx = torch.from_numpy(nodes).to(x.device)
            par = torch.from_numpy(parents).to(x.device)
            if from_final.all():
                src = final[..., par]
            else:
                src = torch.where(torch.from_numpy(from_final).to(x.device), final[..., par], x[..., par])
            final[..., idx] = x[..., idx] * src
        return final


@dataclass(frozen=True)
class DetectionHead(_DefaultNms):
    """A ``[detection]`` layer (YOLOv1); input is the flat output of a ``[connected]``."""

    classes: int
    coords: int
    num: int
    side: int
    sqrt: bool = False

    @classmethod
    def from_attrs(cls, attrs: "DetectionAttrs") -> "DetectionHead":
        return cls(attrs.classes, attrs.coords, attrs.num, attrs.side, attrs.sqrt)


Head = Union[YoloHead, RegionHead, DetectionHead]


def head_classes(head: Head) -> int:
    """Number of classes a head reports (``len(map)`` for a mapped tree [region])."""
    return head.out_classes if isinstance(head, RegionHead) else head.classes


def _check_nms_kind(kind: str) -> None:
    if kind not in NMS_KINDS:
        raise ValueError(f"nms kind must be one of {NMS_KINDS}, got {kind!r}")


def nms_params(heads: Sequence[Head]) -> tuple[str, float]:
    """The (kind, beta) ``test_detector`` uses: those of the **last** yolo/Gaussian/region head.

    A YOLOv1 net has no such layer; darknet then uses the last layer's (default) settings.
    """
    for head in reversed(heads):
        if isinstance(head, (YoloHead, RegionHead)):
            return head.nms_kind, head.beta_nms
    return "default", 0.6


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """Darknet's ``detection`` array for one image, as tensors (M candidates).

    ``boxes``: (M, 4) relative centre x, y, w, h (get_network_boxes with relative=1, after
    correct_yolo_boxes); ``objectness``: (M,); ``probs``: (M, classes), zeroed unless > thresh
    (a tree [region] head's one node prob is gated by objectness instead, as in darknet)
    (and after :func:`nms`, zeroed where suppressed); ``head_index``: (M,) index of the head in
    the list given to :func:`decode`. Rows are in darknet's emission order: head, then cell
    (row-major), then anchor.
    """

    boxes: Tensor
    objectness: Tensor
    probs: Tensor
    head_index: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, index: Tensor) -> "Detections":
        """Rows picked by a bool mask or an index tensor, keeping their order."""
        return Detections(self.boxes[index], self.objectness[index], self.probs[index], self.head_index[index])

    def with_probs(self, probs: Tensor) -> "Detections":
        return Detections(self.boxes, self.objectness, probs, self.head_index)


@dataclass(frozen=True)
class Detection:
    """One reported (box, class) pair in original-image pixels.

    ``box`` is (x1, y1, x2, y2) as floats, ``x1 = (x - w/2) * img_w`` etc., every side clamped
    into ``[0, img_w - 1]`` / ``[0, img_h - 1]`` (darknet's ``draw_detections_v3`` clamps only
    left/top at 0 and right/bottom at the far edge; the two differ only for boxes lying wholly
    outside the image, see :func:`_pixel_box`). :attr:`box_int` gives darknet's
    integer corners (C ``int`` truncation then the same clamps) and :attr:`ltwh` the rounded
    left/top/width/height that ``-ext_output`` prints.
    """

    class_id: int
    name: str
    prob: float
    box: tuple[float, float, float, float]
    objectness: float
    rel_box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0), compare=False)

    @property
    def box_int(self) -> tuple[int, int, int, int]:
        """Integer corners as darknet draws them (truncate toward zero, then clamp)."""
        return tuple(int(v) for v in self.box)  # type: ignore[return-value]

    def ltwh(self, img_w: int, img_h: int) -> tuple[int, int, int, int]:
        """``-ext_output`` left_x, top_y, width, height: C ``round`` of the relative values × size."""
        x, y, w, h = self.rel_box
        vals = ((x - w / 2) * img_w, (y - h / 2) * img_h, w * img_w, h * img_h)
        return tuple(int(np.floor(abs(v) + 0.5) * np.sign(v)) for v in vals)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# decoding helpers
# --------------------------------------------------------------------------------------------


def _wide(t: Tensor) -> Tensor:
    """float64 where the device supports it (C's double intermediate for exp/pow)."""
    return t if t.device.type == "mps" else t.double()


def _logistic(t: Tensor) -> Tensor:
    """activations.h logistic_activate: 1/(1+exp(-x)) in float32."""
    return 1.0 / (1.0 + torch.exp(-t))


def _grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column index grids, float32, shape (h, w)."""
    rows = torch.arange(h, device=device, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, w).expand(h, w)
    return rows, cols


def _gate_probs(probs: Tensor, thresh: float) -> Tensor:
    """``prob > thresh ? prob : 0`` (NaN becomes 0 as in C)."""
    return torch.where(probs > thresh, probs, torch.zeros_like(probs))


@dataclass(frozen=True)
class _Dense:
    """Every candidate of one head for the whole batch, before gating: (N, M, ...)."""

    boxes: Tensor
    objectness: Tensor
    probs: Tensor
    keep: Tensor  # (N, M) bool: emitted by darknet (obj > thresh for yolo; all for region/v1)
    corrected: bool  # goes through correct_yolo_boxes


def _anchor_tensor(anchors: Sequence[tuple[float, float]], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    a = torch.tensor([list(p) for p in anchors[:n]], dtype=torch.float32, device=device)
    return a[:, 0], a[:, 1]


def _decode_yolo(out: Tensor, head: YoloHead, net_w: int, net_h: int, thresh: float) -> _Dense:
    """get_yolo_detections / get_gaussian_yolo_detections on a (N, n*E, H, W) layer output.

    Records are reordered to (N, H, W, n, E) so the flattened order is darknet's emission order.
    """
    n_img, ch, lh, lw = out.shape
    if ch != head.n * head.entries:
        raise ValueError(
            f"yolo head expects {head.n}x{head.entries}={head.n * head.entries} channels "
            f"(anchors x (box+obj+{head.classes} classes)), got {ch}"
        )
    rec = out.float().reshape(n_img, head.n, head.entries, lh, lw).permute(0, 3, 4, 1, 2)
    rows, cols = _grid(lh, lw, out.device)
    rows, cols = rows[None, :, :, None], cols[None, :, :, None]
    aw, ah = _anchor_tensor(head.masked_anchors, head.n, out.device)
    if head.gaussian:
        tx, ty, tw, th, obj = rec[..., 0], rec[..., 2], rec[..., 4], rec[..., 6], rec[..., 8]
        cls = rec[..., 9:]
    else:
        tx, ty, tw, th, obj = rec[..., 0], rec[..., 1], rec[..., 2], rec[..., 3], rec[..., 4]
        cls = rec[..., 5:]
    x = (cols + tx) / lw
    y = (rows + ty) / lh
    if head.new_coords:
        w = tw * tw * 4 * aw / net_w
        h = th * th * 4 * ah / net_h
    else:
        w = (torch.exp(_wide(tw)) * _wide(aw) / net_w).float()
        h = (torch.exp(_wide(th)) * _wide(ah) / net_h).float()
    if head.gaussian:
        x, y = _shift_yolo_point(x, y, w, h, head.yolo_point)
        probs = _gaussian_probs(rec, obj, cls)
    else:
        probs = obj.unsqueeze(-1) * cls
    boxes = torch.stack((x, y, w, h), dim=-1)
    return _Dense(
        boxes=boxes.reshape(n_img, -1, 4),
        objectness=obj.reshape(n_img, -1),
        probs=_gate_probs(probs, thresh).reshape(n_img, -1, head.classes),
        keep=(obj > thresh).reshape(n_img, -1),
        corrected=True,
    )


def _shift_yolo_point(x: Tensor, y: Tensor, w: Tensor, h: Tensor, point: str) -> tuple[Tensor, Tensor]:
    """get_gaussian_yolo_box: left_top / right_bottom anchors the box at a corner."""
    if point == "left_top":
        return x + w / 2, y + h / 2
    if point == "right_bottom":
        return x - w / 2, y - h / 2
    return x, y


def _gaussian_probs(rec: Tensor, obj: Tensor, cls: Tensor) -> Tensor:
    """obj·cls·(1 − mean of the four sigmas); the mean is a float, the product is done in double."""
    uc = (rec[..., 1] + rec[..., 3] + rec[..., 5] + rec[..., 7]) / 4.0
    scale = 1.0 - _wide(uc)
    return (_wide(obj.unsqueeze(-1) * cls) * scale.unsqueeze(-1)).float()


def _decode_region(out: Tensor, head: RegionHead, thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """custom_get_region_detections → get_region_boxes(l, 1, 1, thresh, ..., map) on the records.

    ``out`` has shape (N, n*size, lh, lw) but its memory holds forward_region_layer's flattened
    records ``[lh*lw][n][size]`` (size = coords+1+classes), so it is read as
    ``out.reshape(N, lh*lw, n, size)``. x, y are still raw (logistic applied here, in
    get_region_box); objectness already went through the logistic; every record becomes a
    detection with objectness forced to 1. Returns boxes, objectness, probs (already gated), each
    (N, M, ...). Plain heads: ``prob = obj·cls`` kept if ``> thresh``; tree heads: see
    :func:`_region_tree_probs`.
    """
    if out.dim() != 4:
        raise ValueError(f"region head output must be (N, n*size, h, w) to know the grid, got {tuple(out.shape)}")
    n_img, _, lh, lw = out.shape
    size = head.coords + 1 + head.classes
    if out[0].numel() != lh * lw * head.num * size:
        raise ValueError(f"region head expects {lh}*{lw}*{head.num}*{size} values per image, got {out[0].numel()}")
    rec = out.float().reshape(n_img, lh, lw, head.num, size)
    rows, cols = _grid(lh, lw, out.device)
    rows, cols = rows[None, :, :, None], cols[None, :, :, None]
    aw, ah = _anchor_tensor(head.anchors, head.num, out.device)
    x = (cols + _logistic(rec[..., 0])) / lw
    y = (rows + _logistic(rec[..., 1])) / lh
    w = (torch.exp(_wide(rec[..., 2])) * _wide(aw) / lw).float()
    h = (torch.exp(_wide(rec[..., 3])) * _wide(ah) / lh).float()
    scale = rec[..., 4]
    if head.classfix == -1:
        scale = torch.where(scale < 0.5, torch.zeros_like(scale), scale)
    cls = rec[..., 5 : 5 + head.classes]
    if head.tree is not None:
        probs = _region_tree_probs(cls, scale, head, thresh)
    else:
        probs = _gate_probs(scale.unsqueeze(-1) * cls, thresh)
    boxes = torch.stack((x, y, w, h), dim=-1).reshape(n_img, -1, 4)
    return boxes, torch.ones_like(scale).reshape(n_img, -1), probs.reshape(n_img, -1, head.out_classes)


def _region_tree_probs(cls: Tensor, scale: Tensor, head: RegionHead, thresh: float) -> Tensor:
    """The ``l.softmax_tree`` branch of ``region_layer.c get_region_boxes`` (what
    ``darknet detector test`` runs for YOLO9000; ``get_region_detections`` and its
    ``hierarchy_top_prediction`` are dead code in AlexeyAB's fork, and ``hier_thresh`` is never
    passed down).

    1. ``hierarchy_predictions(..., only_leaves=0)``: every node becomes the product of the
       conditional probabilities on its path (:class:`_TreePlan`).
    2. Without a map: scanning nodes from the **last index down**, the first one whose absolute
       probability is ``> .5`` (constant :data:`REGION_TREE_THRESH`) is kept, every other node is
       zeroed; the kept node's prob is that absolute probability -- **not** multiplied by the
       objectness, which only gates it (``scale > thresh ? p : 0``; no ``p > thresh`` gate here,
       the print does that). Since at most one child per group can exceed .5, the nodes above
       .5 form one path from a root, and for a tree whose children follow their parents this is
       the deepest node of that path: a node at or below .5 stops the descent.
    3. With a map: class ``j`` gets ``obj·p[map[j]]`` kept if ``> thresh``, for
       ``j < min(len(map), 200)`` (darknet loops to a hard-coded 200 and reads past a shorter
       map; we stop at its end).
    """
    p = head._plan.apply(cls)  # type: ignore[union-attr]
    if head.map is not None:
        limit = min(len(head.map), REGION_MAP_LIMIT)
        idx = torch.tensor(head.map[:limit], dtype=torch.long, device=cls.device)
        mapped = _gate_probs(scale.unsqueeze(-1) * p[..., idx], thresh)
        if limit < len(head.map):
            mapped = torch.cat((mapped, mapped.new_zeros(mapped.shape[:-1] + (len(head.map) - limit,))), dim=-1)
        return mapped
    index = torch.arange(1, head.classes + 1, device=cls.device)
    top = ((p > REGION_TREE_THRESH).long() * index).amax(dim=-1, keepdim=True) - 1  # -1: none above .5
    value = p.gather(-1, top.clamp(min=0))
    value = torch.where((top >= 0) & (scale.unsqueeze(-1) > thresh), value, torch.zeros_like(value))
    return torch.zeros_like(p).scatter_(-1, top.clamp(min=0), value)


def _decode_detection(out: Tensor, head: DetectionHead, thresh: float) -> _Dense:
    """get_detection_detections (YOLOv1) on the flat output.

    Layout: [side² × classes] class probs, [side² × num] confidences, [side² × num × 4] boxes.
    All side²·num records are emitted (objectness = confidence). Boxes are relative here; see
    ``darknet_v1_pixels`` in :func:`decode` for darknet's behaviour of scaling them by the image
    size (and not applying correct_yolo_boxes).
    """
    n_img = out.shape[0]
    flat = out.float().reshape(n_img, -1)
    cells, s = head.side * head.side, head.side
    expected = cells * ((1 + head.coords) * head.num + head.classes)
    if flat.shape[1] != expected:
        raise ValueError(
            f"detection head expects side²·((1+coords)·num+classes) = {expected} values, got {flat.shape[1]}"
        )
    cls = flat[:, : cells * head.classes].reshape(n_img, cells, 1, head.classes)
    conf = flat[:, cells * head.classes : cells * (head.classes + head.num)].reshape(n_img, cells, head.num)
    start = cells * (head.classes + head.num)
    box = flat[:, start : start + cells * head.num * 4].reshape(n_img, cells, head.num, 4)
    idx = torch.arange(cells, device=out.device)
    rows = (idx // s).float().view(1, cells, 1)
    cols = (idx % s).float().view(1, cells, 1)
    x = (box[..., 0] + cols) / s
    y = (box[..., 1] + rows) / s
    power = 2.0 if head.sqrt else 1.0
    w = torch.pow(_wide(box[..., 2]), power).float()
    h = torch.pow(_wide(box[..., 3]), power).float()
    probs = conf.unsqueeze(-1) * cls
    return _Dense(
        boxes=torch.stack((x, y, w, h), dim=-1).reshape(n_img, -1, 4),
        objectness=conf.reshape(n_img, -1),
        probs=_gate_probs(probs, thresh).reshape(n_img, -1, head.classes),
        keep=torch.ones(n_img, cells * head.num, dtype=torch.bool, device=out.device),
        corrected=False,
    )


def _dense_for_head(out: Tensor, head: Head, net_w: int, net_h: int, thresh: float) -> _Dense:
    if isinstance(head, YoloHead):
        if out.dim() != 4:
            raise ValueError(f"yolo head output must be (N, C, H, W), got {tuple(out.shape)}")
        return _decode_yolo(out, head, net_w, net_h, thresh)
    if isinstance(head, RegionHead):
        boxes, obj, probs = _decode_region(out, head, thresh)
        keep = torch.ones(obj.shape, dtype=torch.bool, device=out.device)
        return _Dense(boxes, obj, probs, keep, corrected=True)
    if isinstance(head, DetectionHead):
        return _decode_detection(out, head, thresh)
    raise TypeError(f"unknown head description {type(head).__name__}")


# --------------------------------------------------------------------------------------------
# box correction and decode
# --------------------------------------------------------------------------------------------


def correct_boxes(boxes: Tensor, img_w: int, img_h: int, net_w: int, net_h: int, letterbox: bool) -> Tensor:
    """yolo_layer.c ``correct_yolo_boxes`` with relative=1: undo the letterbox.

    ``new_w/new_h`` come from :func:`darkcfg.image.letterbox_size`, as in preprocessing; the offset subtracted is the
    *fractional* ``(net-new)/2/net`` (done in double, as in C), while the image was pasted at the
    integer offset -- darknet's half-pixel mismatch for odd differences is reproduced on purpose.
    Without letterbox the boxes are returned unchanged (darknet divides by exactly 1).
    """
    if not letterbox:
        return boxes
    new_w, new_h = letterbox_size(img_w, img_h, net_w, net_h)
    ratio_w = np.float32(new_w) / np.float32(net_w)
    ratio_h = np.float32(new_h) / np.float32(net_h)
    off_x = float(np.float32(net_w - new_w)) / 2.0 / net_w
    off_y = float(np.float32(net_h - new_h)) / 2.0 / net_h
    x = ((_wide(boxes[..., 0]) - off_x) / float(ratio_w)).float()
    y = ((_wide(boxes[..., 1]) - off_y) / float(ratio_h)).float()
    w = boxes[..., 2] * float(np.float32(1.0) / ratio_w)
    h = boxes[..., 3] * float(np.float32(1.0) / ratio_h)
    return torch.stack((x, y, w, h), dim=-1)


def decode(
    outputs: Sequence[Tensor],
    heads: Sequence[Head],
    net_w: int,
    net_h: int,
    image_sizes: Sequence[tuple[int, int]],
    thresh: float = 0.25,
    hier_thresh: float = 0.5,
    letterbox: bool = False,
    darknet_v1_pixels: bool = False,
) -> list[Detections]:
    """``get_network_boxes(..., relative=1, letter)`` for a batch: one :class:`Detections` per image.

    Args:
        outputs: one tensor per head, batched, exactly as darknet writes ``l.output``:
            yolo (N, n·(5+C), H, W) with logistic and scale_x_y already applied (nothing but the
            affine when new_coords); Gaussian_yolo (N, n·(9+C), H, W) likewise; region
            (N, n·size, H, W) whose memory holds the flattened [H·W][n][size] records; detection
            (N, K) flat (any shape that flattens to N×K).
        heads: matching head descriptions, in network layer order.
        image_sizes: (w, h) of each original image, for correct_yolo_boxes.
        thresh: objectness gate for yolo candidates and the per-class probability cut.
        hier_thresh: accepted for signature parity with darknet and ignored, as in darknet:
            ``custom_get_region_detections`` never passes it on; hierarchical (tree) region heads
            descend with the fixed :data:`REGION_TREE_THRESH` (see :func:`_region_tree_probs`).
        letterbox: whether the input was letterboxed (``-letter_box`` / ``[net] letter_box``).
        darknet_v1_pixels: reproduce darknet's YOLOv1 behaviour of multiplying [detection] boxes
            by the image size while the caller treats them as relative (a darknet bug); off by
            default, giving proper relative boxes.
    """
    del hier_thresh  # unused by darknet's region decoding too (see _region_tree_probs)
    if len(outputs) != len(heads):
        raise ValueError(f"{len(outputs)} outputs for {len(heads)} heads")
    if not heads:
        raise ValueError("decode needs at least one detection head")
    classes = {head_classes(h) for h in heads}
    if len(classes) != 1:
        raise ValueError(f"all detection heads must have the same number of classes, got {sorted(classes)}")
    n_img = outputs[0].shape[0]
    if len(image_sizes) != n_img:
        raise ValueError(f"{len(image_sizes)} image sizes for a batch of {n_img}")
    dense = [_dense_for_head(o, h, net_w, net_h, thresh) for o, h in zip(outputs, heads)]
    return [_gather_image(dense, b, image_sizes[b], net_w, net_h, letterbox, darknet_v1_pixels) for b in range(n_img)]


def _gather_image(
    dense: Sequence[_Dense],
    b: int,
    size: tuple[int, int],
    net_w: int,
    net_h: int,
    letterbox: bool,
    v1_pixels: bool,
) -> Detections:
    """Emitted candidates of image ``b`` from every head, concatenated in head order."""
    img_w, img_h = size
    parts_b, parts_o, parts_p, parts_h = [], [], [], []
    for i, d in enumerate(dense):
        keep = d.keep[b]
        boxes = d.boxes[b][keep]
        if d.corrected:
            boxes = correct_boxes(boxes, img_w, img_h, net_w, net_h, letterbox)
        elif v1_pixels:
            boxes = boxes * boxes.new_tensor([img_w, img_h, img_w, img_h])
        parts_b.append(boxes)
        parts_o.append(d.objectness[b][keep])
        parts_p.append(d.probs[b][keep])
        parts_h.append(torch.full((boxes.shape[0],), i, dtype=torch.int64, device=boxes.device))
    return Detections(torch.cat(parts_b), torch.cat(parts_o), torch.cat(parts_p), torch.cat(parts_h))


# --------------------------------------------------------------------------------------------
# NMS (box.c)
# --------------------------------------------------------------------------------------------


def _corners(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y, w, h = boxes.unbind(-1)
    return x - w / 2, y - h / 2, x + w / 2, y + h / 2


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """box.c ``box_iou`` of ``a`` and ``b`` (..., 4), broadcast: the one IoU formula.

    Intersection is 0 when either overlap is negative; IoU is 0 when intersection or union is 0.
    Symmetric bit for bit (min/max and the float sum of the areas commute), so a pair's value
    does not depend on which box is listed first.
    """
    al, at, ar, ab = _corners(a)
    bl, bt, br, bb = _corners(b)
    ow = torch.minimum(ar, br) - torch.maximum(al, bl)
    oh = torch.minimum(ab, bb) - torch.maximum(at, bt)
    inter = torch.where((ow < 0) | (oh < 0), torch.zeros_like(ow), ow * oh)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    ok = (inter != 0) & (union != 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def _diou(a: Tensor, b: Tensor, beta: float) -> Tensor:
    """box.c ``box_diou`` / ``box_diounms`` of ``a`` and ``b`` (..., 4), broadcast (symmetric too)."""
    iou = _iou(a, b)
    al, at, ar, ab = _corners(a)
    bl, bt, br, bb = _corners(b)
    cw = torch.maximum(ar, br) - torch.minimum(al, bl)
    ch = torch.maximum(ab, bb) - torch.minimum(at, bt)
    c2 = cw * cw + ch * ch
    dx = a[..., 0] - b[..., 0]
    dy = a[..., 1] - b[..., 1]
    d2 = dx * dx + dy * dy
    safe_c2 = torch.where(c2 == 0, torch.ones_like(c2), c2)
    term = torch.pow(_wide(d2 / safe_c2), beta).float()
    return torch.where(c2 == 0, iou, iou - term)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """box.c ``box_iou`` for every pair: (A, 4) × (B, 4) → (A, B), float32."""
    return _iou(a[:, None, :], b[None, :, :])


def pairwise_diou(a: Tensor, b: Tensor, beta: float) -> Tensor:
    """box.c ``box_diou`` / ``box_diounms``: IoU − (d²/c²)^beta for every pair.

    d = centre distance, c = diagonal of the smallest enclosing box (``box_c``); when c² is 0
    the plain IoU is returned. The power is taken in double like C's ``pow``.
    """
    return _diou(a[:, None, :], b[None, :, :], beta)


def _metric(a: Tensor, b: Tensor, kind: str, beta: float) -> Tensor:
    """The score compared with the NMS threshold, per nms_kind (diounms_sort / do_nms_sort)."""
    if kind in ("default", "cornersnms"):
        return _iou(a, b)
    return _diou(a, b, GREEDY_DIOU_EXPONENT if kind == "greedynms" else beta)


def _suppression_metric(boxes: Tensor, kind: str, beta: float) -> Tensor:
    """The metric for every pair of ``boxes`` (M, M)."""
    return _metric(boxes[:, None, :], boxes[None, :, :], kind, beta)


#: Candidate pairs generated per step of the pair search (bounds its temporary memory).
_PAIR_CHUNK = 1 << 20
_LEVELS_PER_OCTAVE = 2  # box size levels: floor(log2(size) * this)
_LEVEL_RANGE = 120  # levels are clamped to +-this
_CELL_RANGE = 1 << 30  # grid cell indices are clamped to [0, this] (monotone: neighbours stay neighbours)


#: Up to this many boxes the pairs come from one metric matrix (4 MiB of booleans at most): the
#: size-bucket search below costs ~20 ms of fixed overhead, 3x a Yolo-Fastest forward.
DENSE_PAIRS_MAX = 2048


def _overlapping_pairs(boxes: Tensor, nms_thresh: float, kind: str, beta: float) -> tuple[Tensor, Tensor]:
    """Every unordered pair (i, j) of ``boxes`` (CPU) whose metric exceeds ``nms_thresh`` >= 0.

    Only pairs that overlap with positive area can exceed a non-negative threshold (IoU > 0,
    and DIoU <= IoU), and IoU > t also bounds the ratio of their sizes: ``w_a > t*w_b`` and
    ``h_a > t*h_b`` both ways (the intersection is at most min(w)*min(h) and must exceed t times
    either area).  So boxes are grouped by size level ``floor(2*log2(max(w, h)))``; two levels are
    joined only when their sizes can be within 1/t of each other, on a grid whose cells are at
    least as large as every box of both levels, where overlapping boxes have their centres in the
    same or adjacent cells.  The metric is then computed on those candidate pairs only, with the
    same arithmetic as the dense matrix.  Cost grows with the number of nearby similar-size
    pairs instead of the square of the candidates.
    """
    left, top, right, bottom = _corners(boxes)
    finite = torch.isfinite(boxes).all(dim=1)
    usable = torch.nonzero(finite & (right > left) & (bottom > top)).flatten()  # others never overlap
    if usable.numel() < 2:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    if usable.numel() <= DENSE_PAIRS_MAX:  # few boxes: one matrix beats the search's fixed cost
        over = torch.triu(_suppression_metric(boxes[usable], kind, beta) > nms_thresh, diagonal=1)
        first, second = torch.nonzero(over, as_tuple=True)
        return usable[first], usable[second]
    flat = boxes[usable]
    wide = flat.double()
    t = max(float(nms_thresh), 0.0)
    # IoU > t needs an overlap of more than t*max(w) (see _may_exceed): centres closer than (1-t)*max(w)
    reach = max(1.0 - t, 1e-3)
    size = torch.maximum(wide[:, 2], wide[:, 3])
    level = torch.floor(torch.log2(size) * _LEVELS_PER_OCTAVE).clamp_(-_LEVEL_RANGE, _LEVEL_RANGE).long()
    levels = torch.unique(level).tolist()
    # sizes less than a factor r = 1/t apart lie at most floor(log2(r)) + 1 levels apart (r widened for rounding)
    max_gap = 4 * _LEVEL_RANGE if t <= 0 else int(np.floor(_LEVELS_PER_OCTAVE * np.log2(1.0001 / min(t, 1.0)))) + 1
    members = {lv: torch.nonzero(level == lv).flatten() for lv in levels}
    firsts: list[Tensor] = []
    seconds: list[Tensor] = []
    for i, lo_level in enumerate(levels):
        for hi_level in levels[i:]:
            if hi_level - lo_level > max_gap:
                break
            p_idx, q_idx = members[lo_level], members[hi_level]
            cell = 1.01 * reach * float(torch.maximum(size[p_idx].max(), size[q_idx].max()))
            for p, q in _grid_join(wide, p_idx, q_idx, cell, same=lo_level == hi_level):
                bp, bq = flat[p], flat[q]
                near = _may_exceed(bp[:, 0] - bq[:, 0], bp[:, 2], bq[:, 2], t) & _may_exceed(
                    bp[:, 1] - bq[:, 1], bp[:, 3], bq[:, 3], t)
                gp, gq = usable[p[near]], usable[q[near]]
                over = _metric(boxes[gp], boxes[gq], kind, beta) > nms_thresh
                firsts.append(gp[over])
                seconds.append(gq[over])
    if not firsts:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    return torch.cat(firsts), torch.cat(seconds)


def _may_exceed(d: Tensor, wa: Tensor, wb: Tensor, t: float) -> Tensor:
    """Necessary for IoU > t along one axis (centre distance ``d``, sides ``wa``, ``wb``): the overlap
    ``(wa + wb)/2 - |d|`` exceeds ``t*max(wa, wb)`` (the intersection, at most the overlap times the
    smaller other side, must exceed t times either area) and ``min/max > t``.  Tested with a 0.1 %
    margin so float rounding never drops a pair."""
    big = torch.maximum(wa, wb)
    return ((d.abs() < ((wa + wb) * 0.5 - t * big) * 1.001 + big * 1e-4)
            & (torch.minimum(wa, wb) >= t * big * 0.999))


def _grid_join(boxes: Tensor, p_idx: Tensor, q_idx: Tensor, cell: float, same: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """Pairs (p, q) of rows whose centres lie in the same or adjacent ``cell``-sized grid cells.

    Yields them in chunks of about :data:`_PAIR_CHUNK`; with ``same`` (a set joined with itself)
    each unordered pair once and no self pairs.
    """
    def cells(idx: Tensor) -> tuple[Tensor, Tensor]:
        c = torch.floor(boxes[idx, :2] / cell)
        return c[:, 0], c[:, 1]

    qx, qy = cells(q_idx)
    px, py = cells(p_idx)
    x0 = float(torch.minimum(qx.min(), px.min())) - 1
    y0 = float(torch.minimum(qy.min(), py.min())) - 1
    span = float(_CELL_RANGE)

    def key(cx: Tensor, cy: Tensor) -> Tensor:
        ix = (cx - x0).clamp_(0, span).long()
        iy = (cy - y0).clamp_(0, span).long()
        return ix * (4 * _CELL_RANGE) + iy

    q_keys, q_order = torch.sort(key(qx, qy))
    q_sorted = q_idx[q_order]
    starts, stops, rows = [], [], []
    for dx in (-1.0, 0.0, 1.0):
        for dy in (-1.0, 0.0, 1.0):
            k = key(px + dx, py + dy)
            starts.append(torch.searchsorted(q_keys, k, side="left"))
            stops.append(torch.searchsorted(q_keys, k, side="right"))
            rows.append(torch.arange(p_idx.numel()))
    start, stop, row = torch.cat(starts), torch.cat(stops), torch.cat(rows)
    counts = stop - start
    hit = counts > 0
    start, counts, row = start[hit], counts[hit], row[hit]
    cum = torch.cumsum(counts, 0)
    first = 0
    while first < counts.numel():
        base = int(cum[first - 1]) if first else 0
        last = max(first + 1, int(torch.searchsorted(cum, base + _PAIR_CHUNK, side="right")))
        n = counts[first:last]
        which = torch.repeat_interleave(torch.arange(first, last), n)
        offsets = torch.arange(which.numel()) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        p = p_idx[row[which]]
        q = q_sorted[start[which] + offsets]
        if same:
            keep = p < q
            p, q = p[keep], q[keep]
        yield p, q
        first = last


def _greedy_rounds(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Survivors of greedy suppression over ``n`` ranked nodes with edges ``src`` → ``dst``.

    An edge says: src (ranked before dst) suppresses dst if src survives.  Equal to walking the
    ranked list and letting each survivor suppress its later neighbours, but done in rounds of
    vector operations: a node none of whose live predecessors remains undecided is kept, and
    whatever a newly kept node points at is suppressed.  The best undecided node is settled in
    every round, so this terminates; chains of overlapping boxes are short in practice.
    """
    state = torch.zeros(n, dtype=torch.int8)  # 0 undecided, 1 kept, 2 suppressed
    while src.numel():
        blocked = torch.zeros(n, dtype=torch.bool)
        blocked[dst] = True
        newly = (state == 0) & ~blocked
        state[newly] = 1
        state[dst[newly[src]]] = 2
        live = (state[src] == 0) & (state[dst] == 0)
        src, dst = src[live], dst[live]
    return state != 2


def _greedy_keep(over: np.ndarray) -> np.ndarray:
    """Sequential greedy pass over a sorted candidate list (the dense reference for negative thresholds).

    ``over[i, j]``: candidate i would suppress j. Only survivors suppress (darknet skips
    ``prob == 0``, and suppression zeroes the prob), so the loop visits kept boxes only and
    each visit is one vector operation.
    """
    m = over.shape[0]
    alive = np.ones(m, dtype=bool)
    i = 0
    while i < m:
        alive[i + 1 :] &= ~over[i, i + 1 :]
        later = np.flatnonzero(alive[i + 1 :])
        if later.size == 0:
            break
        i = i + 1 + int(later[0])
    return alive


def _nms_dense(dets: Detections, probs: Tensor, nms_thresh: float, kind: str, beta: float) -> None:
    """Per class, the full metric matrix of its candidates and a sequential greedy pass (in place).

    Needed when the threshold is negative, where even disjoint boxes suppress each other.
    """
    busy = torch.nonzero((probs != 0).sum(dim=0) >= 2).flatten().tolist()  # others have nothing to do
    for k in busy:
        cand = torch.nonzero(probs[:, k] != 0).flatten()
        order = cand[torch.sort(probs[cand, k], descending=True, stable=True).indices]
        over = (_suppression_metric(dets.boxes[order], kind, beta) > nms_thresh).cpu().numpy()
        alive = torch.from_numpy(_greedy_keep(over)).to(order.device)
        probs[order[~alive], k] = 0


def _nms_sparse(dets: Detections, probs: Tensor, nms_thresh: float, kind: str, beta: float) -> None:
    """Overlapping pairs found once for all classes, then greedy rounds per class (in place, CPU)."""
    first, second = _overlapping_pairs(dets.boxes, nms_thresh, kind, beta)
    if first.numel() == 0:
        return
    nonzero = probs != 0
    busy = torch.nonzero(nonzero.sum(dim=0) >= 2).flatten().tolist()
    rank = torch.empty(probs.shape[0], dtype=torch.int64)
    for k in busy:
        cand = torch.nonzero(nonzero[:, k]).flatten()
        order = cand[torch.sort(probs[cand, k], descending=True, stable=True).indices]
        rank[order] = torch.arange(order.numel())
        both = nonzero[first, k] & nonzero[second, k]
        ra, rb = rank[first[both]], rank[second[both]]
        alive = _greedy_rounds(order.numel(), torch.minimum(ra, rb), torch.maximum(ra, rb))
        probs[order[~alive], k] = 0


def nms(dets: Detections, nms_thresh: float = 0.45, kind: str = "default", beta: float = 0.6) -> Detections:
    """``do_nms_sort`` (kind default) / ``diounms_sort`` (greedynms, diounms, cornersnms).

    Detections with objectness 0 are dropped (darknet moves them past the end; their probs are
    all 0 anyway). For each class k: candidates with prob[k] ≠ 0 are sorted by prob descending
    and each surviving one zeroes prob[k] of every later one whose metric exceeds ``nms_thresh``:
    IoU (default, cornersnms), DIoU with exponent 0.6 (greedynms), DIoU with ``beta``
    (diounms). Other classes of a suppressed detection are untouched.

    The box pairs that exceed the threshold are found once for all classes by a sort-and-sweep
    over left edges, and each class's greedy pass runs as rounds of vector operations on those
    pairs (:func:`_greedy_rounds`); the result is the sequential pass's.  A negative threshold
    (where disjoint boxes suppress too) uses the dense per-class matrices instead.

    Ordering note: darknet sorts with libc ``qsort`` (unstable, starting from the previous
    class's order); we use a stable sort on emission order, so only exact prob ties may resolve
    differently. The returned rows stay in emission order (darknet's array ends up in the last
    class's sort order, which carries no meaning).
    """
    _check_nms_kind(kind)
    dets = dets.select(dets.objectness != 0)
    if len(dets) < 2:
        return dets
    device = dets.probs.device
    cpu = dets if device.type == "cpu" else Detections(dets.boxes.cpu(), dets.objectness.cpu(), dets.probs.cpu(),
                                                        dets.head_index.cpu())
    probs = cpu.probs.clone()
    if 0 <= nms_thresh and len(cpu) <= SMALL_NMS_MAX and bool(torch.isfinite(probs).all()):
        _nms_small(cpu, probs, nms_thresh, kind, beta)
    elif nms_thresh >= 0:
        _nms_sparse(cpu, probs, nms_thresh, kind, beta)
    else:
        _nms_dense(cpu, probs, nms_thresh, kind, beta)
    return dets.with_probs(probs.to(device))


#: Up to this many detections :func:`nms` takes :func:`_nms_small`.
SMALL_NMS_MAX = 256


def _nms_small(dets: Detections, probs: Tensor, nms_thresh: float, kind: str, beta: float) -> None:
    """Few detections (what a detector gives at a usual threshold): one metric matrix for all of
    them, then each class's sequential greedy pass in numpy (in place).  The same suppressions as
    :func:`_nms_sparse` (the metric of a pair does not depend on the others; a stable sort by
    descending prob orders ties by emission either way): Yolo-Fastest's 15-38 boxes an image took
    1.5-3.1 ms there, in tensor ops per class and per round."""
    over = (_suppression_metric(dets.boxes, kind, beta) > nms_thresh).numpy()
    p = probs.detach().numpy()  # (a view: the zeros below land in ``probs``)
    for k in np.flatnonzero((p != 0).sum(axis=0) >= 2).tolist():
        cand = np.flatnonzero(p[:, k] != 0)
        order = cand[np.argsort(-p[cand, k], kind="stable")]
        alive = _greedy_keep(over[np.ix_(order, order)])
        p[order[~alive], k] = 0


# --------------------------------------------------------------------------------------------
# final list (draw_detections_v3 text output)
# --------------------------------------------------------------------------------------------


def _pixel_boxes(rel: np.ndarray, img_w: int, img_h: int) -> np.ndarray:
    """Corners in pixels (M, 4), clamped to the image, in float64 (C's double).

    draw_detections_v3 clamps only left/top at 0 and right/bottom at w-1/h-1; for any box that
    overlaps the image this is the same, and for a box lying wholly outside it we also clamp the
    other sides so that ``x1 <= x2`` and ``y1 <= y2`` always hold.
    """
    x, y, w, h = rel[:, 0], rel[:, 1], rel[:, 2], rel[:, 3]
    xs = np.clip(np.stack(((x - w / 2.0) * img_w, (x + w / 2.0) * img_w)), 0.0, float(img_w - 1))
    ys = np.clip(np.stack(((y - h / 2.0) * img_h, (y + h / 2.0) * img_h)), 0.0, float(img_h - 1))
    return np.stack((xs[0], ys[0], xs[1], ys[1]), axis=1)


def to_pixel_list(
    dets: Detections,
    image_size: tuple[int, int],
    names: Optional[Sequence[str]] = None,
    thresh: float = 0.25,
    order: str = "left",
    max_det: Optional[int] = None,
) -> list[Detection]:
    """The detections ``darknet detector test`` reports for one image (after :func:`nms`).

    One :class:`Detection` per (box, class) pair with prob > thresh -- darknet prints the best
    class and then every further class above thresh on its own line, so each such pair is an
    entry. ``order="left"`` sorts boxes by left edge ``x − w/2`` (compare_by_lefts, the text
    output order; stable), with the best class of a box first; ``order="prob"`` sorts entries by
    prob descending (the order of the conformance JSONs). ``names`` default to the class index.
    The best class is the first with the strictly highest prob; names starting with ``dont_show``
    are skipped (get_actual_detections).  ``max_det`` keeps only the ``max_det`` entries of highest
    prob (ties: earlier box first), then orders them as above; Darknet has no such limit.
    """
    if order not in ("left", "prob"):
        raise ValueError(f"order must be 'left' or 'prob', got {order!r}")
    if max_det is not None and max_det < 0:
        raise ValueError(f"max_det must be >= 0, got {max_det}")
    n_cls = int(dets.probs.shape[1])
    names = [str(k) for k in range(n_cls)] if names is None else list(names)
    if len(names) < n_cls:
        raise ValueError(f"{len(names)} class names for {n_cls} classes")
    img_w, img_h = image_size
    boxes = dets.boxes.detach().cpu().double().numpy().reshape(-1, 4)
    probs = dets.probs.detach().cpu().numpy()
    objs = dets.objectness.detach().cpu().numpy()
    shown = probs > thresh
    hidden = np.array([name.startswith("dont_show") for name in names[:n_cls]], dtype=bool)
    shown[:, hidden] = False
    rows, cls = np.nonzero(shown)  # row-major: per box, classes in index order
    if rows.size == 0:
        return []
    # the best class of a box: first with the strictly highest prob among its shown classes
    masked = np.where(shown, probs, -np.inf)
    best = np.argmax(masked, axis=1)
    p = probs[rows, cls]
    if max_det is not None and rows.size > max_det:
        top = np.argsort(-p, kind="stable")[:max_det]
        top.sort()  # back to (box, class) order
        rows, cls, p = rows[top], cls[top], p[top]
    if order == "left":
        lefts = boxes[:, 0] - boxes[:, 2] / 2
        box_rank = np.empty(len(boxes), dtype=np.int64)
        box_rank[np.argsort(lefts, kind="stable")] = np.arange(len(boxes))
        entry_order = np.lexsort((cls, cls != best[rows], box_rank[rows]))
    else:
        first = np.lexsort((cls, cls != best[rows], rows))  # darknet's printing order, then stable by prob
        entry_order = first[np.argsort(-p[first], kind="stable")]
    pix = [tuple(b) for b in _pixel_boxes(boxes, img_w, img_h).tolist()]
    rel = [tuple(b) for b in boxes.tolist()]
    obj_list = objs.astype(np.float64).tolist()
    rows, cls, p = rows[entry_order].tolist(), cls[entry_order].tolist(), p[entry_order].astype(np.float64).tolist()
    return [Detection(k, names[k], pk, pix[i], obj_list[i], rel[i])  # type: ignore[arg-type]
            for i, k, pk in zip(rows, cls, p)]
