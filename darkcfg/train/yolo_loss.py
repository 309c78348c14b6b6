"""Darknet's ``[yolo]`` training forward: the delta and cost of ``forward_yolo_layer``.

The delta is taken against the ACTIVATED outputs (logistic x, y, objectness, classes; the
scale_x_y affine on x, y) and ``backward_yolo_layer`` adds it to the previous layer's delta as
is, without the logistic derivative: that IS Darknet's loss, so it is returned here and injected
as the gradient of the head's input (see :mod:`darkcfg.train.loss`).

Per image, in Darknet's order: every cell's objectness delta (0 when its best IoU with a truth,
among cells with any class above 0.25, exceeds ignore_thresh), the truth_thresh branch, then every
truth in list order: the best of ALL anchors by shape, and if it is in this layer's mask the box
delta (added), objectness (assigned) and class deltas; the iou_thresh extra anchors; finally the
per-cell averaging of box deltas when iou_thresh < 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import CfgError
from ..graph import LayerSpec
from .boxes import Box, box_ciou, box_diou, box_giou, box_iou, box_iou_kind, dx_box_iou

FLT_MAX = float(np.finfo(np.float32).max)
_IOU_KINDS = ("mse", "giou", "diou", "ciou")


@dataclass(frozen=True)
class YoloLossConfig:
    """Every key ``parse_yolo`` reads for training, with Darknet's defaults."""

    classes: int
    mask: Tuple[int, ...]
    anchors: Tuple[Tuple[float, float], ...]  # the first ``total`` pairs, input pixels
    scale_x_y: float
    new_coords: bool
    ignore_thresh: float
    truth_thresh: float
    iou_thresh: float
    iou_thresh_kind: str
    iou_loss: str  # mse | iou | giou | diou | ciou
    iou_normalizer: float
    obj_normalizer: float
    cls_normalizer: float
    delta_normalizer: float
    max_delta: float
    label_smooth_eps: float
    objectness_smooth: bool
    focal_loss: bool
    classes_multipliers: Optional[Tuple[float, ...]]
    show_details: bool
    max_boxes: int
    uc_normalizer: float = 1.0  # [Gaussian_yolo] only
    yolo_point: str = "center"  # [Gaussian_yolo] only

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "YoloLossConfig":
        s, a = spec.section, spec.attrs
        total = s.get_int("num", 1)
        iou_loss = (s.get_str("iou_loss", "mse") or "mse")
        if iou_loss not in _IOU_KINDS:
            iou_loss = "iou"  # parse_yolo: anything else is plain IoU
        kind = s.get_str("iou_thresh_kind", "iou") or "iou"
        if kind not in ("iou", "giou", "diou", "ciou"):
            kind = "iou"
        max_delta = s.get_float("max_delta", FLT_MAX)
        multipliers = None
        cpc = s.get_str("counters_per_class")
        if cpc:
            counts = [int(float(v)) for v in cpc.split("#")[0].split(",")]
            if len(counts) != a.classes:
                raise CfgError(f"{s.where('counters_per_class')}: {len(counts)} values for classes={a.classes}")
            counts = [max(1, c) for c in counts]
            top = float(max(counts))
            multipliers = tuple(min(top / c, max_delta) for c in counts)
        return cls(
            classes=a.classes, mask=tuple(a.mask), anchors=tuple(a.anchors[:max(total, 1)]),
            scale_x_y=a.scale_x_y, new_coords=a.new_coords,
            ignore_thresh=s.get_float("ignore_thresh", 0.5), truth_thresh=s.get_float("truth_thresh", 1.0),
            iou_thresh=s.get_float("iou_thresh", 1.0), iou_thresh_kind=kind, iou_loss=iou_loss,
            iou_normalizer=s.get_float("iou_normalizer", 0.75), obj_normalizer=s.get_float("obj_normalizer", 1.0),
            cls_normalizer=s.get_float("cls_normalizer", 1.0),
            delta_normalizer=s.get_float("delta_normalizer", 1.0), max_delta=max_delta,
            label_smooth_eps=s.get_float("label_smooth_eps", 0.0),
            objectness_smooth=s.get_int("objectness_smooth", 0) != 0, focal_loss=s.get_int("focal_loss", 0) != 0,
            classes_multipliers=multipliers, show_details=s.get_int("show_details", 1) != 0,
            max_boxes=s.get_int("max", 200), uc_normalizer=s.get_float("uc_normalizer", 1.0),
            yolo_point=getattr(a, "yolo_point", "center"))


def _fix(v: float) -> float:
    return 0.0 if (math.isnan(v) or math.isinf(v)) else v


def _clip(v: float, m: float) -> float:
    return m if v > m else (-m if v < -m else v)


class _Image:
    """One image's activated outputs and delta, (n, entries, h, w) float32."""

    def __init__(self, out: np.ndarray, cfg: YoloLossConfig, net_w: int, net_h: int):
        self.out = out
        self.delta = np.zeros_like(out)
        self.cfg = cfg
        self.n, _, self.h, self.w = out.shape
        self.net_w, self.net_h = net_w, net_h

    def pred_box(self, a: int, j: int, i: int, anchor: int) -> Box:
        o, c = self.out, self.cfg
        aw, ah = c.anchors[anchor]
        x = (i + float(o[a, 0, j, i])) / self.w
        y = (j + float(o[a, 1, j, i])) / self.h
        tw, th = float(o[a, 2, j, i]), float(o[a, 3, j, i])
        if c.new_coords:
            return (x, y, tw * tw * 4 * aw / self.net_w, th * th * 4 * ah / self.net_h)
        return (x, y, math.exp(tw) * aw / self.net_w, math.exp(th) * ah / self.net_h)

    def delta_box(self, truth: Box, a: int, j: int, i: int, anchor: int, scale: float,
                  iou_normalizer: float) -> Tuple[float, float]:
        """``delta_yolo_box`` (accumulating): returns (iou, giou) of the prediction."""
        c, o, d = self.cfg, self.out, self.delta
        pred = self.pred_box(a, j, i, anchor)
        iou, giou = box_iou(pred, truth), box_giou(pred, truth)
        pw = pred[2] if pred[2] != 0 else 1.0
        ph = pred[3] if pred[3] != 0 else 1.0
        pred = (pred[0], pred[1], pw, ph)
        aw, ah = c.anchors[anchor]
        if c.iou_loss == "mse":
            tx = truth[0] * self.w - i
            ty = truth[1] * self.h - j
            if c.new_coords:
                tw = math.sqrt(truth[2] * self.net_w / (4 * aw))
                th = math.sqrt(truth[3] * self.net_h / (4 * ah))
            else:
                tw = math.log(truth[2] * self.net_w / aw) if truth[2] > 0 else -math.inf
                th = math.log(truth[3] * self.net_h / ah) if truth[3] > 0 else -math.inf
            for k, t in enumerate((tx, ty, tw, th)):
                d[a, k, j, i] += np.float32(scale * (t - float(o[a, k, j, i])) * iou_normalizer)
            return iou, giou
        g = dx_box_iou(pred, truth, c.iou_loss)
        dx, dy, dw, dh = g.dx, g.dy, g.dw, g.dh
        if not c.new_coords:
            dw *= math.exp(float(o[a, 2, j, i]))
            dh *= math.exp(float(o[a, 3, j, i]))
        vals = [_fix(v * iou_normalizer) for v in (dx, dy, dw, dh)]
        if c.max_delta != FLT_MAX:
            vals = [_clip(v, c.max_delta) for v in vals]
        for k, v in enumerate(vals):
            d[a, k, j, i] += np.float32(v)
        return iou, giou

    def delta_class(self, a: int, j: int, i: int, class_id: int) -> None:
        """``delta_yolo_class``: multi-label when the class entry is already set."""
        c = self.cfg
        p = self.out[a, 5:, j, i]
        d = self.delta[a, 5:, j, i]
        mult = c.classes_multipliers
        if d[class_id] != 0:
            y = 1.0
            if c.label_smooth_eps:
                y = y * (1 - c.label_smooth_eps) + 0.5 * c.label_smooth_eps
            r = y - float(p[class_id])
            if not (math.isnan(r) or math.isinf(r)):
                d[class_id] = r
            if mult is not None:
                d[class_id] *= mult[class_id]
            return
        if c.focal_loss:
            pt = float(p[class_id]) + 0.000000000000001
            grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1) if pt > 0 else 0.0
            onehot = np.zeros(c.classes, np.float32)
            onehot[class_id] = 1
            d[:] = (onehot - p) * np.float32(0.5 * grad)
            return
        target = np.zeros(c.classes, np.float64)
        target[class_id] = 1
        if c.label_smooth_eps:
            target = target * (1 - c.label_smooth_eps) + 0.5 * c.label_smooth_eps
        res = target - p.astype(np.float64)
        ok = np.isfinite(res)
        d[ok] = res[ok]
        if mult is not None:
            d[class_id] *= mult[class_id] * c.cls_normalizer


def _anchor_shape_box(anchor: Tuple[float, float], net_w: int, net_h: int) -> Box:
    return (0.0, 0.0, anchor[0] / net_w, anchor[1] / net_h)

def _best_anchor(anchors: Tuple[Tuple[float, float], ...], shift: Box, net_w: int, net_h: int) -> int:
    """The anchor whose shape (centred at the origin) has the highest IoU with ``shift`` (the
    truth's w, h at the origin); the first one on ties and 0 when none overlaps, as Darknet's loop."""
    best, best_n = 0.0, 0
    for m, anchor in enumerate(anchors):
        iou = box_iou(_anchor_shape_box(anchor, net_w, net_h), shift)
        if iou > best:
            best, best_n = iou, m
    return best_n


def yolo_delta(out: np.ndarray, truths: List[np.ndarray], cfg: YoloLossConfig, net_w: int,
               net_h: int) -> Tuple[np.ndarray, float]:
    """Darknet's ``l.delta`` (same shape as ``out``: B x n*(5+classes) x h x w) and ``*(l.cost)``.

    ``out`` is the layer's activated output (float32); ``truths[b]`` a K x 5 array of
    (x, y, w, h, class) for image b, already cut where Darknet's list ends.
    """
    B, C, H, W = out.shape
    n = len(cfg.mask)
    E = 5 + cfg.classes
    out5 = out.reshape(B, n, E, H, W).astype(np.float32, copy=True)
    delta = np.zeros_like(out5)
    tot_iou_loss = tot_giou_loss = 0.0
    count = 0
    for b in range(B):
        img = _Image(out5[b], cfg, net_w, net_h)
        tb = truths[b]
        valid = [k for k in range(len(tb)) if 0 <= int(tb[k, 4]) < cfg.classes]
        obj = img.out[:, 4]
        if valid:
            bad = ~np.isfinite(obj)
            obj[bad] = 0
        img.delta[:, 4] = np.float32(cfg.obj_normalizer) * (0 - obj)
        if valid:
            best_match, best_iou, best_t = _cell_ious(img, tb[valid], cfg, net_w, net_h)
            ign = best_match > cfg.ignore_thresh
            if cfg.objectness_smooth:
                smooth = np.float32(cfg.obj_normalizer) * (best_match.astype(np.float32) - obj)
                img.delta[:, 4] = np.where(ign & (smooth > img.delta[:, 4]), smooth, img.delta[:, 4])
            else:
                img.delta[:, 4][ign] = 0
            for a, j, i in sorted(zip(*np.nonzero(best_iou > cfg.truth_thresh)), key=lambda t: (t[1], t[2], t[0])):
                _truth_thresh_branch(img, int(a), int(j), int(i), tb[valid[int(best_t[a, j, i])]],
                                     float(best_iou[a, j, i]))
        for k in valid:
            t = tb[k]
            truth: Box = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
            class_id = int(t[4])
            i = min(max(int(np.float32(t[0]) * np.float32(W)), 0), W - 1)  # float32 product, as C
            j = min(max(int(np.float32(t[1]) * np.float32(H)), 0), H - 1)
            shift: Box = (0.0, 0.0, truth[2], truth[3])
            best_n = _best_anchor(cfg.anchors, shift, net_w, net_h)
            anchors_hit = []
            if best_n in cfg.mask:
                anchors_hit.append(best_n)
            if cfg.iou_thresh < 1.0:
                for m in range(len(cfg.anchors)):
                    if m in cfg.mask and m != best_n:
                        iou = box_iou_kind(_anchor_shape_box(cfg.anchors[m], net_w, net_h), shift,
                                           cfg.iou_thresh_kind)
                        if iou > cfg.iou_thresh:
                            anchors_hit.append(m)
            for m in anchors_hit:
                a = cfg.mask.index(m)
                mult = cfg.classes_multipliers[class_id] if cfg.classes_multipliers else 1.0
                iou, giou = img.delta_box(truth, a, j, i, m, 2 - truth[2] * truth[3], cfg.iou_normalizer * mult)
                tot_iou_loss += 1 - iou
                tot_giou_loss += 1 - giou
                count += 1
                o = float(img.out[a, 4, j, i])
                d_obj = np.float32(mult * cfg.obj_normalizer * (1 - o))
                if cfg.objectness_smooth:
                    if img.delta[a, 4, j, i] == 0:
                        img.delta[a, 4, j, i] = d_obj
                else:
                    img.delta[a, 4, j, i] = d_obj
                img.delta_class(a, j, i, class_id)
        if cfg.iou_thresh < 1.0:
            d = img.delta
            active = d[:, 4] != 0
            k = (d[:, 5:] > 0).sum(axis=1)
            div = np.where(active & (k > 0), k, 1).astype(np.float32)
            d[:, 0:4] /= div[:, None]
        delta[b] = img.delta
    delta = delta.reshape(B, C, H, W)
    sq = float(np.square(delta.astype(np.float64)).sum())
    if not cfg.show_details or cfg.iou_loss == "mse":
        cost = sq
    else:
        count = max(count, 1)
        box = delta.reshape(B, n, E, H, W)[:, :, 0:4]
        classification = cfg.obj_normalizer * (sq - float(np.square(box.astype(np.float64)).sum()))
        tot = tot_giou_loss if cfg.iou_loss == "giou" else tot_iou_loss
        cost = cfg.iou_normalizer * tot / count + classification
    return delta, cost


def _cell_ious(img: _Image, tb: np.ndarray, cfg: YoloLossConfig, net_w: int,
               net_h: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: best IoU among class-matching cells' truths, best IoU and its (first) truth."""
    o = img.out.astype(np.float64)
    n, _, H, W = o.shape
    jj, ii = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    aw = np.array([cfg.anchors[m][0] for m in cfg.mask])[:, None, None]
    ah = np.array([cfg.anchors[m][1] for m in cfg.mask])[:, None, None]
    px = (ii + o[:, 0]) / W
    py = (jj + o[:, 1]) / H
    with np.errstate(over="ignore", invalid="ignore"):
        if cfg.new_coords:
            pw = o[:, 2] ** 2 * 4 * aw / net_w
            ph = o[:, 3] ** 2 * 4 * ah / net_h
        else:
            pw = np.exp(o[:, 2]) * aw / net_w
            ph = np.exp(o[:, 3]) * ah / net_h
    iou = iou_grid(px, py, pw, ph, tb)
    cls_match = (img.out[:, 5:] > 0.25).any(axis=1)
    best_iou = iou.max(axis=0)
    best_t = iou.argmax(axis=0)
    best_match = np.where(cls_match, best_iou, 0.0)
    return best_match, np.maximum(best_iou, 0.0), best_t


def iou_grid(px: np.ndarray, py: np.ndarray, pw: np.ndarray, ph: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """``box_iou`` of every predicted box (arrays of one shape S) with every truth: T x S."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        shape = (-1,) + (1,) * px.ndim
        tx, ty, tw, th = (tb[:, k].astype(np.float64).reshape(shape) for k in range(4))
        ow = np.minimum(px + pw / 2, tx + tw / 2) - np.maximum(px - pw / 2, tx - tw / 2)
        oh = np.minimum(py + ph / 2, ty + th / 2) - np.maximum(py - ph / 2, ty - th / 2)
        inter = np.where((ow < 0) | (oh < 0), 0.0, ow * oh)
        union = pw * ph + tw * th - inter
        iou = np.where((inter == 0) | (union == 0), 0.0, inter / np.where(union == 0, 1, union))
    return np.nan_to_num(iou, nan=0.0)  # a NaN never wins Darknet's '>' test


def _truth_thresh_branch(img: _Image, a: int, j: int, i: int, t: np.ndarray, best_iou: float) -> None:
    """A cell whose best IoU exceeds truth_thresh is trained toward that truth (rare: default 1)."""
    c = img.cfg
    o = float(img.out[a, 4, j, i])
    mult_iou = best_iou * best_iou
    img.delta[a, 4, j, i] = np.float32(c.obj_normalizer * ((mult_iou if c.objectness_smooth else 1.0) - o))
    class_id = int(t[4])
    img.delta_class(a, j, i, class_id)
    mult = c.classes_multipliers[class_id] if c.classes_multipliers else 1.0
    if c.objectness_smooth:
        img.delta[a, 5 + class_id, j, i] = np.float32(mult * (mult_iou - float(img.out[a, 5 + class_id, j, i])))
    truth: Box = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
    img.delta_box(truth, a, j, i, c.mask[a], 2 - truth[2] * truth[3], c.iou_normalizer * mult)


__all__ = ["YoloLossConfig", "yolo_delta", "box_diou", "box_ciou"]
