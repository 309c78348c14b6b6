"""Classification front-end: Darknet's classifier preprocessing and top-k (own cfg)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.classify import Classifier
from darkcfg.cli import main
from darkcfg.image import classifier_preprocess, crop_clamped, resize_min, to_chw_float
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER = REPO / "cfgs" / "tiny-classifier.cfg"


def test_resize_min_uses_int_arithmetic() -> None:
    chw = np.random.default_rng(0).random((3, 50, 80), dtype=np.float32)
    assert resize_min(chw, 32).shape == (3, 32, 80 * 32 // 50)   # 51 (C: 2560/50 truncates)
    assert resize_min(chw.transpose(0, 2, 1), 32).shape == (3, 80 * 32 // 50, 32)
    same = chw[:, :32, :40]
    assert resize_min(same, 32) is same  # already the right size: darknet returns the image


def test_crop_clamped_repeats_edges() -> None:
    chw = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    # window 3 wide starting one column left of the image and one row below the top
    got = crop_clamped(chw, -1, 1, 3, 3)
    expected = np.array([[[4, 4, 5], [8, 8, 9], [8, 8, 9]]], dtype=np.float32)
    assert np.array_equal(got, expected)


def test_classifier_preprocess_is_resize_min_then_centre_crop() -> None:
    img = np.random.default_rng(1).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    x = classifier_preprocess(img, 32, 32)
    resized = resize_min(to_chw_float(img), 32)          # 32 x 56
    dx = (resized.shape[2] - 32) // 2
    assert x.shape == (1, 3, 32, 32)
    assert np.array_equal(x[0].numpy(), resized[:, :, dx:dx + 32])


def _model() -> darkcfg.Darknet:
    model = darkcfg.load(CLASSIFIER)
    model.load_weights(io.BytesIO(synthetic_weights(model.graph, seed=5)))
    return model


def test_classify_top_k_matches_network_output() -> None:
    model = _model()
    img = np.random.default_rng(2).integers(0, 255, (45, 60, 3), dtype=np.uint8)
    top = model.classify(img[:, :, ::-1].copy(), top=3)[0]     # API takes BGR arrays
    with torch.no_grad():
        scores = model(classifier_preprocess(img, 32, 32))[-1].flatten().numpy()
    order = np.argsort(-scores, kind="stable")[:3]
    assert [c.class_id for c in top] == order.tolist()
    assert np.allclose([c.prob for c in top], scores[order])
    assert all(a.prob >= b.prob for a, b in zip(top, top[1:]))


def test_classifier_refuses_detectors() -> None:
    with pytest.raises(darkcfg.DarkcfgError, match="detector"):
        Classifier(darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg"))


def test_run_classifies_with_classifier_cfgs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.read_text())
    (tmp_path / "cls.weights").write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=5))
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    assert main(["run", str(cfg), str(img), "--json", "--top", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [set(c) for c in record["classes"]] == [{"class_id", "name", "prob"}] * 2
    assert record["classes"][0]["prob"] >= record["classes"][1]["prob"]
    assert main(["run", str(cfg), str(img)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("i.png:") and lines[1].strip().endswith(record["classes"][0]["name"])


def test_names_beside_the_cfg_may_be_longer_where_tied_to_the_model(tmp_path: Path) -> None:
    """Darknet indexes the names file of the model's .data without checking its length (its
    imagenet1k.data names the 21,842-line imagenet.shortnames.list): ``<stem>.names`` and a
    ``.data`` with ``classes=`` equal to the model's may be longer; other ``*.names`` must match."""
    from darkcfg.detect_api import resolve_names

    folder = tmp_path / "m"
    folder.mkdir()
    cfg = folder / "cls.cfg"
    cfg.write_text(CLASSIFIER.read_text())
    classes = Classifier(darkcfg.load(cfg)).classes
    lines = [f"c{i}" for i in range(classes + 5)]
    (folder / "other.names").write_text("\n".join(lines) + "\n")  # longer, not tied to this model
    assert resolve_names(cfg, classes) == [str(i) for i in range(classes)]
    (folder / "lists").mkdir()
    (folder / "lists" / "big.list").write_text("\n".join(["d" + x for x in lines]) + "\n")
    (folder / "nine.data").write_text(f"classes = {classes + 5}\nnames = lists/big.list\n")
    assert resolve_names(cfg, classes) == [str(i) for i in range(classes)]  # its classes= differ
    (folder / "right.data").write_text(f"classes = {classes}\nnames = lists/big.list\n")
    assert resolve_names(cfg, classes) == ["d" + x for x in lines[:classes]]
    (folder / "cls.names").write_text("\n".join(["s" + x for x in lines]) + "\n")
    assert resolve_names(cfg, classes) == ["s" + x for x in lines[:classes]]  # the stem's file first
    exact = [f"e{i}" for i in range(classes)]
    (folder / "exact.names").write_text("\n".join(exact) + "\n")
    assert resolve_names(cfg, classes) == exact  # a file of exactly `classes` lines still wins


def test_classifier_predict_matches_darknet(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``darkcfg run`` on tiny-darknet (real ImageNet weights) vs ``darknet classifier predict``'s
    top 5 on the five shared images, names from imagenet.shortnames.list as ``<stem>.names``.

    Same indices and names; probabilities within 0.01 (measured <= 0.0043: the residue of the JPEG
    decoder, stb_image vs libjpeg, see tests/test_image.py); on darknet's own input tensor the
    whole softmax agrees to 1e-5 (measured 2.0e-6).
    """
    real = shared / "darknet" / "real"
    cases = shared / "conformance" / "cases" / "real-tiny-darknet" / "classifications"
    cfg = tmp_path / "tiny-darknet.cfg"
    cfg.write_bytes((real / "tiny-darknet.cfg").read_bytes())
    (tmp_path / "tiny-darknet.names").write_bytes((shared / "darknet" / "data" / "imagenet.shortnames.list").read_bytes())
    weights = real / "tiny-darknet.weights"
    model = darkcfg.load(cfg, weights).optimize()
    for image in ("dog", "eagle", "giraffe", "horses", "person"):
        ref = json.loads((cases / f"{image}.json").read_text())
        assert main(["run", str(cfg), str(weights), str(shared / ref["image"]), "--json"]) == 0
        ours = json.loads(capsys.readouterr().out)["classes"]
        assert [(c["class_id"], c["name"]) for c in ours] == [(t["index"], t["name"]) for t in ref["top5"]], image
        assert max(abs(c["prob"] - t["prob"]) for c, t in zip(ours, ref["top5"])) < 0.01, image
        x = torch.from_numpy(np.load(shared / ref["input_tensor"])).reshape(1, 3, 224, 224)
        with torch.no_grad():
            softmax = model(x)[-1].flatten().numpy()
        assert np.abs(softmax - np.array(ref["softmax"], dtype=np.float32)).max() < 1e-5, image
