"""Deployable exports: decode and NMS inside the graph equal ``Darknet.detect`` on real models;
the graphs load in onnxruntime and OpenCV's ONNX importer; no TracerWarnings; metadata round trip."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.cli import main as cli_main
from darkcfg.export import export
from darkcfg.export_meta import read_metadata
from darkcfg.image import load_image, preprocess

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the test extra")
cv2 = pytest.importorskip("cv2", reason="OpenCV is part of the package")

REAL = ("yolo-fastest-voc", "yolo-mobilenetv2-tiny-voc", "yoloface-50k")  # [yolo], [region], [yolo]+maxpool


def _export(cfg: Path, weights: Path, out: Path, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # the traced graph is exact, not a guess
        return export(cfg, weights, "onnx", out, **{"optimize": False, **kw})


def _real(shared: Path, name: str) -> tuple[Path, Path]:
    cfg = shared / "darknet" / "real" / f"{name}.cfg"
    if not cfg.with_suffix(".weights").is_file():
        pytest.skip(f"{cfg.with_suffix('.weights')} not present")
    return cfg, cfg.with_suffix(".weights")


def _net_image(shared: Path, model: darkcfg.Darknet) -> np.ndarray:
    """dog.jpg resized to the network size: preprocessing is then the identity, boxes are network pixels."""
    img = load_image(shared / "darknet" / "data" / "dog.jpg")
    return cv2.resize(img, (model.width, model.height), interpolation=cv2.INTER_AREA)


def _opencv_run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    return list(net.forward(net.getUnconnectedOutLayersNames()))


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-4) -> None:
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) <= rel * max(1.0, float(np.abs(b).max()))


@pytest.mark.parametrize("name", REAL[::2])
def test_raw_export_in_opencv_and_onnxruntime(shared: Path, name: str, tmp_path: Path) -> None:
    cfg, weights = _real(shared, name)
    out = _export(cfg, weights, tmp_path / "m.onnx")
    model = darkcfg.load(cfg, weights)
    x = preprocess(_net_image(shared, model), model.width, model.height)
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    got_ort = ort.InferenceSession(str(out)).run(None, {"images": x.numpy()})
    got_cv = _opencv_run(out, x.numpy())
    for r, a, b in zip(ref, got_ort, got_cv):
        _close(a, r)
        _close(b, r)


@pytest.mark.parametrize("name", REAL[:2])
def test_decode_and_nms_in_graph_equal_detect(shared: Path, name: str, tmp_path: Path) -> None:
    cfg, weights = _real(shared, name)
    model = darkcfg.load(cfg, weights)
    img = _net_image(shared, model)
    x = preprocess(img, model.width, model.height).numpy()
    thresh, nms_thresh = 0.25, 0.45
    expected = model.detect(img[:, :, ::-1].copy(), thresh=thresh, nms=nms_thresh)[0]  # BGR array, as OpenCV gives

    boxes_path = _export(cfg, weights, tmp_path / "d.onnx", decode=True)
    boxes_ort = ort.InferenceSession(str(boxes_path)).run(None, {"images": np.repeat(x, 2, 0)})[0]
    assert boxes_ort.shape[0] == 2 and boxes_ort.shape[2] == 4 + 1 + model.graph.layers[-1].attrs.classes
    _close(_opencv_run(boxes_path, x)[0], boxes_ort[:1])  # OpenCV runs the decoding graph too

    nms_path = _export(cfg, weights, tmp_path / "n.onnx", nms=True, thresh=thresh, nms_thresh=nms_thresh)
    dets, count = ort.InferenceSession(str(nms_path)).run(None, {"images": np.repeat(x, 2, 0)})
    assert count.tolist() == [len(expected)] * 2 and len(expected) > 0
    rows = dets[0, :count[0]]
    assert np.all(dets[0, count[0]:] == 0) and np.array_equal(dets[0], dets[1])
    w, h = model.width, model.height
    got = sorted((int(r[5]), round(float(r[4]), 4), tuple(np.clip(r[:4], 0, [w - 1, h - 1, w - 1, h - 1]).round(2)))
                 for r in rows)
    want = sorted((d.class_id, round(d.prob, 4), tuple(np.round(d.box, 2))) for d in expected)
    assert len(got) == len(want)
    for (gc, gp, gb), (wc, wp, wb) in zip(got, want):
        assert gc == wc and abs(gp - wp) <= 1e-3
        assert np.allclose(gb, wb, atol=0.05)


@pytest.mark.parametrize("name", REAL)
def test_torchscript_nms_is_darknets_and_equals_detect(shared: Path, name: str, tmp_path: Path) -> None:
    """``--to torchscript --nms``: Darknet's own NMS kind (greedynms for yolo-fastest-voc, which
    ONNX's operator cannot express) as a scripted loop: the same detections as ``Darknet.detect``."""
    cfg, weights = _real(shared, name)
    model = darkcfg.load(cfg, weights)
    img = _net_image(shared, model)
    x = preprocess(img, model.width, model.height)
    expected = model.detect(img[:, :, ::-1].copy(), thresh=0.25, nms=0.45)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = export(cfg, weights, "torchscript", tmp_path / "n.torchscript.pt", nms=True)
        program = torch.jit.load(str(out))
    meta = read_metadata(out)
    assert meta["outputs"] == ["detections", "count"] and "scripted loop" in meta["postprocess"]["nms"]
    with torch.no_grad():
        dets, count = program(torch.cat([x, x]))
    assert count.tolist() == [len(expected)] * 2 and len(expected) > 0
    assert torch.equal(dets[0], dets[1]) and torch.all(dets[0, int(count[0]):] == 0)
    w, h = model.width, model.height
    got = sorted((int(r[5]), round(float(r[4]), 4), tuple(np.clip(r[:4].numpy(), 0, [w - 1, h - 1, w - 1, h - 1])
                                                          .round(2))) for r in dets[0, :int(count[0])])
    want = sorted((d.class_id, round(d.prob, 4), tuple(np.round(d.box, 2))) for d in expected)
    assert [g[0] for g in got] == [g[0] for g in want]
    for (gc, gp, gb), (wc, wp, wb) in zip(got, want):
        assert abs(gp - wp) <= 1e-3 and np.allclose(gb, wb, atol=0.05)


@pytest.mark.parametrize("kind,beta", [("default", -1.0), ("greedynms", 0.6), ("diounms", 2.0)])
def test_script_nms_equals_darknet_nms(kind: str, beta: float) -> None:
    """The scripted NMS keeps exactly what :func:`darkcfg.detect.nms` keeps, for each NMS kind."""
    from darkcfg.detect import Detections, nms
    from darkcfg.export_heads import script_nms

    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        n = 60
        xy = torch.rand(1, n, 2, generator=gen) * 100
        corners = torch.cat([xy, xy + torch.rand(1, n, 2, generator=gen) * 40 + 1], 2)
        if trial % 4 == 0:
            corners = torch.round(corners / 8) * 8  # duplicates and ties
        scores = torch.rand(1, 3, n, generator=gen)
        probs = scores[0].T.clone()
        probs[probs <= 0.25] = 0
        centre = torch.cat([(corners[0, :, :2] + corners[0, :, 2:]) / 2, corners[0, :, 2:] - corners[0, :, :2]], 1)
        dets = Detections(centre, torch.ones(n), probs, torch.zeros(n, dtype=torch.int64))
        want = nms(dets, 0.45, kind, beta if beta >= 0 else 0.6).probs
        beta_used = {"greedynms": 0.6, "diounms": beta}.get(kind, -1.0)
        got = torch.zeros_like(probs)
        for _, c, i in script_nms(corners, scores, 100, 0.45, 0.25, beta_used).tolist():
            got[i, c] = probs[i, c]
        assert torch.equal(got, want), (kind, trial)


def test_metadata_round_trip_and_info(shared: Path, tmp_path: Path, capsys) -> None:
    cfg, weights = _real(shared, REAL[0])
    out = _export(cfg, weights, tmp_path / "m.onnx", decode=True)
    meta = read_metadata(out)
    model = darkcfg.load(cfg, weights)
    heads = [s for s in model.graph.layers if s.kind == "yolo"]
    assert meta["cfg_name"] == cfg.name
    import hashlib
    assert meta["cfg_sha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert meta["input"]["width"] == model.width and meta["input"]["resize"] in ("letterbox", "stretch")
    assert [h["anchors"] for h in meta["heads"]] == [[list(a) for a in s.attrs.masked_anchors] for s in heads]
    assert [h["stride"][0] for h in meta["heads"]] == [model.width // s.out_shape[2] for s in heads]
    assert len(meta["names"]) == heads[0].attrs.classes and meta["darkcfg_version"] == darkcfg.__version__
    assert cli_main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == meta
    assert cli_main(["info", str(out)]) == 0
    assert cfg.name in capsys.readouterr().out


def test_torchscript_and_pt2_carry_metadata(tmp_path: Path) -> None:
    cfg = Path(__file__).resolve().parents[1] / "cfgs" / "tiny-yolo-all.cfg"
    for to, name in (("torchscript", "m.ts"), ("pt2", "m.pt2")):
        out = export(cfg, None, to, tmp_path / name, decode=True)
        meta = read_metadata(out)
        assert meta["cfg_name"] == cfg.name and meta["outputs"] == ["boxes"]
    with pytest.raises(darkcfg.DarkcfgError, match="for pt2 export with --decode"):
        export(cfg, None, "pt2", tmp_path / "x.pt2", nms=True)


def test_classfix_is_in_the_region_spec(tmp_path: Path) -> None:
    """classfix is read by the spec pass (not re-read from the section at detect time)."""
    from darkcfg.detect_api import heads_from_graph

    src = (Path(__file__).resolve().parents[1] / "cfgs" / "tiny-region.cfg").read_text()
    cfg = tmp_path / "fix.cfg"
    cfg.write_text(src.replace("[region]\n", "[region]\nclassfix=-1\n", 1))
    graph = darkcfg.load(cfg).graph
    region = [s for s in graph.layers if s.kind == "region"][0]
    assert region.attrs.classfix == -1
    assert heads_from_graph(graph)[1][0].classfix == -1


OWN_CFGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "cfgs").glob("*.cfg"))


@pytest.mark.parametrize("name", OWN_CFGS)
def test_optimized_own_cfg_in_opencv(name: str, tmp_path: Path) -> None:
    """Every own cfg (local_avgpool, [local], crnn, connected, softmax, detection, ... included):
    the optimized graph imports and runs in OpenCV and onnxruntime, equal to eager."""
    pytest.importorskip("onnxscript", reason="onnxscript is part of the test extra")
    from darkcfg.weights import synthetic_weights

    cfg = Path(__file__).resolve().parents[1] / "cfgs" / f"{name}.cfg"
    model = darkcfg.load(cfg)
    weights = tmp_path / "w.weights"
    weights.write_bytes(synthetic_weights(model.graph, seed=3))
    out = _export(cfg, weights, tmp_path / "m.onnx", optimize=True)
    model = darkcfg.load(cfg, weights).fuse()
    x = torch.rand(1, model.channels, model.height, model.width)
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    for got in (_opencv_run(out, x.numpy()), ort.InferenceSession(str(out)).run(None, {"images": x.numpy()})):
        for a, r in zip(got, ref):
            _close(a, r)
    assert read_metadata(out)["cfg_name"] == cfg.name  # metadata survives the optimizer
