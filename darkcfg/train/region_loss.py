"""Darknet's ``[region]`` (YOLOv2) training forward: ``forward_region_layer``'s delta and cost.

Unlike [yolo], this delta already is the gradient w.r.t. the layer INPUT: the logistic derivative
is applied to x, y and objectness, w and h are raw, and the class delta (1[c=id] - p) is the
softmax cross-entropy gradient w.r.t. the logits.  It is computed on the flattened records
``[h*w][n][coords+1+classes]`` and returned in the input layout, as the CPU forward un-flattens it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..errors import DarkcfgError
from ..graph import LayerSpec
from .boxes import Box, box_iou
from .yolo_loss import iou_grid


@dataclass(frozen=True)
class RegionLossConfig:
    classes: int
    coords: int
    num: int
    anchors: Tuple[Tuple[float, float], ...]  # grid cells
    thresh: float
    object_scale: float
    noobject_scale: float
    class_scale: float
    coord_scale: float
    rescore: bool
    bias_match: bool
    classfix: int
    focal_loss: bool
    max_boxes: int

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "RegionLossConfig":
        s, a = spec.section, spec.attrs
        if a.tree:
            raise DarkcfgError(f"{spec.where}: training a [region] layer with a softmax tree (tree=) is not "
                               "supported")
        if s.get_str("map"):
            raise DarkcfgError(f"{spec.where}: training a [region] layer with map= is not supported")
        return cls(classes=a.classes, coords=a.coords, num=a.num, anchors=tuple(a.anchors),
                   thresh=s.get_float("thresh", 0.5), object_scale=s.get_float("object_scale", 1.0),
                   noobject_scale=s.get_float("noobject_scale", 1.0), class_scale=s.get_float("class_scale", 1.0),
                   coord_scale=s.get_float("coord_scale", 1.0), rescore=s.get_int("rescore", 0) != 0,
                   bias_match=s.get_int("bias_match", 0) != 0, classfix=s.get_int("classfix", 0),
                   focal_loss=s.get_int("focal_loss", 0) != 0, max_boxes=s.get_int("max", 200))


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


class _Records:
    """One image's records (h, w, n, size) float32: raw x, y, w, h; logistic obj; softmax classes."""

    def __init__(self, rec: np.ndarray, cfg: RegionLossConfig):
        self.rec = rec
        self.delta = np.zeros_like(rec)
        self.cfg = cfg
        self.h, self.w = rec.shape[0], rec.shape[1]

    def pred_box(self, j: int, i: int, a: int) -> Box:
        r = self.rec[j, i, a]
        aw, ah = self.cfg.anchors[a]
        return ((i + _logistic(float(r[0]))) / self.w, (j + _logistic(float(r[1]))) / self.h,
                math.exp(float(r[2])) * aw / self.w, math.exp(float(r[3])) * ah / self.h)

    def delta_box(self, truth: Box, j: int, i: int, a: int, scale: float) -> float:
        """``delta_region_box`` (assigning, with the logistic derivative on x and y)."""
        r, d = self.rec[j, i, a], self.delta[j, i, a]
        aw, ah = self.cfg.anchors[a]
        iou = box_iou(self.pred_box(j, i, a), truth)
        sx, sy = _logistic(float(r[0])), _logistic(float(r[1]))
        tx, ty = truth[0] * self.w - i, truth[1] * self.h - j
        tw = math.log(truth[2] * self.w / aw) if truth[2] > 0 else -math.inf
        th = math.log(truth[3] * self.h / ah) if truth[3] > 0 else -math.inf
        d[0] = scale * (tx - sx) * (1 - sx) * sx
        d[1] = scale * (ty - sy) * (1 - sy) * sy
        d[2] = scale * (tw - float(r[2]))
        d[3] = scale * (th - float(r[3]))
        return iou

    def delta_class(self, j: int, i: int, a: int, class_id: int, scale: float) -> None:
        c = self.cfg
        p = self.rec[j, i, a, 5:5 + c.classes].astype(np.float64)
        onehot = np.zeros(c.classes)
        onehot[class_id] = 1
        d = scale * (onehot - p)
        if c.focal_loss:
            pt = p[class_id] + 0.000000000000001
            d = d * (0.5 * -(1 - pt) * (2 * pt * math.log(pt) + pt - 1))
        self.delta[j, i, a, 5:5 + c.classes] = d


def region_delta(out: np.ndarray, truths: List[np.ndarray], cfg: RegionLossConfig,
                 seen: int) -> Tuple[np.ndarray, float]:
    """``l.delta`` in the input layout (B x n*size x h x w) and ``*(l.cost)``.

    ``out`` is the layer output in Darknet's flattened order (what :class:`RegionOutput` returns);
    ``seen`` is ``*net.seen`` during the step (the anchor prior applies while it is below 12800).
    """
    B, C, H, W = out.shape
    size = cfg.coords + 1 + cfg.classes
    n = cfg.num
    recs = out.reshape(B, H, W, n, size).astype(np.float32, copy=True)
    deltas = np.zeros_like(recs)
    for b in range(B):
        r = _Records(recs[b], cfg)
        tb = truths[b]
        valid = [k for k in range(len(tb)) if 0 <= int(tb[k, 4]) < cfg.classes]
        obj = r.rec[..., 4].astype(np.float64)
        best_iou, best_cls = _cell_best(r, tb[valid] if valid else tb[:0])
        grad = obj * (1 - obj)
        if cfg.classfix == -1:
            r.delta[..., 4] = cfg.noobject_scale * ((best_iou - obj) * grad)
        else:
            r.delta[..., 4] = cfg.noobject_scale * ((0 - obj) * grad)
            hit = best_iou > cfg.thresh
            r.delta[..., 4][hit] = 0
            if cfg.classfix > 0:
                for j, i, a in zip(*np.nonzero(hit)):
                    s = cfg.class_scale * (float(r.rec[j, i, a, 4]) if cfg.classfix == 2 else 1.0)
                    r.delta_class(int(j), int(i), int(a), int(best_cls[j, i, a]), s)
        if seen < 12800:
            aw = np.array([an[0] for an in cfg.anchors], np.float64)
            ah = np.array([an[1] for an in cfg.anchors], np.float64)
            raw = r.rec.astype(np.float64)
            sx, sy = 1 / (1 + np.exp(-raw[..., 0])), 1 / (1 + np.exp(-raw[..., 1]))
            # the prior truth is the anchor centred in the cell: tx = ty = .5, tw = log(1) = 0
            r.delta[..., 0] = 0.01 * (0.5 - sx) * (1 - sx) * sx
            r.delta[..., 1] = 0.01 * (0.5 - sy) * (1 - sy) * sy
            tw = np.log(aw / W * W / aw)[None, None, :]
            th = np.log(ah / H * H / ah)[None, None, :]
            r.delta[..., 2] = 0.01 * (tw - raw[..., 2])
            r.delta[..., 3] = 0.01 * (th - raw[..., 3])
        for k in valid:
            t = tb[k]
            truth: Box = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
            i = min(max(int(np.float32(t[0]) * np.float32(W)), 0), W - 1)  # float32 product, as C
            j = min(max(int(np.float32(t[1]) * np.float32(H)), 0), H - 1)
            shift: Box = (0.0, 0.0, truth[2], truth[3])
            best, best_n = 0.0, 0
            for a in range(n):
                if cfg.bias_match:
                    pw, ph = cfg.anchors[a][0] / W, cfg.anchors[a][1] / H
                else:
                    _, _, pw, ph = r.pred_box(j, i, a)
                iou = box_iou((0.0, 0.0, pw, ph), shift)
                if iou > best:
                    best, best_n = iou, a
            iou = r.delta_box(truth, j, i, best_n, cfg.coord_scale)
            o = float(r.rec[j, i, best_n, 4])
            target = iou if cfg.rescore else 1.0
            r.delta[j, i, best_n, 4] = cfg.object_scale * (target - o) * (o * (1 - o))
            r.delta_class(j, i, best_n, int(t[4]), cfg.class_scale)
        deltas[b] = r.delta
    cost = float(np.square(deltas.astype(np.float64)).sum())
    unflat = deltas.reshape(B, H * W, n * size).transpose(0, 2, 1).reshape(B, n * size, H, W)
    return np.ascontiguousarray(unflat), cost


def _cell_best(r: _Records, tb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per record: best IoU with any truth and that truth's class (first maximum)."""
    H, W, n = r.rec.shape[:3]
    if len(tb) == 0:
        return np.zeros((H, W, n)), np.full((H, W, n), -1)
    raw = r.rec.astype(np.float64)
    jj, ii = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    aw = np.array([a[0] for a in r.cfg.anchors])
    ah = np.array([a[1] for a in r.cfg.anchors])
    with np.errstate(over="ignore", invalid="ignore"):
        px = (ii[..., None] + 1 / (1 + np.exp(-raw[..., 0]))) / W
        py = (jj[..., None] + 1 / (1 + np.exp(-raw[..., 1]))) / H
        pw = np.exp(raw[..., 2]) * aw / W
        ph = np.exp(raw[..., 3]) * ah / H
    iou = iou_grid(px, py, pw, ph, tb)
    best = iou.max(axis=0)
    cls = tb[:, 4].astype(np.int64)[iou.argmax(axis=0)]
    return np.maximum(best, 0.0), np.where(best > 0, cls, -1)
