"""Darknet's ``detector map`` scoring, model-free: detections + labels in, AP/mAP and counts out.

This is the bookkeeping half of ``detector.c validate_detector_map`` (the other half, running
the network, lives in :mod:`darkcfg.evaluation`). Every rule follows Darknet at commit 59596d7, as
documented with ``shared/evaluation/coco128``:

1. **Matching** (per detection, per image): among the image's labels of the *same class* with
   ``IoU > iou_thresh`` (strict, float32 ``box_iou`` on relative centre boxes), the one with the
   highest IoU; on a tie the earlier label line wins. Whether another detection already took
   that label does not matter here.
2. **Difficult labels** (``difficult=`` list): a detection that matched no label but overlaps a
   difficult label of its class (IoU > thresh) is dropped from the AP list; it still counts in
   the conf-thresh line below.
3. **The conf-thresh line** (TP/FP/FN, precision/recall/F1, average IoU, per-class TP/FP) counts
   detections with ``prob > thresh`` in *append order within each image*: a TP when it matched a
   label that no earlier-appended detection of the same image (at any prob) matched; else FP.
   ``average IoU = sum of TP IoUs / (TP + FP)``.
4. **Ranking**: all kept detections sorted by prob, descending, stable (ties keep append order);
   going down, a matched detection whose label is not yet taken is a TP and takes it, anything
   else is an FP (a duplicate does not fall back to its second-best label).
5. **AP** per class, in double: ``points=0`` is the area under the monotone precision envelope
   with a step at every rank (walked from the last rank, then ``recall[first] * p_max``);
   ``points=N`` averages, over ``N`` recall levels, the best precision at recall >= level (0 if
   never reached). The level is computed as ``p * (1.0/(N-1))``: Darknet is built with
   ``-Ofast``, which turns its ``p * 1.0 / (N-1)`` into that product, making e.g. 0.3 one ulp
   larger (``exact_recall_levels=True`` gives the ``-O2`` result). Classes without labels or
   without detections get AP 0.
6. **mAP** is the mean over *all* classes of the model, including those without labels.

Everything is vectorised with numpy (no Python loop over detections); the module is torch-free
so that training code can score without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from .datafile import Labels

MAP_POINTS = (0, 11, 101)


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections in Darknet's *append order* (post-NMS array order, then class).

    ``boxes``: (D, 4) float32 relative centre x, y, w, h; ``classes``: (D,) int; ``probs``: (D,)
    float32 (``objectness * class prob``, > 0).
    """

    boxes: np.ndarray
    classes: np.ndarray
    probs: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.probs)
        if self.boxes.shape != (n, 4) or self.classes.shape != (n,):
            raise ValueError(f"inconsistent detection arrays: boxes {self.boxes.shape}, "
                             f"classes {self.classes.shape}, probs {self.probs.shape}")

    @staticmethod
    def empty() -> "ImageDetections":
        return ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return int(self.probs.shape[0])


@dataclass(frozen=True)
class ClassScore:
    """One class's line of Darknet's report: AP (a fraction) and TP/FP at the conf threshold."""

    class_id: int
    name: str
    ap: float
    tp: int
    fp: int
    ground_truth: int
    detections: int


@dataclass(frozen=True)
class MapScore:
    """Everything ``darknet detector map`` prints, as fractions (not percent)."""

    map: float
    points: int
    iou_thresh: float
    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    average_iou: float
    classes: list[ClassScore] = field(default_factory=list)
    detections_count: int = 0
    unique_truth_count: int = 0

    def to_dict(self) -> dict:
        """The documented ``--json`` object (plus ``detections_count``/``unique_truth_count``)."""
        d = asdict(self)
        d["classes"] = [{"class_id": c.class_id, "name": c.name, "ap": c.ap, "tp": c.tp, "fp": c.fp,
                         "ground_truth": c.ground_truth, "detections": c.detections} for c in self.classes]
        return d

    def report(self) -> str:
        """The lines Darknet prints, in its formats (per-class AP, conf-thresh lines, mAP)."""
        lines = [f" detections_count = {self.detections_count}, unique_truth_count = {self.unique_truth_count}  "]
        for c in self.classes:
            lines.append(f"class_id = {c.class_id}, name = {c.name}, ap = {c.ap * 100:2.2f}%   \t "
                         f"(TP = {c.tp}, FP = {c.fp}) ")
        lines.append("")
        lines.append(f" for conf_thresh = {self.thresh:1.2f}, precision = {self.precision:1.2f}, "
                     f"recall = {self.recall:1.2f}, F1-score = {self.f1:1.2f} ")
        lines.append(f" for conf_thresh = {self.thresh:0.2f}, TP = {self.tp}, FP = {self.fp}, FN = {self.fn}, "
                     f"average IoU = {self.average_iou * 100:2.2f} % ")
        lines.append("")
        how = f"used {self.points} Recall-points " if self.points else "used Area-Under-Curve for each unique Recall "
        lines.append(f" IoU threshold = {self.iou_thresh * 100:2.0f} %, {how}")
        lines.append(f" mean average precision (mAP@{self.iou_thresh:0.2f}) = {self.map:f}, "
                     f"or {self.map * 100:2.2f} % ")
        return "\n".join(lines)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """box.c ``box_iou`` for every pair of relative centre boxes, in float32: (A, 4) x (B, 4) -> (A, B).

    Overlap per axis is ``min(right) - max(left)``; a negative overlap gives intersection 0, and
    IoU is 0 when the intersection or the union is 0.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    half = np.float32(2)

    def sides(t: np.ndarray) -> tuple[np.ndarray, ...]:
        x, y, w, h = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        return x - w / half, x + w / half, y - h / half, y + h / half

    al, ar, at, ab = (s[:, None] for s in sides(a))
    bl, br, bt, bb = (s[None, :] for s in sides(b))
    ow = np.minimum(ar, br) - np.maximum(al, bl)
    oh = np.minimum(ab, bb) - np.maximum(at, bt)
    inter = np.where((ow < 0) | (oh < 0), np.float32(0), ow * oh).astype(np.float32)
    union = ((a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter).astype(np.float32)
    ok = (inter != 0) & (union != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, union, np.float32(1)), np.float32(0)).astype(np.float32)


def _best_match(boxes: np.ndarray, classes: np.ndarray, labels: Labels, iou_thresh: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(label index or -1, its IoU) per detection: same class, IoU > thresh, first best."""
    n = len(classes)
    if n == 0 or len(labels) == 0:
        return np.full(n, -1, np.int64), np.zeros(n, np.float32)
    iou = box_iou(boxes, labels.boxes)
    ok = (iou > np.float32(iou_thresh)) & (classes[:, None] == labels.classes[None, :])
    masked = np.where(ok, iou, np.float32(-1))
    best = masked.argmax(axis=1)  # argmax takes the first of equal maxima: earlier label wins
    hit = ok[np.arange(n), best]
    return np.where(hit, best, -1).astype(np.int64), np.where(hit, iou[np.arange(n), best], 0).astype(np.float32)


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Mask of positions holding the first occurrence of their key (keys >= 0 only)."""
    first = np.zeros(len(keys), bool)
    valid = np.flatnonzero(keys >= 0)
    if valid.size:
        _, idx = np.unique(keys[valid], return_index=True)
        first[valid[idx]] = True
    return first


def _seq_sum(values: np.ndarray) -> float:
    """Left-to-right double sum, like a C loop (numpy's sum is pairwise)."""
    return float(np.cumsum(values, dtype=np.float64)[-1]) if len(values) else 0.0


def average_precision(precision: np.ndarray, recall: np.ndarray, points: int = 0,
                      exact_recall_levels: bool = False) -> float:
    """AP of one class from its precision/recall after each of its ranked detections.

    See the module docstring (rule 5). ``recall`` must be non-decreasing (it is a running TP
    count over a fixed number of labels).
    """
    n = len(precision)
    if n == 0:
        return 0.0
    p = np.asarray(precision, np.float64)
    r = np.asarray(recall, np.float64)
    envelope = np.maximum.accumulate(p[::-1])[::-1]  # best precision at this rank or later
    if points == 0:
        steps = (r[1:] - r[:-1]) * envelope[:-1]
        return _seq_sum(np.concatenate([steps[::-1], [r[0] * envelope[0]]]))
    if points < 2:
        raise ValueError(f"points must be 0 or at least 2, got {points}")
    grid = np.arange(points, dtype=np.float64)
    levels = grid / (points - 1) if exact_recall_levels else grid * (1.0 / (points - 1))
    first = np.searchsorted(r, levels, side="left")  # first rank with recall >= level
    best = np.where(first < n, envelope[np.minimum(first, n - 1)], 0.0)
    return _seq_sum(best) / points


def score_detections(
    detections: Sequence[ImageDetections],
    labels: Sequence[Labels],
    classes: int,
    names: Optional[Sequence[str]] = None,
    *,
    points: int = 0,
    iou_thresh: float = 0.5,
    thresh: float = 0.25,
    difficult: Optional[Sequence[Labels]] = None,
    exact_recall_levels: bool = False,
) -> MapScore:
    """Darknet's ``detector map`` numbers for per-image detections and labels (same order).

    Args:
        detections: per image, in Darknet's append order (see :class:`ImageDetections`); the
            low evaluation threshold (0.005) and NMS are the caller's business.
        labels: per image ground truth (:func:`darkcfg.datafile.read_labels`).
        classes: number of classes of the model: the mAP divides by it.
        names: class names for the report (default: the indices).
        points: 0 (area under the curve, Darknet's default), 11 (VOC2007) or 101 (COCO).
        iou_thresh: a detection matches a label when IoU is strictly greater.
        thresh: confidence for the TP/FP/FN line (strictly greater).
        difficult: optional per-image difficult labels (Darknet's ``difficult=`` list).
        exact_recall_levels: recall levels by exact division instead of Darknet's -Ofast product.
    """
    if len(detections) != len(labels):
        raise ValueError(f"{len(detections)} detection lists for {len(labels)} label lists")
    if difficult is not None and len(difficult) != len(labels):
        raise ValueError(f"{len(difficult)} difficult label lists for {len(labels)} images")
    names = [str(k) for k in range(classes)] if names is None else list(names)
    gt_count = np.zeros(classes, np.int64)
    tp_cls = np.zeros(classes, np.int64)
    fp_cls = np.zeros(classes, np.int64)
    iou_sum = 0.0
    kept_probs, kept_classes, kept_truth = [], [], []
    truth_offset = 0
    for i, (dets, lab) in enumerate(zip(detections, labels)):
        if len(lab) and (lab.classes.min() < 0 or lab.classes.max() >= classes):
            raise ValueError(f"image {i}: label class id outside [0, {classes})")
        gt_count += np.bincount(lab.classes, minlength=classes)
        if len(dets) and (dets.classes.min() < 0 or dets.classes.max() >= classes):
            raise ValueError(f"image {i}: detection class id outside [0, {classes})")
        local, ious = _best_match(dets.boxes, dets.classes, lab, iou_thresh)
        keep = np.ones(len(dets), bool)
        if difficult is not None and len(difficult[i]):
            dif_local, _ = _best_match(dets.boxes, dets.classes, difficult[i], iou_thresh)
            keep = ~((local < 0) & (dif_local >= 0))
        # conf-thresh line: append order within the image, the first claim on a label wins
        above = dets.probs > np.float32(thresh)
        is_tp = above & (local >= 0) & _first_occurrence(local)
        is_fp = above & ~is_tp
        tp_cls += np.bincount(dets.classes[is_tp], minlength=classes)
        fp_cls += np.bincount(dets.classes[is_fp], minlength=classes)
        iou_sum += float(ious[is_tp].astype(np.float64).sum())
        kept_probs.append(dets.probs[keep])
        kept_classes.append(dets.classes[keep])
        kept_truth.append(np.where(local[keep] >= 0, local[keep] + truth_offset, -1))
        truth_offset += len(lab)
    probs = np.concatenate(kept_probs).astype(np.float32) if kept_probs else np.zeros(0, np.float32)
    cls = np.concatenate(kept_classes).astype(np.int64) if kept_classes else np.zeros(0, np.int64)
    truth = np.concatenate(kept_truth).astype(np.int64) if kept_truth else np.zeros(0, np.int64)

    order = np.argsort(-probs, kind="stable")  # glibc qsort is a stable merge sort here
    cls, truth = cls[order], truth[order]
    ranked_tp = (truth >= 0) & _first_occurrence(truth)
    aps = np.zeros(classes, np.float64)
    det_count = np.bincount(cls, minlength=classes)
    for k in np.flatnonzero(det_count):
        tp_k = ranked_tp[cls == k]
        tp = np.cumsum(tp_k, dtype=np.int64)
        fp = np.cumsum(~tp_k, dtype=np.int64)
        precision = tp / (tp + fp)
        recall = tp / gt_count[k] if gt_count[k] > 0 else np.zeros(len(tp))
        aps[k] = average_precision(precision, recall, points, exact_recall_levels)

    tp_all, fp_all = int(tp_cls.sum()), int(fp_cls.sum())
    fn_all = int(gt_count.sum()) - tp_all
    precision_all = tp_all / (tp_all + fp_all) if tp_all + fp_all else 0.0
    recall_all = tp_all / (tp_all + fn_all) if tp_all + fn_all else 0.0
    f1 = 2 * precision_all * recall_all / (precision_all + recall_all) if precision_all + recall_all else 0.0
    per_class = [ClassScore(k, names[k], float(aps[k]), int(tp_cls[k]), int(fp_cls[k]), int(gt_count[k]),
                            int(det_count[k])) for k in range(classes)]
    return MapScore(
        map=_seq_sum(aps) / classes,
        points=points,
        iou_thresh=iou_thresh,
        thresh=thresh,
        tp=tp_all,
        fp=fp_all,
        fn=fn_all,
        precision=precision_all,
        recall=recall_all,
        f1=f1,
        average_iou=iou_sum / (tp_all + fp_all) if tp_all + fp_all else 0.0,
        classes=per_class,
        detections_count=int(len(probs)),
        unique_truth_count=int(gt_count.sum()),
    )
