"""The detector-map scoring rules on hand-made detections and labels (no model, no fixtures).

Every expected value below is worked out by hand in the comments from Darknet's rules
(darkcfg/metrics.py docstring); boxes are powers of two or identical boxes so that IoUs are
exact in float32.
"""

import numpy as np
import pytest
import torch

from darkcfg.datafile import Labels
from darkcfg.evaluation import darknet_array_order
from darkcfg.metrics import ImageDetections, average_precision, box_iou, score_detections

L0 = (0.25, 0.25, 0.25, 0.25)
L1 = (0.75, 0.75, 0.25, 0.25)
L2 = (0.5, 0.5, 0.5, 0.5)
L3 = (0.5, 0.5, 0.25, 0.25)
FAR = (0.5, 0.0625, 0.125, 0.125)  # overlaps nothing above


def labels(*rows):
    return Labels(np.array([r[0] for r in rows], np.int64).reshape(-1),
                  np.array([r[1] for r in rows], np.float32).reshape(-1, 4))


def dets(*rows):
    """rows of (class, prob, box) in append order."""
    return ImageDetections(np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
                           np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float32))


def _example():
    # image 0: class-0 labels L0, L1 and a class-1 label L2; image 1: a class-0 label L3.
    lab = [labels((0, L0), (0, L1), (1, L2)), labels((0, L3))]
    det = [
        dets((0, 0.9, L0),   # TP on L0
             (0, 0.8, L0),   # duplicate of L0: FP, does not fall back to L1
             (0, 0.6, FAR),  # matches nothing: FP
             (2, 0.7, L2)),  # right box, wrong class (class 2 has no labels): FP
        dets((0, 0.8, L3)),  # TP on L3; prob ties with the duplicate above
    ]
    return det, lab


def test_ties_duplicates_empty_classes_auc():
    det, lab = _example()
    s = score_detections(det, lab, classes=4, names=["a", "b", "c", "d"])
    # Ranking (stable on ties: the duplicate was appended first, so it ranks first):
    #   0.9 TP, 0.8 dup FP, 0.8 TP, 0.6 FP for class 0 (3 labels):
    #   P/R = 1/(1/3), 1/2/(1/3), 2/3/(2/3), 1/2/(2/3)
    #   area = 1/3 * 1 + 1/3 * 2/3 = 5/9  (2/3 if the tie were broken the other way)
    assert s.classes[0].ap == pytest.approx(5 / 9, abs=1e-12)
    assert s.classes[1].ap == 0.0  # has a label, no detection
    assert s.classes[2].ap == 0.0  # has a detection, no label
    assert s.classes[3].ap == 0.0  # neither
    assert s.map == pytest.approx(5 / 9 / 4, abs=1e-12)  # mean over all 4 classes
    # conf-thresh line (all probs > 0.25): TP d0, d4; FP d1 (L0 taken), d2, d3; 4 labels
    assert (s.tp, s.fp, s.fn) == (2, 3, 2)
    assert s.precision == pytest.approx(2 / 5) and s.recall == pytest.approx(1 / 2)
    assert s.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert s.average_iou == pytest.approx(2 / 5, abs=1e-6)  # IoU 1 twice over TP+FP = 5
    assert [(c.tp, c.fp) for c in s.classes] == [(2, 2), (0, 0), (0, 1), (0, 0)]
    assert [c.ground_truth for c in s.classes] == [3, 1, 0, 0]
    assert s.detections_count == 5 and s.unique_truth_count == 4


def test_recall_points():
    det, lab = _example()
    # class 0 reaches recall 1/3 at best precision 1 and recall 2/3 at best precision 2/3.
    # 11 points: levels 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7 .. 1 -> 0  => 6/11
    s11 = score_detections(det, lab, classes=4, points=11)
    assert s11.classes[0].ap == pytest.approx(6 / 11, abs=1e-12)
    # 101 points: levels 0 .. .33 (34 of them) -> 1; .34 .. .66 (33) -> 2/3  => 56/101
    s101 = score_detections(det, lab, classes=4, points=101)
    assert s101.classes[0].ap == pytest.approx(56 / 101, abs=1e-12)


def test_ofast_recall_levels():
    # 10 labels, 3 TPs at precision 1, nothing else: recall stops at exactly 3/10.
    # -Ofast level 3 * (1/10) = 0.30000000000000004 > 0.3: missed -> 3/11; exact division -> 4/11.
    precision = np.ones(3)
    recall = np.array([1, 2, 3]) / 10
    assert average_precision(precision, recall, 11) == pytest.approx(3 / 11, abs=1e-15)
    assert average_precision(precision, recall, 11, exact_recall_levels=True) == pytest.approx(4 / 11, abs=1e-15)
    assert average_precision(np.zeros(0), np.zeros(0), 0) == 0.0


def test_auc_envelope():
    # TP, FP, TP over 2 labels: P = 1, 1/2, 2/3; R = 1/2, 1/2, 1. Envelope 1, 2/3, 2/3:
    # area = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert average_precision(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(5 / 6)


def test_low_score_duplicate_appended_first_uses_up_the_label():
    # Darknet's append-order quirk: a 0.1 duplicate appended before the 0.9 one claims the label
    # for the conf-thresh line, so the 0.9 detection is an FP there, while the ranking (by prob)
    # makes the 0.9 one the TP for the AP.
    lab = [labels((0, L0))]
    det = [dets((0, 0.1, L0), (0, 0.9, L0))]
    s = score_detections(det, lab, classes=1)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    assert s.classes[0].ap == pytest.approx(1.0)  # ranks: TP (P 1, R 1), dup FP (P 1/2, R 1)


def test_iou_threshold_is_strict_and_ties_go_to_the_earlier_label():
    # A 0.25x0.25 box centred in a 0.5x0.25 label: IoU = 0.0625 / 0.125 = 0.5 exactly.
    lab = [labels((0, (0.5, 0.5, 0.5, 0.25)))]
    det = [dets((0, 0.9, L3))]
    assert box_iou(det[0].boxes, lab[0].boxes)[0, 0] == np.float32(0.5)
    assert score_detections(det, lab, classes=1, iou_thresh=0.5).classes[0].ap == 0.0
    assert score_detections(det, lab, classes=1, iou_thresh=0.49).classes[0].ap == 1.0
    # two identical labels: both detections pick the first one, the second is a duplicate (FP)
    # and does not fall back to the other label: P/R = 1/(1/2), 1/2/(1/2) -> AP 1/2.
    lab = [labels((0, L0), (0, L0))]
    det = [dets((0, 0.9, L0), (0, 0.8, L0))]
    assert score_detections(det, lab, classes=1).classes[0].ap == pytest.approx(0.5)


def test_difficult_labels_drop_detections_from_the_ap_only():
    lab = [labels((0, L0))]
    dif = [labels((0, L1))]
    det = [dets((0, 0.9, L0), (0, 0.95, L1))]
    # without difficult: ranks 0.95 FP (P 0, R 0), 0.9 TP (P 1/2, R 1) -> AP 1/2
    assert score_detections(det, lab, classes=1).classes[0].ap == pytest.approx(0.5)
    s = score_detections(det, lab, classes=1, difficult=dif)
    assert s.classes[0].ap == pytest.approx(1.0)  # the 0.95 one is dropped from the ranking
    assert (s.tp, s.fp) == (1, 1) and s.detections_count == 1  # ... but still an FP at thresh


def test_thresh_is_strict_and_images_without_anything():
    lab = [labels((0, L0)), labels(), labels()]
    det = [dets((0, 0.25, L0)), ImageDetections.empty(), dets((0, 0.5, FAR))]
    s = score_detections(det, lab, classes=1, thresh=0.25)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)  # 0.25 is not > 0.25
    assert s.classes[0].ap == pytest.approx(0.5)  # ranks: FAR FP (0, 0), TP (1/2, 1)


def test_bad_class_ids_are_rejected():
    with pytest.raises(ValueError, match="label class id"):
        score_detections([ImageDetections.empty()], [labels((3, L0))], classes=2)
    with pytest.raises(ValueError, match="detection class id"):
        score_detections([dets((5, 0.5, L0))], [labels()], classes=2)


def test_darknet_array_order():
    # do_nms_sort sorts by class 0's prob, then (stably) by class 1's:
    # by class 0: r1 (.9), r0 (.5), r3 (.5), r2 (.1); by class 1: r2 (.3) first, the rest keep order.
    probs = torch.tensor([[0.5, 0.0], [0.9, 0.0], [0.1, 0.3], [0.5, 0.0]])
    assert darknet_array_order(probs).tolist() == [2, 1, 0, 3]
