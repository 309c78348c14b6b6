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
