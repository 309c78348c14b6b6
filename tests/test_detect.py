"""Tests for darkcfg.detect: hand-computed decode/correction/NMS and exact comparison with Darknet."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from darkcfg.detect import (
    Detection,
    DetectionHead,
    Detections,
    RegionHead,
    YoloHead,
    correct_boxes,
    decode,
    nms,
    nms_params,
    pairwise_diou,
    pairwise_iou,
    to_pixel_list,
)

# ------------------------------------------------------------------ synthetic yolo output

HEAD = YoloHead(classes=2, anchors=((10.0, 20.0), (30.0, 40.0)))


def _yolo_output(entries: int = 7, n: int = 2, h: int = 2, w: int = 2) -> torch.Tensor:
    """A (1, n*entries, h, w) yolo layer output with every objectness at 0."""
    return torch.zeros(1, n * entries, h, w)


def _set(out: torch.Tensor, anchor: int, row: int, col: int, values: list[float], entries: int = 7) -> None:
    out[0, anchor * entries : anchor * entries + len(values), row, col] = torch.tensor(values)


def test_decode_yolo_by_hand() -> None:
    out = _yolo_output()
    # anchor 1 (30x40), cell row 1 col 0: tx .5, ty .25, tw 0, th ln2, obj .8, classes .5/.9
    #   x = (0+.5)/2 = .25, y = (1+.25)/2 = .625, w = e^0·30/64 = .46875, h = e^ln2·40/64 = 1.25
    #   probs = .8·.5 = .4 and .8·.9 = .72 (both > .25)
    _set(out, 1, 1, 0, [0.5, 0.25, 0.0, math.log(2.0), 0.8, 0.5, 0.9])
    # anchor 0 (10x20), cell row 0 col 1: obj .3 -> probs .15 (zeroed, not > .25) and .27
    #   x = (1+.5)/2 = .75, y = (0+.5)/2 = .25, w = 10/64, h = 20/64
    _set(out, 0, 0, 1, [0.5, 0.5, 0.0, 0.0, 0.3, 0.5, 0.9])
    # obj exactly at thresh is not emitted (strict >)
    _set(out, 0, 1, 1, [0.5, 0.5, 0.0, 0.0, 0.25, 1.0, 1.0])
    (dets,) = decode([out], [HEAD], 64, 64, [(640, 480)], thresh=0.25)
    # emission order: cell (0,1) = cell 1 before cell (1,0) = cell 2
    torch.testing.assert_close(dets.boxes, torch.tensor([[0.75, 0.25, 10 / 64, 20 / 64], [0.25, 0.625, 0.46875, 1.25]]))
    torch.testing.assert_close(dets.objectness, torch.tensor([0.3, 0.8]))
    torch.testing.assert_close(dets.probs, torch.tensor([[0.0, 0.27], [0.4, 0.72]]))
    assert dets.head_index.tolist() == [0, 0]


def test_decode_orders_heads_then_cells_then_anchors_and_batches() -> None:
    a = _yolo_output()
    _set(a, 1, 0, 0, [0.5, 0.5, 0, 0, 0.9, 1, 1])
    _set(a, 0, 0, 0, [0.5, 0.5, 0, 0, 0.6, 1, 1])
    b = _yolo_output(h=1, w=1)
    _set(b, 0, 0, 0, [0.5, 0.5, 0, 0, 0.7, 1, 1])
    batch_a = torch.cat([a, torch.zeros_like(a)])
    batch_b = torch.cat([b, b])
    d0, d1 = decode([batch_a, batch_b], [HEAD, HEAD], 64, 64, [(10, 10), (20, 20)])
    assert d0.objectness.tolist() == pytest.approx([0.6, 0.9, 0.7])  # anchor 0, anchor 1, next head
    assert d0.head_index.tolist() == [0, 0, 1]
    assert d1.objectness.tolist() == pytest.approx([0.7]) and d1.head_index.tolist() == [1]


def test_decode_new_coords_and_nan() -> None:
    head = YoloHead(classes=2, anchors=((10.0, 20.0), (30.0, 40.0)), new_coords=True)
    out = _yolo_output()
    # new_coords: w = tw²·4·aw/netw = .25·4·10/64, h = 1²·4·20/64
    _set(out, 0, 0, 0, [0.5, 0.5, 0.5, 1.0, 0.9, 1.0, 0.0])
    _set(out, 1, 0, 0, [0.5, 0.5, 0.5, 1.0, float("nan"), 1.0, 0.0])  # NaN never passes obj > thresh
    (dets,) = decode([out], [head], 64, 64, [(64, 64)])
    assert len(dets) == 1
    torch.testing.assert_close(dets.boxes[0], torch.tensor([0.25, 0.25, 10 / 64, 80 / 64]))


def test_decode_gaussian_yolo() -> None:
    head = YoloHead(classes=1, anchors=((16.0, 32.0),), gaussian=True, yolo_point="left_top")
    out = torch.zeros(1, 10, 1, 2)
    # entries: x σx y σy w σw h σh obj cls ; cell col 1
    out[0, :, 0, 1] = torch.tensor([0.5, 0.2, 0.5, 0.2, 0.0, 0.2, 0.0, 0.2, 0.5, 0.8])
    (dets,) = decode([out], [head], 32, 32, [(32, 32)])
    # prob = .5·.8·(1 − .2) = .32 ; w = 16/32 = .5, h = 1 ; left_top: x += w/2, y += h/2
    #   x = (1+.5)/2 + .25 = 1.0, y = (0+.5)/1 + .5 = 1.0
    torch.testing.assert_close(dets.probs, torch.tensor([[0.32]]))
    torch.testing.assert_close(dets.boxes[0], torch.tensor([1.0, 1.0, 0.5, 1.0]))


def test_decode_region_flattened_records() -> None:
    head = RegionHead(classes=2, coords=4, num=1, anchors=((1.5, 2.0),))
    # lh=1, lw=2, n=1, size=7: records [cell][anchor][tx ty tw th obj c0 c1] in flat memory
    rec = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.6, 0.5, 0.5], [0.0, 0.0, math.log(2.0), 0.0, 0.2, 0.1, 0.9]])
    out = rec.reshape(1, 7, 1, 2)  # (N, n*size, h, w) holding the flattened buffer
    (dets,) = decode([out], [head], 64, 32, [(64, 32)])
    # x = (col + σ(0))/2, y = σ(0)/1, w = e^tw·1.5/2, h = 2/1; objectness forced to 1;
    # probs = obj·cls: .3, .3 and .02 (zeroed), .18 (zeroed, not > .25)
    torch.testing.assert_close(dets.boxes, torch.tensor([[0.25, 0.5, 0.75, 2.0], [0.75, 0.5, 1.5, 2.0]]))
    assert dets.objectness.tolist() == [1.0, 1.0]
    torch.testing.assert_close(dets.probs, torch.tensor([[0.3, 0.3], [0.0, 0.0]]))


def test_decode_detection_yolov1() -> None:
    head = DetectionHead(classes=2, coords=4, num=1, side=2, sqrt=True)
    cells = 4
    probs = torch.zeros(cells, 2)
    probs[3] = torch.tensor([0.25, 0.75])
    conf = torch.tensor([0.0, 0.0, 0.0, 0.8])
    boxes = torch.zeros(cells, 4)
    boxes[3] = torch.tensor([0.5, 0.5, 0.5, 0.4])
    flat = torch.cat([probs.flatten(), conf, boxes.flatten()]).unsqueeze(0)
    (dets,) = decode([flat], [head], 448, 448, [(200, 100)])
    assert len(dets) == 4  # every side²·num record is emitted
    # cell 3 = row 1, col 1: x = (.5+1)/2, y = .75, sqrt: w = .5² = .25, h = .4² = .16
    torch.testing.assert_close(dets.boxes[3], torch.tensor([0.75, 0.75, 0.25, 0.16]))
    torch.testing.assert_close(dets.probs[3], torch.tensor([0.0, 0.6]))  # .8·.25 = .2 <= .25
    (bug,) = decode([flat], [head], 448, 448, [(200, 100)], darknet_v1_pixels=True)
    torch.testing.assert_close(bug.boxes[3], torch.tensor([150.0, 75.0, 50.0, 16.0]))


def test_decode_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="channels"):
        decode([torch.zeros(1, 13, 2, 2)], [HEAD], 64, 64, [(1, 1)])
    with pytest.raises(ValueError, match="same number of classes"):
        decode([_yolo_output()] * 2, [HEAD, YoloHead(classes=3, anchors=((1.0, 1.0),))], 64, 64, [(1, 1)])
    with pytest.raises(ValueError, match="nms kind"):
        YoloHead(classes=1, anchors=((1.0, 1.0),), nms_kind="bogus")


# ------------------------------------------------------------------ box correction


def test_correct_boxes_letterbox_by_hand() -> None:
    # 768x576 into 320x320: 320/768 < 320/576 -> new 320x240; offset y = 80/2/320 = .125,
    # ratio_h = 240/320 = .75: y' = (y − .125)/.75, h' = h/.75; x, w unchanged.
    boxes = torch.tensor([[0.3, 0.5, 0.2, 0.75], [0.5, 0.125, 0.1, 0.3]])
    out = correct_boxes(boxes, 768, 576, 320, 320, letterbox=True)
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.5, 0.2, 1.0], [0.5, 0.0, 0.1, 0.4]]))
    assert correct_boxes(boxes, 768, 576, 320, 320, letterbox=False) is boxes


def test_correct_boxes_odd_difference_uses_fractional_offset() -> None:
    # 100x33 into 64x64: new_h = 33·64/100 = 21 (int); offset = 43/2/64 = .3359375 (not 21/64)
    boxes = torch.tensor([[0.5, 0.3359375, 1.0, 0.328125]])
    out = correct_boxes(boxes, 100, 33, 64, 64, letterbox=True)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0, 1.0, 1.0]]))


def test_decode_with_letterbox_end_to_end() -> None:
    out = _yolo_output(h=1, w=1)
    # x=y=.5 (centre), w = 40/64·... use anchor 0 (10x20): w = 10/64, h = 20/64
    _set(out, 0, 0, 0, [0.5, 0.5, 0.0, 0.0, 0.9, 1.0, 1.0])
    (dets,) = decode([out], [HEAD], 64, 64, [(128, 64)], letterbox=True)
    # 128x64 into 64x64 -> new 64x32, offset y .25, ratio_h .5: y stays .5, h = 20/64/.5
    torch.testing.assert_close(dets.boxes[0], torch.tensor([0.5, 0.5, 10 / 64, 40 / 64]))


# ------------------------------------------------------------------ NMS

# Boxes (cx, cy, w, h); all 0.4 x 0.4:
#   A = (.5, .5)   B = A shifted .1 in x   C = A shifted .2 in x   D = A shifted .12 in x
# IoU(A,B): overlap .3 x .4 = .12, union .32 − .12 = .20 -> .6
#   DIoU.6(A,B): d² = .01, enclosing .5 x .4 -> c² = .41, (.01/.41)^.6 = .10774 -> .49227
# IoU(A,C): overlap .2 x .4 = .08, union .24 -> .3333 ; IoU(B,C) = .6 (same geometry as A,B)
# IoU(A,D): overlap .28 x .4 = .112, union .208 -> .538462
#   d²/c² = .0144/(.52² + .4²) = .0144/.4304 = .033457
#   DIoU.6(A,D) = .538462 − .033457^.6 = .538462 − .130226 = .408237  (< .45: kept)
#   DIoU2(A,D)  = .538462 − .033457^2 = .538462 − .001119 = .537342  (> .45: suppressed)
A, B, C, D = (0.5, 0.5, 0.4, 0.4), (0.6, 0.5, 0.4, 0.4), (0.7, 0.5, 0.4, 0.4), (0.62, 0.5, 0.4, 0.4)


def _dets(
    boxes: list[tuple[float, ...]], probs: list[list[float]], objectness: list[float] | None = None
) -> Detections:
    n = len(boxes)
    return Detections(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(objectness if objectness is not None else [1.0] * n),
        torch.tensor(probs, dtype=torch.float32),
        torch.zeros(n, dtype=torch.int64),
    )


def test_pairwise_metrics_by_hand() -> None:
    boxes = torch.tensor([A, B, C, D])
    iou = pairwise_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(0.6, abs=1e-6)
    assert iou[0, 2].item() == pytest.approx(1 / 3, abs=1e-6)
    assert iou[0, 3].item() == pytest.approx(0.538462, abs=1e-6)
    diou = pairwise_diou(boxes, boxes, 0.6)
    assert diou[0, 1].item() == pytest.approx(0.49227, abs=1e-5)
    assert diou[0, 3].item() == pytest.approx(0.408237, abs=1e-5)
    assert pairwise_diou(boxes, boxes, 2.0)[0, 3].item() == pytest.approx(0.537342, abs=1e-5)
    # identical boxes: d = 0 -> DIoU = IoU = 1 ; disjoint boxes: IoU 0
    assert diou[2, 2].item() == pytest.approx(1.0)
    far = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]])
    assert pairwise_iou(far, far)[0, 1].item() == 0.0


def test_nms_default_chain_only_survivors_suppress() -> None:
    # A (.9) suppresses B (.8, IoU .6); C (.7) has IoU .33 with A and would be suppressed by B,
    # but B is gone, so C survives. Class 1 of B is untouched.
    dets = _dets([B, A, C], [[0.8, 0.5], [0.9, 0.0], [0.7, 0.0]])
    out = nms(dets, 0.45, "default")
    torch.testing.assert_close(out.probs, torch.tensor([[0.0, 0.5], [0.9, 0.0], [0.7, 0.0]]))


@pytest.mark.parametrize(
    "kind, beta, d_kept",
    [
        ("default", 0.6, False),  # IoU .538 > .45
        ("cornersnms", 0.6, False),  # plain IoU too
        ("greedynms", 2.0, True),  # DIoU with exponent .6 fixed (beta ignored): .408 <= .45
        ("diounms", 0.6, True),  # DIoU.6 = .408
        ("diounms", 2.0, False),  # DIoU2 = .537 > .45
    ],
)
def test_nms_kinds_by_hand(kind: str, beta: float, d_kept: bool) -> None:
    # A .9 vs D .8 and A vs B .7 (B: IoU .6, DIoU.6 .492, DIoU2 .597 -> suppressed by every kind)
    dets = _dets([A, D, B], [[0.9], [0.8], [0.7]])
    out = nms(dets, 0.45, kind, beta)
    assert out.probs[:, 0].tolist() == pytest.approx([0.9, 0.8 if d_kept else 0.0, 0.0])


def test_nms_drops_zero_objectness_and_keeps_order() -> None:
    dets = _dets([A, A, C], [[0.0, 0.0], [0.6, 0.0], [0.0, 0.9]], objectness=[0.0, 0.6, 0.9])
    out = nms(dets)
    assert len(out) == 2 and out.objectness.tolist() == pytest.approx([0.6, 0.9])


def test_nms_higher_prob_later_in_emission_order_wins() -> None:
    dets = _dets([A, B], [[0.5], [0.95]])
    assert nms(dets).probs[:, 0].tolist() == pytest.approx([0.0, 0.95])


def test_nms_params_takes_last_head() -> None:
    heads = [
        YoloHead(1, ((1.0, 1.0),), nms_kind="diounms", beta_nms=0.3),
        YoloHead(1, ((1.0, 1.0),), nms_kind="greedynms"),
    ]
    assert nms_params(heads) == ("greedynms", 0.6)
    assert nms_params([RegionHead(1, 4, 1, ((1.0, 1.0),))]) == ("default", 0.6)
    assert nms_params([DetectionHead(1, 4, 1, 7)]) == ("default", 0.6)


# ------------------------------------------------------------------ to_pixel_list


def test_to_pixel_list_entries_order_and_clamps() -> None:
    dets = _dets(
        [(0.9, 0.5, 0.4, 0.2), (0.1, 0.5, 0.4, 1.2), (0.5, 0.5, 0.2, 0.2)],
        [[0.3, 0.6, 0.0], [0.5, 0.0, 0.0], [0.2, 0.0, 0.9]],
    )
    names = ["a", "b", "dont_show_c"]
    out = to_pixel_list(dets, (100, 50), names, thresh=0.25)
    # left edges: box1 −.1, box2 .4, box0 .7 ; box0 reports best class b first, then a ;
    # box2's only class is dont_show -> skipped
    expected = [("a", pytest.approx(0.5)), ("b", pytest.approx(0.6)), ("a", pytest.approx(0.3))]
    assert [(d.name, d.prob) for d in out] == expected
    first = out[0]
    # (x−w/2)·100 = −10 -> clamped to 0 ; right 30 ; top (.5−.6)·50 = −5 -> 0 ; bottom 55 -> 49
    assert first.box == pytest.approx((0.0, 0.0, 30.0, 49.0))
    assert first.box_int == (0, 0, 30, 49)
    assert first.ltwh(100, 50) == (-10, -5, 40, 60)
    assert out[1].box == pytest.approx((70.0, 20.0, 99.0, 30.0))  # right 110 -> 99
    by_prob = to_pixel_list(dets, (100, 50), names, order="prob")
    assert [d.prob for d in by_prob] == pytest.approx([0.6, 0.5, 0.3])


def test_detection_box_int_truncates() -> None:
    d = Detection(0, "x", 0.5, (453.855, 78.9, 684.2, 180.99), 0.9, (0.5, 0.5, 0.1, 0.1))
    assert d.box_int == (453, 78, 684, 180)


# ------------------------------------------------------------------ exact comparison with Darknet

REAL_CASES = [
    "real-yolo-fastest-1.1",
    "real-yolo-fastest-1.1-xl",
    "real-yolo-fastest-1.0",
    "real-yolo-fastest-1.0-xl",
    "real-yolo-fastest-1.1-body",
]


def _yolo_heads_from_cfg(cfg: Path) -> list[YoloHead]:
    """Read mask/anchors/classes/nms_kind/beta_nms of each [yolo] section (first key wins).

    All five yolo-fastest cfgs have two [yolo] sections: mask=3,4,5 (the 10x10 head) then
    mask=0,1,2 (the 20x20 head), anchors in network pixels, nms_kind=greedynms, beta_nms=0.6.
    """
    heads = []
    for section in re.split(r"^\s*\[", cfg.read_text(), flags=re.M):
        if not section.startswith("yolo]"):
            continue
        keys: dict[str, str] = {}
        for line in section.splitlines()[1:]:
            line = re.sub(r"\s+", "", line.split("#")[0])
            if "=" in line:
                k, v = line.split("=", 1)
                keys.setdefault(k, v)
        vals = [float(v) for v in keys["anchors"].split(",") if v]
        pairs = [(vals[2 * i], vals[2 * i + 1]) for i in range(len(vals) // 2)]
        mask = [int(v) for v in keys["mask"].split(",")]
        heads.append(
            YoloHead(
                classes=int(keys["classes"]),
                anchors=tuple(pairs[m] for m in mask),
                scale_x_y=float(keys.get("scale_x_y", 1)),
                nms_kind=keys.get("nms_kind", "default"),
                beta_nms=float(keys.get("beta_nms", 0.6)),
            )
        )
    return heads


def _match(ours: list[Detection], ref: list[dict]) -> list[tuple[Detection, dict]]:
    pairs = []
    pool = list(ours)
    for r in ref:
        same = [d for d in pool if d.class_id == r["class_index"]]
        assert same, f"darknet reports {r['class_name']} {r['prob']:.4f}, we do not"
        best = min(same, key=lambda d: np.abs(np.array(d.rel_box) - r["box_rel_xywh"]).max())
        pool.remove(best)
        pairs.append((best, r))
    return pairs


@pytest.mark.parametrize("case", REAL_CASES)
def test_decode_nms_matches_darknet_on_dog(shared: Path, case: str) -> None:
    """Decode + NMS of darknet's own head outputs vs darknet's detections (dog.jpg, 320x320).

    expected.npz was dumped without BN fusion, the detections JSON with fusion, so probs differ
    by float rounding only. Measured max |Δprob| / max |Δrel box|: 1.1 1.7e-6 / 3.0e-7,
    1.1-xl 3.3e-7 / 3.6e-7, 1.0 1.3e-6 / 4.2e-7, 1.0-xl 1.3e-6 / 5.4e-7 (≤ 3.2e-4 px), 1.1-body:
    no candidates (no person in dog.jpg) on both sides. Plain-IoU NMS would keep one detection
    fewer on 1.1 and 1.0, so these cases do check greedynms = DIoU. Integer corners and -ext_output
    values agree exactly in every case.
    """
    case_dir = shared / "conformance" / "cases" / case
    meta = json.loads((case_dir / "meta.json").read_text())
    cfg = shared / meta["cfg"]
    heads = _yolo_heads_from_cfg(cfg)
    assert len(heads) == len(meta["output_layers"]) == 2
    npz = np.load(case_dir / "expected.npz")
    outputs = [torch.from_numpy(npz[f"out_{i}"]).unsqueeze(0) for i in meta["output_layers"]]
    ref = json.loads((case_dir / "detections" / "dog.json").read_text())
    size = (ref["image_w"], ref["image_h"])
    (names_file,) = cfg.parent.glob("*.names")
    names = names_file.read_text().splitlines()

    (dets,) = decode(outputs, heads, ref["network_w"], ref["network_h"], [size], ref["thresh"], ref["hier_thresh"])
    assert len(dets) == ref["candidate_boxes_before_nms"]
    kind, beta = nms_params(heads)
    assert (kind, beta) == ("greedynms", ref["beta_nms"])
    ours = to_pixel_list(nms(dets, ref["nms"], kind, beta), size, names, ref["thresh"])
    assert len(ours) == len(ref["detections"])
    for mine, theirs in _match(ours, ref["detections"]):
        assert mine.name == theirs["class_name"]
        assert abs(mine.prob - theirs["prob"]) < 1e-4
        assert abs(mine.objectness - theirs["objectness"]) < 1e-4
        assert np.abs(np.array(mine.rel_box) - theirs["box_rel_xywh"]).max() < 1e-5  # ~0.01 px
        # integer outputs: exact today; allow a 1-px flip should float order ever change
        assert np.abs(np.array(mine.box_int) - theirs["box_px_ltrb_clamped"]).max() <= 1
        assert np.abs(np.array(mine.ltwh(*size)) - theirs["box_px_left_top_width_height_rounded"]).max() <= 1


# ------------------------------------------------------------------ hierarchical [region] (YOLO9000)
#
# Darknet (AlexeyAB) `detector test` -> get_network_boxes(..., hier_thresh, map=0, relative=1)
# -> custom_get_region_detections (hier_thresh unused) -> get_region_boxes(l, 1, 1, thresh, .., map=0):
# hierarchy_predictions(only_leaves=0) in place, then from the LAST node down the first one with
# absolute prob > .5 is kept (prob = that product, gated by objectness > thresh, not multiplied by it),
# every other node is 0. With a map: class j = obj * P[map[j]], kept if > thresh.

from darkcfg.detect import REGION_TREE_THRESH  # noqa: E402
from darkcfg.detect_api import Detector, heads_from_graph, read_class_map  # noqa: E402
from darkcfg.layers.functional import read_tree  # noqa: E402

# 2 roots (a, b) with 2 children each; one group per parent
TINY_TREE = "a -1\nb -1\na0 0\na1 0\nb0 1\nb1 1\n"


def _tiny_tree(tmp_path: Path):
    path = tmp_path / "tiny.tree"
    path.write_text(TINY_TREE)
    return read_tree(str(path))


def _tree_record(obj: float, cond: list[float]) -> torch.Tensor:
    """One cell, one anchor: [tx ty tw th obj p0..p5] where p are the tree-softmax (conditional)
    outputs of the [region] layer; the box is (.5, .5, 1, 1) on a 1x1 grid with anchor (1, 1)."""
    return torch.tensor([0.0, 0.0, 0.0, 0.0, obj] + cond).reshape(1, 11, 1, 1)


def _f32(*xs: float) -> float:
    """float32 product accumulated left to right (root first), as darknet does it."""
    p = np.float32(1.0)
    for x in xs:
        p = np.float32(p * np.float32(x))
    return float(p)


def test_region_tree_hand_computed(tmp_path: Path) -> None:
    head = RegionHead(classes=6, coords=4, num=1, anchors=((1.0, 1.0),), tree=_tiny_tree(tmp_path))
    assert hash(head) == hash(RegionHead(6, 4, 1, ((1.0, 1.0),), tree=_tiny_tree(tmp_path)))  # tuples inside
    # conditionals a .7 b .3 | a0 .8 a1 .2 | b0 .6 b1 .4
    # absolute: a .7, b .3, a0 .7·.8 = .56, a1 .14, b0 .18, b1 .12
    # scan from the last node: b1 .12, b0 .18, a1 .14 are not > .5; a0 .56 is -> class 2 (a0), prob .56
    # (NOT obj·.56 = .504); a (.7 > .5 too) is zeroed because a0 was found first.
    out = _tree_record(0.9, [0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
    (dets,) = decode([out], [head], 32, 32, [(32, 32)], thresh=0.25)
    expected = torch.zeros(1, 6)
    expected[0, 2] = _f32(0.7, 0.8)
    assert torch.equal(dets.probs, expected)
    assert dets.objectness.tolist() == [1.0]
    torch.testing.assert_close(dets.boxes, torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    (entry,) = to_pixel_list(nms(dets), (32, 32), ["a", "b", "a0", "a1", "b0", "b1"], 0.25)
    assert (entry.class_id, entry.name) == (2, "a0")
    assert entry.prob == pytest.approx(0.56, abs=1e-6)


def test_region_tree_descent_stops_at_half_and_ignores_hier_thresh(tmp_path: Path) -> None:
    head = RegionHead(classes=6, coords=4, num=1, anchors=((1.0, 1.0),), tree=_tiny_tree(tmp_path))
    # a .7, a0 .6 -> absolute .42, not > .5: the descent stops at a -> class 0 with prob .7
    out = _tree_record(0.9, [0.7, 0.3, 0.6, 0.4, 0.5, 0.5])
    runs = [decode([out], [head], 32, 32, [(32, 32)], thresh=0.25, hier_thresh=h)[0].probs for h in (0.1, 0.5, 0.9)]
    expected = torch.tensor([[_f32(0.7), 0, 0, 0, 0, 0]])
    for probs in runs:  # darknet never passes hier_thresh down: the cut is the constant .5
        assert torch.equal(probs, expected)
    assert REGION_TREE_THRESH == 0.5
    # exactly .5 is not above: a .5 -> nothing at all (every node zero)
    out = _tree_record(0.9, [0.5, 0.5, 1.0, 0.0, 1.0, 0.0])
    (dets,) = decode([out], [head], 32, 32, [(32, 32)])
    assert not dets.probs.any() and len(dets) == 1  # still a candidate (objectness forced to 1)
    # a root with .9 and a child .9·.9 = .81: the child (index 4) wins, prob .81
    out = _tree_record(0.9, [0.1, 0.9, 0.5, 0.5, 0.9, 0.1])
    (dets,) = decode([out], [head], 32, 32, [(32, 32)])
    assert dets.probs[0].nonzero().flatten().tolist() == [4]
    assert dets.probs[0, 4].item() == _f32(0.9, 0.9)


def test_region_tree_objectness_gates_prob_is_not_thresholded(tmp_path: Path) -> None:
    head = RegionHead(classes=6, coords=4, num=1, anchors=((1.0, 1.0),), tree=_tiny_tree(tmp_path))
    cond = [0.7, 0.3, 0.8, 0.2, 0.6, 0.4]
    # objectness .2 is not > thresh .25: the found node's prob is set to 0
    (dets,) = decode([_tree_record(0.2, cond)], [head], 32, 32, [(32, 32)], thresh=0.25)
    assert not dets.probs.any()
    # thresh .6 > .56: darknet keeps prob .56 in the detection (scale .9 > .6 gates, not the prob) ...
    (dets,) = decode([_tree_record(0.9, cond)], [head], 32, 32, [(32, 32)], thresh=0.6)
    assert dets.probs[0, 2].item() == _f32(0.7, 0.8)
    # ... and only the printout drops it (prob must be > thresh there)
    assert to_pixel_list(dets, (32, 32), None, 0.6) == []
    # classfix=-1: objectness below .5 becomes 0 before any of this
    fixed = RegionHead(6, 4, 1, ((1.0, 1.0),), tree=head.tree, classfix=-1)
    (dets,) = decode([_tree_record(0.45, cond)], [fixed], 32, 32, [(32, 32)], thresh=0.25)
    assert not dets.probs.any()


def test_region_tree_parent_after_child_uses_raw_value(tmp_path: Path) -> None:
    # node 0 "x" has parent 2 "m", which has parent 1 "r". hierarchy_predictions walks j = 0, 1, 2
    # in place: p0 *= p2 while p2 is still its raw .8 -> x = .9·.8 = .72 (r's .7 is NOT included);
    # then p2 *= p1 -> m = .8·.7 = .56. Last node above .5 is m (index 2): class 2, prob .56.
    path = tmp_path / "odd.tree"
    path.write_text("x 2\nr -1\nm 1\n")
    head = RegionHead(classes=3, coords=4, num=1, anchors=((1.0, 1.0),), tree=read_tree(str(path)))
    out = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.7, 0.8]).reshape(1, 8, 1, 1)
    (dets,) = decode([out], [head], 32, 32, [(32, 32)])
    assert dets.probs.tolist() == [[0.0, 0.0, _f32(0.8, 0.7)]]
    assert head._plan.apply(out.reshape(1, 8)[:, 5:]).tolist() == [[_f32(0.9, 0.8), _f32(0.7), _f32(0.8, 0.7)]]


def test_region_tree_map_remaps_classes(tmp_path: Path) -> None:
    tree = _tiny_tree(tmp_path)
    map_file = tmp_path / "tiny.map"
    map_file.write_text("4\n2\n1\n")
    class_map = read_class_map(map_file)
    assert class_map == (4, 2, 1)
    head = RegionHead(classes=6, coords=4, num=1, anchors=((1.0, 1.0),), tree=tree, map=class_map)
    assert head.out_classes == 3
    # absolute: b0 .3·.6 = .18, a0 .7·.8 = .56, b .3; class j = obj·P[map[j]] kept if > .25:
    #   j=0: .9·.18 = .162 -> 0;  j=1: .9·.56 = .504;  j=2: .9·.3 = .27
    out = _tree_record(0.9, [0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
    (dets,) = decode([out], [head], 32, 32, [(32, 32)], thresh=0.25)
    assert dets.probs.shape == (1, 3)
    assert dets.probs[0].tolist() == [0.0, _f32(0.9, _f32(0.7, 0.8)), _f32(0.9, 0.3)]
    entries = to_pixel_list(nms(dets), (32, 32), ["cat", "dog", "cow"], 0.25)
    assert [(e.name, round(e.prob, 4)) for e in entries] == [("dog", 0.504), ("cow", 0.27)]
    with pytest.raises(ValueError, match="tree indices"):
        RegionHead(6, 4, 1, ((1.0, 1.0),), tree=tree, map=(6,))
    with pytest.raises(ValueError, match="only used with a tree"):
        RegionHead(6, 4, 1, ((1.0, 1.0),), map=(1,))
    with pytest.raises(ValueError, match="nodes"):
        RegionHead(7, 4, 1, ((1.0, 1.0),), tree=tree)


def test_heads_from_graph_builds_tree_region(tmp_path: Path) -> None:
    import darkcfg

    _tiny_tree(tmp_path)
    (tmp_path / "tiny.map").write_text("4\n2\n")
    cfg = tmp_path / "tiny9k.cfg"
    cfg.write_text("[net]\nwidth=1\nheight=1\nchannels=11\n\n[region]\nclasses=6\ncoords=4\nnum=1\n"
                   "anchors=1,1\nsoftmax=1\ntree=tiny.tree\nmap=tiny.map\n")
    model = darkcfg.load(cfg)
    (index,), (head,) = heads_from_graph(model.graph)
    assert index == 0 and isinstance(head, RegionHead)
    assert head.tree is not None and head.tree.names == ("a", "b", "a0", "a1", "b0", "b1")
    assert head.map is None and head.out_classes == 6  # `detector test` decodes with map = 0
    _, (mapped,) = heads_from_graph(model.graph, apply_map=True)
    assert mapped.map == (4, 2) and mapped.out_classes == 2
    # no names file anywhere: the tree's node names
    assert Detector(model).names == ["a", "b", "a0", "a1", "b0", "b1"]


def _sequential_hierarchy(x: np.ndarray, parent: list[int]) -> np.ndarray:
    """tree.c hierarchy_predictions written as darknet's loop (float32, in place)."""
    p = x.astype(np.float32).copy()
    for j, par in enumerate(parent[: p.shape[-1]]):
        if par >= 0:
            p[..., j] = p[..., j] * p[..., par]
    return p


def test_region_tree_yolo9000_head_output(shared: Path) -> None:
    """The real yolo9000 [region] output (synthetic weights, 128x128) decoded with the real 9k.tree."""
    from darkcfg.cfg import read_cfg
    from darkcfg.graph import build_graph

    case_dir = shared / "conformance" / "cases" / "cfg-yolo9000"
    meta = json.loads((case_dir / "meta.json").read_text())
    graph = build_graph(read_cfg(shared / meta["cfg"]), (meta["width"], meta["height"]))
    (layer,), (head,) = heads_from_graph(graph)
    assert isinstance(head, RegionHead) and head.classes == 9418 and head.num == 3
    assert head.tree is not None and len(head.tree.names) == 9418 and head.map is None
    out = torch.from_numpy(np.load(case_dir / "expected.npz")[f"out_{layer}"]).unsqueeze(0)
    size = head.coords + 1 + head.classes
    rec = out.reshape(-1, size)  # [cell][anchor] records
    cls = rec[:, 5:].numpy()
    absolute = _sequential_hierarchy(cls, list(head.tree.parent))
    assert np.array_equal(head._plan.apply(rec[:, 5:]).numpy(), absolute)
    assert np.all((absolute >= 0) & (absolute <= 1))

    def check(dets: Detections, cls: np.ndarray, obj: np.ndarray, thresh: float) -> int:
        absolute = _sequential_hierarchy(cls, list(head.tree.parent))
        probs = dets.probs.numpy()
        assert probs.shape == (rec.shape[0], 9418) and np.all((probs >= 0) & (probs <= 1))
        reported = 0
        for i, row in enumerate(probs):
            nz = np.flatnonzero(row)
            assert len(nz) <= 1  # one node per detection
            above = np.flatnonzero(absolute[i] > 0.5)
            if len(nz) == 0:
                assert len(above) == 0 or not obj[i] > thresh
                continue
            (k,) = nz
            assert k == above.max() and obj[i] > thresh
            # the prob is the product of conditionals down the tree path (root first, float32)
            path = [k]
            while head.tree.parent[path[-1]] >= 0:
                path.append(head.tree.parent[path[-1]])
            assert row[k] == _f32(*[cls[i, n] for n in reversed(path)])
            reported += 1
        return reported

    (dets,) = decode([out], [head], 128, 128, [(128, 128)], thresh=0.25)
    assert check(dets, cls, rec[:, 4].numpy(), 0.25) == 0  # synthetic weights: no node above .5

    # make one record confident along the path to the deepest node: conditional .97 per level
    depth = [0] * 9418
    for j, par in enumerate(head.tree.parent):
        depth[j] = depth[par] + 1 if par >= 0 else 0
    leaf = int(np.argmax(depth))
    boosted = out.clone()
    brec = boosted.view(-1, size)
    node, target = leaf, 7
    while node >= 0:
        brec[target, 5 + node] = 0.97
        node = head.tree.parent[node]
    brec[target, 4] = 0.9
    (dets,) = decode([boosted], [head], 128, 128, [(128, 128)], thresh=0.25)
    assert check(dets, brec[:, 5:].numpy(), brec[:, 4].numpy(), 0.25) == 1
    assert dets.probs[target].nonzero().flatten().tolist() == [leaf]
    assert dets.probs[target, leaf].item() == pytest.approx(0.97 ** (depth[leaf] + 1), rel=1e-5)
    (entry,) = to_pixel_list(nms(dets), (128, 128), list(head.tree.names), 0.25)
    assert entry.class_id == leaf and entry.name == head.tree.names[leaf]

    # the cfg's map (coco9k.map, 80 lines) as `detector valid` would apply it
    _, (mapped,) = heads_from_graph(graph, apply_map=True)
    assert mapped.map is not None and len(mapped.map) == 80 and mapped.out_classes == 80
    (mdets,) = decode([boosted], [mapped], 128, 128, [(128, 128)], thresh=0.0)
    absolute = _sequential_hierarchy(brec[:, 5:].numpy(), list(head.tree.parent))
    want = brec[:, 4:5].numpy() * absolute[:, list(mapped.map)]
    assert np.array_equal(mdets.probs.numpy(), np.where(want > 0, want, 0))


# ------------------------------------------------------------------ fast NMS = dense NMS


@pytest.mark.parametrize("pair_matrix_max, small_max", [(0, 0), (2048, 0), (2048, 256)])  # 0, 0: the pair search
@pytest.mark.parametrize("kind, beta", [("default", 0.6), ("greedynms", 0.6), ("diounms", 2.0)])
def test_sparse_nms_equals_dense_pass(kind: str, beta: float, pair_matrix_max: int, small_max: int,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The pair search + greedy rounds (small_max 0), and the one-matrix pass for few detections
    (small_max 256), give bit-identical probs to the per-class dense matrices and sequential pass,
    on random boxes with ties, duplicates, zero sizes and several sizes."""
    from darkcfg import detect as D
    from darkcfg.detect import _nms_dense

    monkeypatch.setattr(D, "DENSE_PAIRS_MAX", pair_matrix_max)
    monkeypatch.setattr(D, "SMALL_NMS_MAX", small_max)
    gen = torch.Generator().manual_seed(7)
    for trial in range(40):
        m = int(torch.randint(2, 150, (), generator=gen))
        boxes = torch.cat([torch.rand(m, 2, generator=gen),
                           torch.rand(m, 2, generator=gen) * (0.6 if trial % 2 else 0.1)], 1)
        if trial % 5 == 0:
            boxes = torch.round(boxes * 8) / 8  # exact duplicates and zero sizes
        probs = torch.rand(m, 3, generator=gen)
        probs[probs < 0.4] = 0
        if trial % 3 == 0:
            probs = torch.round(probs * 4) / 4  # prob ties
        dets = Detections(boxes, torch.ones(m), probs, torch.zeros(m, dtype=torch.int64))
        thresh = 0.0 if trial % 4 == 0 else float(torch.rand((), generator=gen))
        dense = probs.clone()
        _nms_dense(dets, dense, thresh, kind, beta)
        assert torch.equal(nms(dets, thresh, kind, beta).probs, dense), (trial, thresh)


def test_to_pixel_list_max_det_keeps_highest() -> None:
    dets = _dets([A, B, C], [[0.5, 0.9], [0.8, 0.0], [0.3, 0.0]])
    full = to_pixel_list(dets, (100, 100), thresh=0.25, order="prob")
    top = to_pixel_list(dets, (100, 100), thresh=0.25, order="prob", max_det=2)
    assert [d.prob for d in top] == [d.prob for d in full[:2]] == pytest.approx([0.9, 0.8])
    assert to_pixel_list(dets, (100, 100), thresh=0.25, max_det=0) == []
    assert len(to_pixel_list(dets, (100, 100), thresh=0.25, order="left", max_det=3)) == 3
    with pytest.raises(ValueError, match="max_det"):
        to_pixel_list(dets, (100, 100), max_det=-1)
