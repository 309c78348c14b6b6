"""Darknet's ``[Gaussian_yolo]`` training forward (``gaussian_yolo_layer.c``): delta and cost.

Entries per anchor: x, sigma_x, y, sigma_y, w, sigma_w, h, sigma_h, objectness, classes.  The
box delta is the Gaussian negative log-likelihood gradient (MSE kind) or Darknet's IoU delta,
plus the uncertainty deltas; like [yolo], it is taken against the activated outputs and passed
back as is.  Differences from [yolo] kept as Darknet has them: the class test before a
multi-label rewrite looks at the FIRST class entry; box deltas are averaged over the classes
set in every cell; the cost is the plain sum of squared deltas.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

from .boxes import Box, box_iou, box_iou_kind, dx_box_iou
from .yolo_loss import FLT_MAX, YoloLossConfig, _anchor_shape_box, _best_anchor, _clip, _fix, iou_grid

_SIGMA_CONST = 0.3
_EPSI = 1e-9
_SQRT_2PI = math.sqrt(math.pi * 2.0)


class _GImage:
    def __init__(self, out: np.ndarray, cfg: YoloLossConfig, net_w: int, net_h: int):
        self.out, self.cfg = out, cfg
        self.delta = np.zeros_like(out)
        self.n, _, self.h, self.w = out.shape
        self.net_w, self.net_h = net_w, net_h

    def pred_box(self, a: int, j: int, i: int, anchor: int) -> Box:
        o, c = self.out, self.cfg
        aw, ah = c.anchors[anchor]
        bw = math.exp(float(o[a, 4, j, i])) * aw / self.net_w
        bh = math.exp(float(o[a, 6, j, i])) * ah / self.net_h
        x = (i + float(o[a, 0, j, i])) / self.w
        y = (j + float(o[a, 2, j, i])) / self.h
        if c.yolo_point == "left_top":
            x, y = x + bw / 2, y + bh / 2
        elif c.yolo_point == "right_bottom":
            x, y = x - bw / 2, y - bh / 2
        return (x, y, bw, bh)

    def delta_box(self, truth: Box, a: int, j: int, i: int, anchor: int, scale: float, iou_normalizer: float) -> None:
        c, o, d = self.cfg, self.out, self.delta
        pred = self.pred_box(a, j, i, anchor)
        pred = (pred[0], pred[1], pred[2] if pred[2] != 0 else 1.0, pred[3] if pred[3] != 0 else 1.0)
        aw, ah = c.anchors[anchor]
        tx, ty = truth[0] * self.w - i, truth[1] * self.h - j
        if c.yolo_point == "left_top":
            tx, ty = (truth[0] - truth[2] / 2) * self.w - i, (truth[1] - truth[3] / 2) * self.h - j
        elif c.yolo_point == "right_bottom":
            tx, ty = (truth[0] + truth[2] / 2) * self.w - i, (truth[1] + truth[3] / 2) * self.h - j
        tw = math.log(truth[2] * self.net_w / aw) if truth[2] > 0 else -math.inf
        th = math.log(truth[3] * self.net_h / ah) if truth[3] > 0 else -math.inf
        mains, uncs = [], []
        for k, target in enumerate((tx, ty, tw, th)):
            v, sigma = float(o[a, 2 * k, j, i]), float(o[a, 2 * k + 1, j, i])
            diff = target - v
            z = diff / sigma if sigma != 0 else math.copysign(math.inf, diff) if diff else math.nan
            z2 = z * z
            dens = math.exp(-0.5 * z2) / (_SQRT_2PI * (sigma + _SIGMA_CONST)) if not math.isnan(z2) else math.nan
            temp = 0.5 * (1.0 / (dens + _EPSI)) * dens * scale
            mains.append(temp * z * (1.0 / sigma) if sigma != 0 else math.nan)
            uncs.append(temp * ((z2 / sigma if sigma != 0 else math.nan) - 1.0 / (sigma + _SIGMA_CONST)))
        if c.iou_loss != "mse":
            g = dx_box_iou(pred, truth, c.iou_loss)
            dx, dy, dw, dh = g.dx, g.dy, g.dw, g.dh
            if c.yolo_point == "left_top":
                dx, dy = dx - dw / 2, dy - dh / 2
            elif c.yolo_point == "right_bottom":
                dx, dy = dx + dw / 2, dy + dh / 2
            mains = [dx, dy, dw * math.exp(float(o[a, 4, j, i])), dh * math.exp(float(o[a, 6, j, i]))]
        mains = [_fix(v * iou_normalizer) for v in mains]
        uncs = [_fix(v * c.uc_normalizer) for v in uncs]
        if c.max_delta != FLT_MAX:
            mains = [_clip(v, c.max_delta) for v in mains]
            uncs = [_clip(v, c.max_delta) for v in uncs]
        for k in range(4):
            d[a, 2 * k, j, i] += np.float32(mains[k])
            d[a, 2 * k + 1, j, i] += np.float32(uncs[k])

    def delta_class(self, a: int, j: int, i: int, class_id: int) -> None:
        c = self.cfg
        p = self.out[a, 9:, j, i].astype(np.float64)
        d = self.delta[a, 9:, j, i]
        mult = c.classes_multipliers
        eps = c.label_smooth_eps
        if d[0] != 0:  # Darknet tests the first class entry here, not class_id's
            y = 1.0 * (1 - eps) + 0.5 * eps if eps else 1.0
            d[class_id] = y - p[class_id]
            if mult is not None:
                d[class_id] *= mult[class_id]
            return
        target = np.zeros(c.classes)
        target[class_id] = 1
        if eps:
            target = target * (1 - eps) + 0.5 * eps
        d[:] = target - p
        if mult is not None:
            d[class_id] *= mult[class_id] * c.cls_normalizer


def gaussian_yolo_delta(out: np.ndarray, truths: List[np.ndarray], cfg: YoloLossConfig, net_w: int,
                        net_h: int) -> Tuple[np.ndarray, float]:
    """``l.delta`` (B x n*(9+classes) x h x w, the input layout) and ``*(l.cost)``."""
    B, C, H, W = out.shape
    n = len(cfg.mask)
    E = 9 + cfg.classes
    out5 = out.reshape(B, n, E, H, W).astype(np.float32, copy=True)
    delta = np.zeros_like(out5)
    for b in range(B):
        img = _GImage(out5[b], cfg, net_w, net_h)
        tb = truths[b]
        valid = [k for k in range(len(tb)) if 0 <= int(tb[k, 4]) < cfg.classes]
        obj = img.out[:, 8]
        img.delta[:, 8] = np.float32(cfg.obj_normalizer) * (0 - obj)
        if valid:
            best_match, best_iou, best_t, match_t = _cells(img, tb[valid])
            for a, j, i in zip(*np.nonzero(best_match > cfg.ignore_thresh)):
                if cfg.objectness_smooth:
                    m = float(best_match[a, j, i])
                    img.delta[a, 8, j, i] = np.float32(cfg.obj_normalizer * (m * m - float(obj[a, j, i])))
                    img.delta_class(int(a), int(j), int(i), int(tb[valid[int(match_t[a, j, i])], 4]))
                else:
                    img.delta[a, 8, j, i] = 0
            for a, j, i in zip(*np.nonzero(best_iou > cfg.truth_thresh)):
                a, j, i = int(a), int(j), int(i)
                t = tb[valid[int(best_t[a, j, i])]]
                bi = float(best_iou[a, j, i])
                o = float(obj[a, j, i])
                img.delta[a, 8, j, i] = np.float32(cfg.obj_normalizer * ((bi * bi if cfg.objectness_smooth else 1.0) - o))
                class_id = int(t[4])
                img.delta_class(a, j, i, class_id)
                mult = cfg.classes_multipliers[class_id] if cfg.classes_multipliers else 1.0
                if cfg.objectness_smooth:
                    img.delta[a, 9 + class_id, j, i] = np.float32(mult * (bi * bi - float(img.out[a, 9 + class_id, j, i])))
                truth: Box = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
                img.delta_box(truth, a, j, i, cfg.mask[a], 2 - truth[2] * truth[3], cfg.iou_normalizer * mult)
        for k in valid:
            t = tb[k]
            truth = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
            class_id = int(t[4])
            fx, fy = np.float32(t[0]), np.float32(t[1])
            if cfg.yolo_point == "left_top":
                fx, fy = fx - np.float32(t[2]) / 2, fy - np.float32(t[3]) / 2
            elif cfg.yolo_point == "right_bottom":
                fx, fy = fx + np.float32(t[2]) / 2, fy + np.float32(t[3]) / 2
            i = min(max(int(fx * np.float32(W)), 0), W - 1)
            j = min(max(int(fy * np.float32(H)), 0), H - 1)
            shift: Box = (0.0, 0.0, truth[2], truth[3])
            best_n = _best_anchor(cfg.anchors, shift, net_w, net_h)
            hits = [best_n] if best_n in cfg.mask else []
            if cfg.iou_thresh < 1.0:
                hits += [m for m in range(len(cfg.anchors)) if m in cfg.mask and m != best_n and box_iou_kind(
                    _anchor_shape_box(cfg.anchors[m], net_w, net_h), shift, cfg.iou_thresh_kind) > cfg.iou_thresh]
            for m in hits:
                a = cfg.mask.index(m)
                mult = cfg.classes_multipliers[class_id] if cfg.classes_multipliers else 1.0
                img.delta_box(truth, a, j, i, m, 2 - truth[2] * truth[3], cfg.iou_normalizer * mult)
                img.delta[a, 8, j, i] = np.float32(mult * cfg.obj_normalizer * (1 - float(img.out[a, 8, j, i])))
                img.delta_class(a, j, i, class_id)
        k = (img.delta[:, 9:] > 0).sum(axis=1)
        img.delta[:, 0:8] /= np.where(k > 0, k, 1).astype(np.float32)[:, None]
        delta[b] = img.delta
    delta = delta.reshape(B, C, H, W)
    return delta, float(np.square(delta.astype(np.float64)).sum())


def _cells(img: _GImage, tb: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: best class-matching IoU, best IoU, the truth of each (first maximum)."""
    o = img.out.astype(np.float64)
    n, _, H, W = o.shape
    jj, ii = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    aw = np.array([img.cfg.anchors[m][0] for m in img.cfg.mask])[:, None, None]
    ah = np.array([img.cfg.anchors[m][1] for m in img.cfg.mask])[:, None, None]
    with np.errstate(over="ignore", invalid="ignore"):
        pw = np.exp(o[:, 4]) * aw / img.net_w
        ph = np.exp(o[:, 6]) * ah / img.net_h
    px = (ii + o[:, 0]) / W
    py = (jj + o[:, 2]) / H
    if img.cfg.yolo_point == "left_top":
        px, py = px + pw / 2, py + ph / 2
    elif img.cfg.yolo_point == "right_bottom":
        px, py = px - pw / 2, py - ph / 2
    ious = iou_grid(px, py, pw, ph, tb)
    cls_match = (img.out[:, 9:] > 0.25).any(axis=1)
    best_iou = ious.max(axis=0)
    best_t = ious.argmax(axis=0)
    return np.where(cls_match, best_iou, 0.0), best_iou, best_t, best_t
