"""End-to-end detection against Darknet's reference detections (real Yolo-Fastest weights).

Two levels:
* exact: Darknet's own preprocessed tensors -> darkcfg network (BN fused, as Darknet's
  detector does) -> decode + NMS must give Darknet's detections to 1e-4 in prob, 0.5 px;
* from the JPEG: darkcfg's whole pipeline (OpenCV decode, Darknet resize) must give the same
  classes, prob within 0.01 and corners within 2 px.  stb_image and libjpeg decode a few
  grey levels apart, so a detection within 0.01 of the threshold may appear or vanish.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.detect import decode, nms, to_pixel_list
from darkcfg.detect_api import Detector

REAL_CASES = ["real-yolo-fastest-1.1", "real-yolo-fastest-1.1-xl", "real-yolo-fastest-1.0",
              "real-yolo-fastest-1.0-xl", "real-yolo-fastest-1.1-body"]
IMAGES = ["dog", "person", "horses", "eagle", "giraffe"]
THRESH = 0.25


def _case(shared: Path, case: str) -> tuple[dict, darkcfg.Darknet]:
    meta = json.loads((shared / "conformance" / "cases" / case / "meta.json").read_text())
    model = darkcfg.load(shared / meta["cfg"], shared / meta["weights"]["file"]).fuse()
    return meta, model


_MODELS: dict = {}


def _cached(shared: Path, case: str) -> tuple[dict, darkcfg.Darknet]:
    if case not in _MODELS:
        _MODELS[case] = _case(shared, case)
    return _MODELS[case]


def _reference(shared: Path, case: str, image: str) -> dict:
    return json.loads((shared / "conformance" / "cases" / case / "detections" / f"{image}.json").read_text())


def _darknet_tensor(shared: Path, image: str) -> np.ndarray:
    if image == "dog":
        return np.load(shared / "conformance" / "cases" / "real-yolo-fastest-1.1" / "input.npy")
    return np.load(shared / "conformance" / "real-inputs" / f"{image}_320x320.npy")


@pytest.mark.parametrize("case", REAL_CASES)
@pytest.mark.parametrize("image", IMAGES)
def test_decode_exact_from_darknet_input(shared: Path, case: str, image: str) -> None:
    meta, model = _cached(shared, case)
    ref = _reference(shared, case, image)
    det = Detector(model)
    x = torch.from_numpy(_darknet_tensor(shared, image))[None]
    with torch.no_grad():
        outs = model.layer_outputs(x)
    size = (ref["image_w"], ref["image_h"])
    dets = decode([outs[i] for i in det.layer_indices], det.heads, 320, 320, [size], thresh=THRESH)[0]
    assert det.nms_kind == {0: "default", 1: "greedynms", 2: "diounms"}[ref["nms_kind_used"]]
    ours = to_pixel_list(nms(dets, 0.45, det.nms_kind, det.beta_nms), size, det.names, THRESH, order="prob")
    theirs = ref["detections"]
    assert len(ours) == len(theirs), ([(d.name, d.prob) for d in ours], [(t["class_name"], t["prob"]) for t in theirs])
    for d in theirs:
        match = [o for o in ours if o.class_id == d["class_index"] and abs(o.prob - d["prob"]) < 1e-4]
        assert match, f"{image}: Darknet's {d['class_name']} {d['prob']:.4f} not found"
        rel = np.array(match[0].rel_box)
        px = np.abs((rel - np.array(d["box_rel_xywh"])) * np.array([size[0], size[1], size[0], size[1]]))
        assert px.max() < 0.5, px


@pytest.mark.parametrize("case", REAL_CASES)
def test_detect_from_jpeg_matches_darknet(shared: Path, case: str) -> None:
    _, model = _cached(shared, case)
    paths = [shared / "darknet" / "data" / f"{name}.jpg" for name in IMAGES]
    results = model.detect(paths, thresh=THRESH, nms=0.45)
    for name, ours in zip(IMAGES, results):
        ref = _reference(shared, case, name)
        theirs = ref["detections"]
        used = set()
        for d in theirs:
            cands = [i for i, o in enumerate(ours) if i not in used and o.class_id == d["class_index"]
                     and abs(o.prob - d["prob"]) <= 0.01
                     and max(abs(a - b) for a, b in zip(o.box_int, d["box_px_ltrb_clamped"])) <= 2]
            if cands:
                used.add(cands[0])
            else:  # only a borderline detection may vanish
                assert d["prob"] - THRESH <= 0.01, f"{case} {name}: missing {d['class_name']} {d['prob']:.3f}"
        for i, o in enumerate(ours):
            if i not in used:
                assert o.prob - THRESH <= 0.01, f"{case} {name}: extra {o.name} {o.prob:.3f}"


def test_detect_api_inputs_and_errors(shared: Path, tmp_path: Path) -> None:
    import cv2

    _, model = _cached(shared, "real-yolo-fastest-1.1")
    path = shared / "darknet" / "data" / "dog.jpg"
    by_path = model.detect(path)[0]
    bgr = cv2.imread(str(path))
    by_array = model.detect(bgr)[0]
    rgb_tensor = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    by_tensor = model.detect(rgb_tensor)[0]
    assert [(d.class_id, round(d.prob, 5)) for d in by_path] == [(d.class_id, round(d.prob, 5)) for d in by_array]
    assert [(d.class_id, round(d.prob, 5)) for d in by_array] == [(d.class_id, round(d.prob, 5)) for d in by_tensor]
    assert {d.name for d in by_path} >= {"dog", "bicycle", "car"}
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(darkcfg.ImageError, match="corrupt.jpg"):
        model.detect([path, bad])
    with pytest.raises(darkcfg.ImageError, match="missing.jpg"):
        model.detect(tmp_path / "missing.jpg")
