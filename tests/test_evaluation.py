"""darkcfg.evaluate / `darkcfg map` / `darkcfg valid` plumbing on the project's own detector cfg
(random weights, synthetic images): label layout, coordinates, output formats, safety."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.cli import main
from darkcfg.errors import DarkcfgError
from darkcfg.evaluation import COCO_CATEGORY_IDS, collect, evaluate
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
OWN_DETECTOR = REPO / "cfgs" / "tiny-yolo-all.cfg"
SIZES = [(80, 48), (50, 70), (64, 64)]
STEMS = ["000000000042", "000000000007", "000000001234"]


@pytest.fixture()
def dataset(tmp_path: Path) -> dict:
    """Three images in Darknet's COCO layout (images/train2017 -> labels/train2017), empty labels,
    a relative list and a .data; plus the own detector with synthetic weights beside its cfg."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    root = tmp_path / "coco"
    (root / "images" / "train2017").mkdir(parents=True)
    (root / "labels" / "train2017").mkdir(parents=True)
    for stem, (w, h) in zip(STEMS, SIZES):
        cv2.imwrite(str(root / "images" / "train2017" / f"{stem}.png"), rng.integers(0, 255, (h, w, 3), np.uint8))
        (root / "labels" / "train2017" / f"{stem}.txt").write_text("")
    (root / "list.txt").write_text("".join(f"images/train2017/{s}.png\n" for s in STEMS))
    (root / "obj.names").write_text("a\nb\n")
    data = root / "obj.data"
    data.write_text("classes=2\nvalid=list.txt\nnames=obj.names\neval=coco\nresults=results\n")
    cfg = tmp_path / "det.cfg"
    # at 32x32 the heads emit ~4x fewer candidates than at the cfg's 64x64: cheaper NMS, same code paths
    cfg.write_text(OWN_DETECTOR.read_text().replace("width=64", "width=32").replace("height=64", "height=32"))
    weights = tmp_path / "det.weights"
    weights.write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=3))  # well-scaled, finite boxes
    model = darkcfg.load(cfg, weights)
    return {"root": root, "data": data, "cfg": cfg, "model": model}


def _label_own_top_detections(ds: dict) -> int:
    """Write, per image, its own highest-scoring map detection with a sane box (random weights also
    give zero-size and infinite boxes) as the only label."""
    found = collect(ds["model"], ds["data"], workers=0, root=ds["root"])
    n = 0
    for stem, dets in zip(STEMS, found.detections):
        w, h = dets.boxes[:, 2], dets.boxes[:, 3]
        sane = (w > 0.01) & (w < 1) & (h > 0.01) & (h < 1)
        if sane.any():
            k = int(np.argmax(np.where(sane, dets.probs, -1)))
            x, y, w, h = dets.boxes[k].tolist()
            (ds["root"] / "labels" / "train2017" / f"{stem}.txt").write_text(
                f"{dets.classes[k]} {x:.9f} {y:.9f} {w:.9f} {h:.9f}\n")
            n += 1
    return n


def test_labels_from_own_detections_are_all_found(dataset: dict) -> None:
    n = _label_own_top_detections(dataset)
    assert n == len(STEMS)
    model = dataset["model"].train()  # a training loop's model: evaluated in eval mode, handed back as it was
    result = evaluate(model, dataset["data"], thresh=0.0, workers=0, root=dataset["root"], progress=False)
    assert model.training
    # every label is matched by the detection it was made from (or an earlier-appended twin):
    assert (result.tp, result.fn) == (n, 0)
    assert result.unique_truth_count == n and result.images == len(STEMS)
    assert result.detections_count > 0 and 0 < result.map <= 1
    assert [c.name for c in result.classes] == ["a", "b"]
    again = evaluate(model, {"valid": "list.txt", "names": "obj.names"}, thresh=0.0, workers=1, batch=2,
                     root=dataset["root"])  # a dict, loader processes, other batching: same numbers
    assert (again.map, again.tp, again.fp) == (result.map, result.tp, result.fp)
    boxed = evaluate(model, dataset["data"], letterbox=True, workers=0, root=dataset["root"])
    assert boxed.unique_truth_count == n  # letterboxed inputs go through correct_yolo_boxes


def test_cli_map_text_and_json(dataset: dict, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    _label_own_top_detections(dataset)
    monkeypatch.chdir(dataset["root"])  # Darknet's rule: paths relative to the working directory
    assert main(["map", "obj.data", str(dataset["cfg"]), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "class_id = 0, name = a, ap = " in out and "mean average precision (mAP@0.50) = " in out
    assert "for conf_thresh = 0.25, TP = " in out
    assert main(["map", "obj.data", str(dataset["cfg"]), "--workers", "0", "--json", "--iou-thresh", "0.75",
                 "--thresh", "0.0"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["iou_thresh"] == 0.75 and got["thresh"] == 0.0 and got["points"] == 0
    assert got["tp"] + got["fn"] == len(STEMS)
    assert [c["name"] for c in got["classes"]] == ["a", "b"]
    with pytest.raises(SystemExit):
        main(["map", "obj.data", str(dataset["cfg"]), "--points", "7"])
    assert "invalid choice: 7" in capsys.readouterr().err


def test_valid_coco_and_voc(dataset: dict, capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(dataset["root"])
    assert main(["valid", "obj.data", str(dataset["cfg"]), "--workers", "0"]) == 0
    out_file = dataset["root"] / "results" / "coco_results.json"
    assert Path(capsys.readouterr().out.strip()) == out_file  # results= resolved like every .data path
    entries = json.loads(out_file.read_text())
    found = collect(dataset["model"].fuse(), dataset["data"], map=False, valid=True, workers=0)
    assert len(entries) == sum(len(d) for d in found.valid_detections) > 0
    assert {e["image_id"] for e in entries} <= {42, 7, 1234}
    named = tmp_path / "cat.png"
    named.write_bytes((dataset["root"] / "images" / "train2017" / f"{STEMS[0]}.png").read_bytes())
    (tmp_path / "cat.txt").write_text(f"{named}\n")
    odd = collect(dataset["model"], {"valid": str(tmp_path / "cat.txt"), "names": "obj.names", "eval": "coco"},
                  map=False, valid=True, workers=0)
    with pytest.warns(UserWarning, match="image_id 0"):
        assert {e["image_id"] for e in json.loads(odd.valid_files()["coco_results.json"])} == {0}
    assert {e["category_id"] for e in entries} <= set(COCO_CATEGORY_IDS[:2])
    for e in entries:
        x, y, w, h = e["bbox"]
        img_w, img_h = SIZES[[42, 7, 1234].index(e["image_id"])]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= img_w + 1e-4 and y + h <= img_h + 1e-4
        assert 0.001 < e["score"] <= 1
    # never overwrite silently; never overwrite an input even when asked
    before = out_file.read_bytes()
    assert main(["valid", "obj.data", str(dataset["cfg"]), "--workers", "0"]) == 2
    assert "already exists" in capsys.readouterr().err and out_file.read_bytes() == before
    assert main(["valid", "obj.data", str(dataset["cfg"]), "--workers", "0", "--overwrite"]) == 0
    capsys.readouterr()
    (dataset["root"] / "coco_results.json").write_text("classes=2\nvalid=list.txt\nnames=obj.names\neval=coco\n")
    assert main(["valid", "coco_results.json", str(dataset["cfg"]), "--out", ".", "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err

    (dataset["root"] / "voc.data").write_text("classes=2\nvalid=list.txt\nnames=obj.names\n")  # eval: voc
    assert main(["valid", "voc.data", str(dataset["cfg"]), "--out", "voc", "--workers", "0"]) == 0
    capsys.readouterr()
    lines = (dataset["root"] / "voc" / "comp4_det_test_a.txt").read_text().splitlines() + \
        (dataset["root"] / "voc" / "comp4_det_test_b.txt").read_text().splitlines()
    assert len(lines) == len(entries)
    for line in lines:
        stem, score, x1, y1, x2, y2 = line.split()
        img_w, img_h = SIZES[STEMS.index(stem)]
        assert 1 <= float(x1) <= float(x2) <= img_w and 1 <= float(y1) <= float(y2) <= img_h


def test_errors_name_the_problem(dataset: dict, tmp_path: Path) -> None:
    model = dataset["model"]
    with pytest.raises(DarkcfgError, match="points"):
        collect(model, dataset["data"], workers=0, root=dataset["root"]).score(points=5)
    with pytest.raises(DarkcfgError, match="iou_thresh"):
        evaluate(model, "never-read.data", iou_thresh=1.5)  # checked before anything is read or run
    for stem in STEMS:
        (dataset["root"] / "labels" / "train2017" / f"{stem}.txt").unlink()
    with pytest.raises(DarkcfgError, match="no label file found"):
        evaluate(model, dataset["data"], workers=0, root=dataset["root"])
    (dataset["root"] / "labels" / "train2017" / f"{STEMS[0]}.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DarkcfgError, match=rf"{STEMS[0]}.txt:1: class id 5"):
        evaluate(model, dataset["data"], workers=0, root=dataset["root"])
    (dataset["root"] / "labels" / "train2017" / f"{STEMS[0]}.txt").write_text("")
    (dataset["root"] / "images" / "train2017" / f"{STEMS[1]}.png").write_bytes(b"not an image")
    with pytest.raises(DarkcfgError, match=f"{STEMS[1]}.png"):
        evaluate(model, dataset["data"], workers=1, root=dataset["root"])
    no_valid = tmp_path / "novalid.data"
    no_valid.write_text("classes=2\n")
    with pytest.raises(DarkcfgError, match="valid="):
        evaluate(model, no_valid)
