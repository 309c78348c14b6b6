"""Darknet's ``[detection]`` (YOLOv1) training forward: ``forward_detection_layer``'s delta and cost.

The truth is Darknet's per-cell grid (``fill_truth_region``): the first box whose centre falls in
a cell claims it (boxes under 0.001 wide or high are dropped), with x, y as offsets inside the
cell.  Per cell: every predictor's confidence is pulled to 0; in an object's cell the classes go
to the one-hot target and the predictor with the best IoU (or, when none overlaps, the smallest
RMSE) gets the box and confidence deltas.  The delta is against the layer output (softmaxed
classes when softmax=1) and passed back as is.  Cost: the sum of squared deltas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from ..graph import LayerSpec
from .boxes import Box, box_iou


@dataclass(frozen=True)
class DetectionLossConfig:
    classes: int
    coords: int
    num: int
    side: int
    sqrt: bool
    rescore: bool
    forced: bool
    random: bool
    coord_scale: float
    object_scale: float
    noobject_scale: float
    class_scale: float

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "DetectionLossConfig":
        s, a = spec.section, spec.attrs
        return cls(classes=a.classes, coords=a.coords, num=a.num, side=a.side, sqrt=a.sqrt,
                   rescore=s.get_int("rescore", 0) != 0, forced=s.get_int("forced", 0) != 0,
                   random=s.get_float("random", 0.0) != 0, coord_scale=s.get_float("coord_scale", 1.0),
                   object_scale=s.get_float("object_scale", 1.0), noobject_scale=s.get_float("noobject_scale", 1.0),
                   class_scale=s.get_float("class_scale", 1.0))


def _rmse(a: Box, b: Box) -> float:
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))


def _grid(boxes: np.ndarray, side: int) -> dict:
    """cell -> (class_id, x_in_cell, y_in_cell, w, h): the first box per cell, as fill_truth_region."""
    cells: dict = {}
    for x, y, w, h, c in boxes[:, :5]:
        if w < .001 or h < .001:
            continue
        col, row = int(np.float32(x) * np.float32(side)), int(np.float32(y) * np.float32(side))
        col, row = min(max(col, 0), side - 1), min(max(row, 0), side - 1)
        cell = col + row * side
        if cell not in cells:
            cells[cell] = (int(c), float(x) * side - col, float(y) * side - row, float(w), float(h))
    return cells


def detection_delta(out: np.ndarray, truths: List[np.ndarray], cfg: DetectionLossConfig,
                    seen: int) -> Tuple[np.ndarray, float]:
    """``l.delta`` (same flat layout as ``out``, B x outputs) and ``*(l.cost)``."""
    B = out.shape[0]
    flat = out.reshape(B, -1).astype(np.float32)
    delta = np.zeros_like(flat)
    locs, n, k, co = cfg.side * cfg.side, cfg.num, cfg.classes, cfg.coords
    for b in range(B):
        o, d = flat[b], delta[b]
        conf = slice(locs * k, locs * k + locs * n)
        d[conf] = cfg.noobject_scale * (0 - o[conf])
        for i, (cid, tx, ty, tw, th) in sorted(_grid(truths[b], cfg.side).items()):
            onehot = np.zeros(k, np.float32)
            if 0 <= cid < k:
                onehot[cid] = 1
            d[i * k:(i + 1) * k] = cfg.class_scale * (onehot - o[i * k:(i + 1) * k])
            truth: Box = (tx / cfg.side, ty / cfg.side, tw, th)

            def pred(j: int) -> Box:
                bi = locs * (k + n) + (i * n + j) * co
                x, y, w, h = (float(v) for v in o[bi:bi + 4])
                return (x / cfg.side, y / cfg.side, w * w if cfg.sqrt else w, h * h if cfg.sqrt else h)

            best_index, best_iou, best_rmse = -1, 0.0, 20.0
            for j in range(n):
                p = pred(j)
                iou, rmse = box_iou(p, truth), _rmse(p, truth)
                if best_iou > 0 or iou > 0:
                    if iou > best_iou:
                        best_iou, best_index = iou, j
                elif rmse < best_rmse:
                    best_rmse, best_index = rmse, j
            if cfg.forced:
                best_index = 1 if tw * th < .1 else 0
            if cfg.random and seen < 64000:
                best_index = int(torch.randint(n, ()).item())
            if best_index < 0:
                continue  # Darknet would index before the array (every RMSE >= 20)
            iou = box_iou(pred(best_index), truth)
            p_index = locs * k + i * n + best_index
            target = iou if cfg.rescore else 1.0
            d[p_index] = cfg.object_scale * (target - float(o[p_index]))
            bi = locs * (k + n) + (i * n + best_index) * co
            want = [tx, ty, math.sqrt(tw) if cfg.sqrt else tw, math.sqrt(th) if cfg.sqrt else th]
            for m in range(4):
                d[bi + m] = cfg.coord_scale * (want[m] - float(o[bi + m]))
    return delta.reshape(out.shape), float(np.square(delta.astype(np.float64)).sum())
