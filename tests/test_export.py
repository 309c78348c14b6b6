"""Exports run and give the same numbers as the module, with a dynamic batch dimension."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.export import export
from darkcfg.weights import synthetic_weights

REPO = Path(__file__).resolve().parents[1]
OWN_CFGS = sorted((REPO / "cfgs").glob("*.cfg"))


def _weights(cfg: Path, tmp_path: Path) -> Path:
    path = tmp_path / (cfg.stem + ".weights")
    path.write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=7))
    return path


def _reference(cfg: Path, weights: Path, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = darkcfg.load(cfg, weights).fuse()
    torch.manual_seed(1)
    x = torch.rand(batch, model.channels, model.height, model.width)
    with torch.no_grad():
        return x, model(x)


def _close(got: list, ref: list[torch.Tensor]) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        a = torch.as_tensor(np.asarray(a))
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("cfg", OWN_CFGS, ids=[p.stem for p in OWN_CFGS])
def test_onnx_export_runs_in_onnxruntime(cfg: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the test extra")
    weights = _weights(cfg, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing guessed by the tracer
        out = export(cfg, weights, "onnx", tmp_path / "m.onnx", optimize=False)
    x, ref = _reference(cfg, weights, batch=3)  # the batch axis is dynamic
    session = ort.InferenceSession(str(out))
    _close(session.run(None, {"images": x.numpy()}), ref)


def test_pt2_export_dynamic_batch(tmp_path: Path) -> None:
    cfg = REPO / "cfgs" / "tiny-yolo-all.cfg"
    weights = _weights(cfg, tmp_path)
    out = export(cfg, weights, "pt2", tmp_path / "m.pt2")
    program = torch.export.load(str(out))
    x, ref = _reference(cfg, weights, batch=3)
    with torch.no_grad():
        _close(list(program.module()(x)), ref)


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(darkcfg.DarkcfgError, match="unknown export format"):
        export(REPO / "cfgs" / "tiny-classifier.cfg", None, "tflite", tmp_path / "x")


@pytest.mark.parametrize("name", ["tiny-yolo-all", "tiny-region"])
def test_onnx_decode_equals_darknet_decode(name: str, tmp_path: Path) -> None:
    """In-graph decoding ([yolo], new_coords, [Gaussian_yolo], [region]) = detect.decode's candidates."""
    from darkcfg.detect import decode
    from darkcfg.detect_api import heads_from_graph

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the test extra")
    cfg = REPO / "cfgs" / f"{name}.cfg"
    weights = _weights(cfg, tmp_path)
    out = export(cfg, weights, "onnx", tmp_path / "d.onnx", decode=True, optimize=False)
    x, ref = _reference(cfg, weights, batch=2)
    got = ort.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0]
    model = darkcfg.load(cfg, weights)
    w, h = model.width, model.height
    dets = decode(ref, heads_from_graph(model.graph)[1], w, h, [(w, h)] * 2, thresh=-1.0)
    for b, d in enumerate(dets):
        cx, cy, bw, bh = d.boxes.unbind(-1)
        want = torch.cat((torch.stack(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), -1),
                          d.objectness[:, None], d.probs), 1)
        _close([got[b]], [want])


LEAN_CFG = """\
[net]
width=16
height=16
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=1
stride=1
pad=1
activation=linear

[shortcut]
from=-2
activation=linear

[route]
layers=-1
groups=2
group_id=1
"""


def test_shortcut_is_one_add_and_route_group_one_slice(tmp_path: Path) -> None:
    """Equal-shape [shortcut] exports as one Add, a route group as one Slice, no shape arithmetic;
    the plain add is bit-identical to Darknet's flat prefix add."""
    onnx = pytest.importorskip("onnx", reason="onnx is part of the test extra")
    from darkcfg.layers import functional as DF

    cfg = tmp_path / "lean.cfg"
    cfg.write_text(LEAN_CFG)
    out = export(cfg, None, "onnx", tmp_path / "lean.onnx", optimize=False)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Add") == 1 and ops.count("Slice") == 1
    assert not {"Shape", "Gather", "Reshape", "Concat"} & set(ops), ops
    model = darkcfg.load(cfg)
    x = torch.rand(2, 3, 16, 16)
    outs = model.layer_outputs(x)
    assert torch.equal(outs[2], DF.shortcut_add(outs[1], [outs[0]]))
    assert torch.equal(outs[3], DF.route([outs[2]], 2, 1))
