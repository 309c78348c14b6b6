"""darkcfg against OpenCV's independent Darknet importer (``cv2.dnn.readNetFromDarknet``).

Needs no shared fixtures: small cfgs are written here to ``tmp_path``, given random
(plausible) weights, saved with :meth:`Darknet.save_weights` and read by both.  Every
layer's output is compared (OpenCV names the blobs ``<type>_<layer index>``; a
layer's activation is a separate OpenCV layer, which is then that layer's output);
the [yolo] heads are compared after mapping OpenCV's region-layer layout.

Tolerance: ``|ours - opencv| <= 1e-4 * max(1, max|ours|)`` per layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg

cv2 = pytest.importorskip("cv2", reason="OpenCV (cv2) is not installed")
if not hasattr(getattr(cv2, "dnn", None), "readNetFromDarknet"):
    pytest.skip(f"cv2.dnn.readNetFromDarknet is not available in OpenCV {cv2.__version__} "
                "(the Darknet importer was removed in OpenCV 5)", allow_module_level=True)

RTOL = 1e-4

# A yolov3-tiny-like detector at 64x64: conv+BN leaky, maxpool stride 2 and stride 1 (Darknet's
# size-1 padding), shortcut, route (one and two inputs), upsample, two yolo heads.
DETECTOR = """\
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
"""

# A classifier: conv, maxpool, strided conv, global avgpool, connected, softmax.
CLASSIFIER = """\
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=relu

[avgpool]

[connected]
output=10
activation=linear

[softmax]
groups=1
"""

# [connected] straight after a feature map (Darknet flattens C,H,W), two of them, with BN on a conv only.
FLAT_CLASSIFIER = """\
[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=logistic

[maxpool]
size=2
stride=2

[connected]
output=12
activation=leaky

[connected]
output=5
activation=linear

[softmax]
"""

ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]  # as in DETECTOR
NETS = {"detector": DETECTOR, "classifier": CLASSIFIER, "flat-classifier": FLAT_CLASSIFIER}

# OpenCV's Darknet importer adds a layer's activation as its own layer, named after the NEXT index.
ACTIVATIONS = {"relu", "leaky", "logistic", "sigmoid", "tanh", "mish", "swish", "hswish", "hardswish", "elu",
               "selu", "gelu", "relu6", "hard_mish", "hardsigmoid"}


def randomize(model: darkcfg.Darknet, seed: int) -> None:
    """Plausible random values for every block, like the conformance generator's ranges."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in model.layers:
            tensors = getattr(layer, "weight_tensors", None)
            for role, t in (tensors() if tensors is not None else []):
                if role in ("scales", "rolling_variance"):
                    lo, hi = 0.5, 1.5
                elif role == "weights":
                    a = float(np.sqrt(3.0 / t[0].numel()))
                    lo, hi = -a, a
                else:
                    lo, hi = -0.1, 0.1
                t.copy_(torch.from_numpy(rng.uniform(lo, hi, t.numel()).astype(np.float32)).reshape(t.shape))


def opencv_output_names(names: list[str], n_layers: int) -> dict[int, str]:
    """Darknet layer index -> the OpenCV layer whose blob is that layer's output."""
    out: dict[int, str] = {}
    current = -1
    for name in names:
        prefix, _, suffix = name.rpartition("_")
        if not suffix.isdigit():
            continue
        if prefix not in ACTIVATIONS:
            current = int(suffix)
        if 0 <= current < n_layers:
            out[current] = name
    return out


def yolo_as_opencv(ours: np.ndarray, spec, net_w: int, net_h: int) -> np.ndarray:
    """Our [yolo] output (Darknet's l.output) in OpenCV's region layout (rows*cols*anchors, 5+classes)."""
    a = spec.attrs
    n, classes = len(a.mask), a.classes
    _, h, w = spec.out_shape
    o = ours.reshape(n, 5 + classes, h, w).transpose(2, 3, 0, 1).astype(np.float64)  # h, w, anchor, k
    gx = np.arange(w)[None, :, None]
    gy = np.arange(h)[:, None, None]
    anchors = np.array([ANCHORS[m] for m in a.mask], dtype=np.float64)  # the cfg's, not the parser's
    res = np.empty_like(o)
    res[..., 0] = (gx + o[..., 0]) / w
    res[..., 1] = (gy + o[..., 1]) / h
    res[..., 2] = np.exp(o[..., 2]) * anchors[:, 0] / net_w
    res[..., 3] = np.exp(o[..., 3]) * anchors[:, 1] / net_h
    res[..., 4] = o[..., 4]
    res[..., 5:] = o[..., 4:5] * o[..., 5:]
    return res.reshape(h * w * n, 5 + classes)


@pytest.mark.parametrize("name", list(NETS))
def test_against_opencv(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(NETS[name])
    model = darkcfg.load(cfg)
    randomize(model, seed=len(name))
    weights = tmp_path / f"{name}.weights"
    model.save_weights(weights)
    # what OpenCV reads is what we run: reload from the file
    model = darkcfg.load(cfg, weights)

    x = np.random.default_rng(1).uniform(0, 1, (1, model.channels, model.height, model.width)).astype(np.float32)
    with torch.no_grad():
        ours = [t[0].double().numpy() for t in model.layer_outputs(torch.from_numpy(x))]
        final = [t[0].double().numpy() for t in model(torch.from_numpy(x))]

    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = list(net.getLayerNames())
    mapping = opencv_output_names(names, len(ours))
    assert sorted(mapping) == list(range(len(ours))), f"OpenCV layers {names} do not cover every Darknet layer"
    net.setInput(x)
    wanted = [mapping[i] for i in range(len(ours))]
    theirs = dict(zip(wanted, net.forward(wanted)))

    compared = 0
    for spec, our in zip(model.graph.layers, ours):
        cv_out = np.asarray(theirs[mapping[spec.index]], dtype=np.float64)
        if spec.kind == "yolo":
            # OpenCV's region layer: x, y, w, h (normalised), objectness, objectness*class zeroed below thresh
            exp = yolo_as_opencv(our, spec, model.width, model.height)
            assert cv_out.shape == exp.shape, (spec.index, cv_out.shape, exp.shape)
            scale = max(1.0, np.abs(exp).max())
            np.testing.assert_allclose(cv_out[:, :5], exp[:, :5], rtol=0, atol=RTOL * scale,
                                       err_msg=f"layer {spec.index} [yolo] boxes/objectness")
            cls_cv, cls_ours = cv_out[:, 5:], exp[:, 5:]
            kept = cls_cv > 0
            assert kept.any() and (~kept).any(), "choose weights so that OpenCV's threshold keeps some, not all"
            np.testing.assert_allclose(cls_cv[kept], cls_ours[kept], rtol=0, atol=RTOL * scale,
                                       err_msg=f"layer {spec.index} [yolo] class scores")
            # what OpenCV zeroed is below what it kept: one threshold explains it
            assert cls_ours[~kept].max() <= cls_cv[kept].min() + RTOL
        else:
            assert cv_out.size == our.size, (spec.index, spec.kind, cv_out.shape, our.shape)
            scale = max(1.0, float(np.abs(our).max()))
            err = float(np.abs(cv_out.reshape(-1) - our.reshape(-1)).max())
            assert err <= RTOL * scale, f"layer {spec.index} [{spec.kind}] ({mapping[spec.index]}): " \
                                        f"max |ours - opencv| = {err:.3g}, scale {scale:.3g}"
        compared += 1
    assert compared == len(ours)

    # the network outputs (forward()) are OpenCV's unconnected outputs, in order
    out_names = list(net.getUnconnectedOutLayersNames())
    assert [mapping[i] for i in model.output_layers] == out_names
    if not any(s.kind == "yolo" for s in model.graph.layers):
        net.setInput(x)
        cv_final = net.forward(out_names)
        for ours_out, cv_out in zip(final, cv_final):
            scale = max(1.0, float(np.abs(ours_out).max()))
            np.testing.assert_allclose(np.asarray(cv_out).reshape(-1), ours_out.reshape(-1), rtol=0, atol=RTOL * scale)
