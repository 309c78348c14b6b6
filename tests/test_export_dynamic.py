"""``convert --dynamic-size``: one ONNX file run at several input sizes equals eager darkcfg built
at each size; the valid-size rule is computed from the graph, stored in the metadata and checked;
models whose layers cannot follow the input size are refused, naming the layer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg.cli import main as cli_main
from darkcfg.dynamic_size import check_size, size_rule
from darkcfg.errors import DarkcfgError
from darkcfg.export import _wrap, export
from darkcfg.export_meta import read_metadata
from darkcfg.weights import synthetic_weights

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the test extra")
onnx = pytest.importorskip("onnx", reason="onnx is part of the test extra")

CFGS = Path(__file__).resolve().parents[1] / "cfgs"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _weights(cfg: Path, tmp_path: Path) -> Path:
    path = tmp_path / "w.weights"
    path.write_bytes(synthetic_weights(darkcfg.load(cfg).graph, seed=5))
    return path


def _export(cfg: Path, weights: Path, out: Path, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no size silently baked in
        return export(cfg, weights, "onnx", out, dynamic_size=True, **{"optimize": False, **kw})


def _eager(cfg: Path, weights: Path, size: tuple[int, int], decode: bool, x: torch.Tensor) -> list[np.ndarray]:
    """What darkcfg computes at ``size`` with a model built for that size (``load(cfg, size=...)``)."""
    model = darkcfg.load(cfg, weights, size=size).fuse().eval()
    wrapped = _wrap(model, decode, False, 0.25, 0.45, 100)[0]
    with torch.no_grad():
        return [t.numpy() for t in wrapped(x)]


def _max_rel_error(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    worst = 0.0
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        worst = max(worst, float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max())))
    return worst


def _two_sizes(rule) -> list[tuple[int, int]]:
    """Two valid sizes other than the traced one, one of them not square."""
    s = rule.step
    return [(rule.width + 2 * s, rule.height + s), (max(rule.min_width, rule.width - s), rule.height + 3 * s)]


# tiny-yolo-all: [yolo] + [Gaussian_yolo], maxpools, route groups, upsample, shortcut, sam, scale_channels;
# tiny-region: [region], [reorg], maxpools, routes; tiny-classifier: local_avgpool, lrn, avgpool, connected.
CASES = [("tiny-yolo-all", False), ("tiny-yolo-all", True), ("tiny-region", False), ("tiny-region", True),
         ("tiny-classifier", False)]


@pytest.mark.parametrize("name,decode", CASES)
def test_own_cfg_at_two_sizes_equals_eager(name: str, decode: bool, tmp_path: Path) -> None:
    cfg = CFGS / f"{name}.cfg"
    weights = _weights(cfg, tmp_path)
    out = _export(cfg, weights, tmp_path / "m.onnx", decode=decode)
    meta = read_metadata(out)
    rule = size_rule(darkcfg.load(cfg))
    assert meta["dynamic_size"] == rule.as_metadata()
    session = ort.InferenceSession(str(out))
    inp = session.get_inputs()[0]
    assert inp.shape[2:] == ["height", "width"]
    for w, h in _two_sizes(rule):
        assert rule.accepts(w, h) and (w, h) != (rule.width, rule.height)
        x = torch.rand(2, 3, h, w)
        got = session.run(None, {"images": x.numpy()})
        assert _max_rel_error(got, _eager(cfg, weights, (w, h), decode, x)) <= 1e-4, (w, h)


def test_pt2_at_two_sizes_equals_eager(tmp_path: Path) -> None:
    """torch.export with height/width as ``step * k`` Dims: one program, several sizes."""
    cfg = CFGS / "tiny-region.cfg"
    weights = _weights(cfg, tmp_path)
    out = export(cfg, weights, "pt2", tmp_path / "m.pt2", decode=True, dynamic_size=True)
    assert read_metadata(out)["dynamic_size"]["step"] == 8
    program = torch.export.load(str(out)).module()
    for w, h in ((72, 96), (40, 48)):
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            got = [t.numpy() for t in program(x)]
        assert _max_rel_error(got, _eager(cfg, weights, (w, h), True, x)) <= 1e-4, (w, h)


def test_nms_inside_a_dynamic_size_graph(tmp_path: Path) -> None:
    """Decode + NMS at a size other than the traced one: the same detections as eager."""
    cfg = CFGS / "tiny-yolo-all.cfg"
    weights = _weights(cfg, tmp_path)
    out = _export(cfg, weights, tmp_path / "m.onnx", nms=True, thresh=0.05)
    size = (96, 80)
    x = torch.rand(1, 3, size[1], size[0], generator=torch.Generator().manual_seed(11))
    det, count = ort.InferenceSession(str(out)).run(None, {"images": x.numpy()})
    model = darkcfg.load(cfg, weights, size=size).fuse().eval()
    with torch.no_grad():
        ref_det, ref_count = _wrap(model, True, True, 0.05, 0.45, 100)[0](x)
    assert int(count[0]) == int(ref_count[0]) > 0
    n = int(count[0])

    def rows(a: np.ndarray) -> np.ndarray:  # rows of equal score may come in either order
        return a[np.lexsort((a[:, 1], a[:, 0], a[:, 5], -np.round(a[:, 4], 5)))]

    np.testing.assert_allclose(rows(det[0, :n]), rows(ref_det[0, :n].numpy()), rtol=1e-4, atol=1e-3)


def test_rule_of_a_yolo_network_is_multiples_of_32(shared: Path) -> None:
    rule = size_rule(darkcfg.load(shared / "darknet" / "cfg" / "yolov3-tiny.cfg"))
    assert (rule.step, rule.min_width, rule.min_height) == (32, 32, 32)
    assert rule.describe().startswith("width and height multiples of 32")


def test_real_model_at_two_sizes(shared: Path, tmp_path: Path) -> None:
    """yolo-fastest-1.1 (real weights), decoded, run at 256 x 224 and 416 x 352 from one file traced at 320 x 320
    (with onnxscript's optimizer when installed, as `darkcfg convert` does by default)."""
    folder = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
    cfg, weights = folder / "yolo-fastest-1.1.cfg", folder / "yolo-fastest-1.1.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} not present")
    out = _export(cfg, weights, tmp_path / "m.onnx", decode=True, optimize=None)
    meta = read_metadata(out)
    assert meta["dynamic_size"]["step"] == 32
    session = ort.InferenceSession(str(out))
    for w, h in ((256, 224), (416, 352)):
        check_size(meta["dynamic_size"], w, h)
        x = torch.rand(1, 3, h, w)
        got = session.run(None, {"images": x.numpy()})
        assert _max_rel_error(got, _eager(cfg, weights, (w, h), True, x)) <= 1e-4, (w, h)


REAL = ["yolo-fastest-voc", "yoloface-50k", "yolo-mobilenetv2-tiny-voc", "MobileNetV2-YOLOv3-Nano-coco"]


@pytest.mark.parametrize("name", REAL)
def test_real_public_domain_models_at_two_sizes(name: str, shared: Path, tmp_path: Path) -> None:
    """The real detectors of ../shared/darknet/real, raw heads, at two valid sizes other than the traced one."""
    cfg, weights = shared / "darknet" / "real" / f"{name}.cfg", shared / "darknet" / "real" / f"{name}.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} not present")
    out = _export(cfg, weights, tmp_path / "m.onnx", optimize=None)
    rule = size_rule(darkcfg.load(cfg))
    assert read_metadata(out)["dynamic_size"] == rule.as_metadata()
    session = ort.InferenceSession(str(out))
    for w, h in _two_sizes(rule):
        check_size(read_metadata(out)["dynamic_size"], w, h)
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(w))
        got = session.run(None, {"images": x.numpy()})
        assert _max_rel_error(got, _eager(cfg, weights, (w, h), False, x)) <= 1e-4, (name, w, h)


def test_invalid_size_is_named_with_the_rule(tmp_path: Path) -> None:
    cfg = CFGS / "tiny-yolo-all.cfg"
    out = export(cfg, None, "onnx", tmp_path / "m.onnx", dynamic_size=True, optimize=False)
    meta = read_metadata(out)["dynamic_size"]
    check_size(meta, 72, 128)
    with pytest.raises(DarkcfgError, match=r"70 x 64: .*exact only for width and height multiples of 8"):
        check_size(meta, 70, 64)
    with pytest.raises(DarkcfgError, match="at least 8 x 8"):
        check_size(meta, 0, 64)


@pytest.mark.parametrize("name,layer", [("tiny-misc", r"\[crop\] \(layer \d+\)"),
                                        ("tiny-detection", r"\[local\] \(layer \d+\)")])
def test_models_that_cannot_follow_the_size_are_refused(name: str, layer: str, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(DarkcfgError, match=rf"{name}\.cfg:\d+: {layer}: .*--dynamic-size"):
        export(CFGS / f"{name}.cfg", None, "onnx", out, dynamic_size=True)
    assert not out.exists()


def test_connected_on_a_feature_map_is_refused(tmp_path: Path) -> None:
    """No step keeps a [connected] layer's input length: the generic check names the layer and the numbers."""
    cfg = tmp_path / "fc.cfg"
    cfg.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\nstride=2\n"
                   "pad=1\nactivation=leaky\n\n[connected]\noutput=5\nactivation=linear\n")
    params = 4 * 8 * 8 * 5 + 5  # a 4 x 8 x 8 input fully connected to 5 outputs, plus biases
    with pytest.raises(DarkcfgError, match=rf"fc\.cfg:13: \[connected\] \(layer 1\): has {params} parameters at "
                                           r"the traced size but \d+ at \d+ x \d+; .*--dynamic-size"):
        export(cfg, None, "onnx", tmp_path / "m.onnx", dynamic_size=True)


def test_other_formats_refuse_dynamic_size_and_cli(tmp_path: Path, capsys) -> None:
    cfg = CFGS / "tiny-train.cfg"
    for to in ("torchscript", "weights"):
        with pytest.raises(DarkcfgError, match="ONNX and pt2 only"):
            export(cfg, None, to, tmp_path / f"m.{to}", dynamic_size=True)
    assert not list(tmp_path.iterdir())
    out = tmp_path / "m.onnx"
    assert cli_main(["convert", str(cfg), "--no-weights", "--to", "onnx", "--dynamic-size", "--no-optimize",
                     "--out", str(out)]) == 0
    assert cli_main(["info", str(out)]) == 0
    assert "dynamic size: width and height multiples of" in capsys.readouterr().out


def test_fixed_size_export_is_unchanged(tmp_path: Path) -> None:
    """Without the flag height and width stay trace-time constants (the lean graph OpenCV imports)."""
    cfg = CFGS / "tiny-yolo-all.cfg"
    fixed = onnx.load(str(export(cfg, None, "onnx", tmp_path / "f.onnx", optimize=False)))
    dyn = onnx.load(str(export(cfg, None, "onnx", tmp_path / "d.onnx", optimize=False, dynamic_size=True)))

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(fixed.graph.input[0]) == ["batch", 3, 64, 64] and dims(fixed.graph.output[0])[2:] == [8, 8]
    assert dims(dyn.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(dyn.graph.output[0])[2:] == ["output_0_height", "output_0_width"]
    assert "dynamic_size" not in {p.key for p in fixed.metadata_props}
    # the separable max-pool (strided slices with constant bounds) only in the fixed graph
    assert "MaxPool" not in {n.op_type for n in fixed.graph.node} and "MaxPool" in {n.op_type for n in dyn.graph.node}
