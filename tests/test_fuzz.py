"""Property-based fuzzing of every untrusted input: cfg text, weights bytes, image bytes.

The only property: whatever the bytes, darkcfg either works or raises a
:class:`~darkcfg.errors.DarkcfgError` subclass (never a ``RuntimeError`` from torch, an
``IndexError``, a ``MemoryError``...).  Generation is derandomized so CI is repeatable;
each test runs a bounded number of examples (a few seconds on two cores).

Cfg text comes from a small grammar of Darknet sections and keys with hostile values
(huge, negative, zero, overflowing, control characters), plus raw text; weights are
random files and mutations of a valid one; images are random bytes and mutations of a
valid PNG and JPEG.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is part of the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import darkcfg  # noqa: E402
from darkcfg.cfg import parse_cfg_text  # noqa: E402
from darkcfg.errors import DarkcfgError  # noqa: E402
from darkcfg.graph import build_graph  # noqa: E402
from darkcfg.image import load_image, preprocess  # noqa: E402
from darkcfg.limits import Limits  # noqa: E402
from darkcfg.weights import synthetic_weights  # noqa: E402

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: Small enough that any cfg the graph accepts runs in milliseconds.
LIMITS = Limits(param_bytes=4 << 20, activation_bytes=16 << 20, anchors=64)

SECTIONS = ["convolutional", "conv", "maxpool", "avgpool", "route", "shortcut", "upsample", "yolo", "region",
            "detection", "softmax", "connected", "dropout", "reorg", "reorg3d", "crop", "batchnorm", "activation",
            "sam", "scale_channels", "implicit", "local", "lrn", "cost", "crnn", "conv_lstm", "local_avgpool",
            "empty", "Gaussian_yolo", "deconvolutional"]
KEYS = ["filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups", "group_id", "activation",
        "batch_normalize", "layers", "from", "mask", "anchors", "num", "classes", "coords", "side", "output",
        "temperature", "scale_x_y", "dilation", "antialiasing", "xnor", "bin_output", "share_index", "hidden",
        "weights_type", "weights_normalization", "scale_wh", "reverse", "crop_height", "crop_width", "softmax",
        "new_coords", "maxpool_depth", "out_channels", "atoms", "flipped", "nms_kind", "yolo_point"]
NUMBERS = st.one_of(st.integers(-3, 20), st.integers(-2**40, 2**40), st.sampled_from(
    ["0", "-1", "2147483647", "2147483648", "-2147483649", "1e309", "-1e309", "nan", "inf", "1.5", "1e-45",
     "9" * 30, "3#c", ",", "1,,2", "-1,-2", "0,1,2", "-1,0", "10,13,16,30", "\v8", "8\x0c2", "leaky", "mish",
     "logistic", "per_channel", "softmax", "", "=", "\u2028", "\x85"]))


@st.composite
def cfg_texts(draw) -> str:
    w = draw(st.sampled_from([1, 2, 7, 16, 32]))
    h = draw(st.sampled_from([1, 3, 16, 32]))
    lines = ["[net]", f"width={w}", f"height={h}", f"channels={draw(st.sampled_from([0, 1, 3, 4]))}"]
    for _ in range(draw(st.integers(1, 6))):
        lines.append(f"[{draw(st.sampled_from(SECTIONS))}]")
        for _ in range(draw(st.integers(0, 5))):
            lines.append(f"{draw(st.sampled_from(KEYS))}={draw(NUMBERS)}")
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines) + "\n"


def _build_and_run(text: str) -> None:
    graph = build_graph(parse_cfg_text(text, "fuzz.cfg"), limits=LIMITS)
    model = darkcfg.Darknet(graph).eval()
    net = graph.net
    if net.channels * net.height * net.width != net.inputs:
        return
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(torch.rand(1, net.channels, net.height, net.width))


@FUZZ
@given(cfg_texts())
def test_fuzz_cfg_grammar(text: str) -> None:
    try:
        _build_and_run(text)
    except DarkcfgError:
        pass


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("[]=#,;-+.0123456789 \t\r\n\v\f\x00\x85\u2028netwidthconv")),
               max_size=200))
def test_fuzz_cfg_raw_text(text: str) -> None:
    try:
        _build_and_run("[net]\nwidth=8\nheight=8\nchannels=3\n" + text)
    except DarkcfgError:
        pass


SMALL = ("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\n"
         "activation=leaky\n[connected]\noutput=3\n")


@pytest.fixture(scope="module")
def small_weights() -> tuple[darkcfg.Darknet, bytes]:
    model = darkcfg.Darknet(build_graph(parse_cfg_text(SMALL)))
    return model, synthetic_weights(model.graph, seed=2)


@FUZZ
@given(data=st.data())
def test_fuzz_weights_bytes(small_weights, data) -> None:
    model, valid = small_weights
    kind = data.draw(st.sampled_from(["random", "truncate", "extend", "flip", "header"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=400))
    elif kind == "truncate":
        blob = valid[:data.draw(st.integers(0, len(valid)))]
    elif kind == "extend":
        blob = valid + data.draw(st.binary(max_size=16))
    elif kind == "flip":
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(buf)
    else:
        blob = data.draw(st.binary(min_size=20, max_size=20)) + valid[20:]
    upto = data.draw(st.sampled_from([None, 0, 1, 2, -1]))
    strict = data.draw(st.booleans())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.load_weights(io.BytesIO(blob), upto=upto, strict=strict)
        except DarkcfgError:
            pass


def _encoded(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(ext, rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


VALID_IMAGES = {ext: _encoded(ext) for ext in (".png", ".jpg", ".bmp")}


@FUZZ
@given(data=st.data())
def test_fuzz_image_bytes(tmp_path: Path, data) -> None:
    ext = data.draw(st.sampled_from(sorted(VALID_IMAGES)))
    if data.draw(st.booleans()):
        blob = data.draw(st.binary(max_size=300))
    else:
        buf = bytearray(VALID_IMAGES[ext])
        for _ in range(data.draw(st.integers(1, 6))):
            buf[data.draw(st.integers(0, min(len(buf) - 1, 40)))] = data.draw(st.integers(0, 255))
        blob = bytes(buf[:data.draw(st.integers(0, len(buf)))])
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(blob)
    try:
        img = load_image(path)
        preprocess(img, 16, 8, letterbox=data.draw(st.booleans()))
    except DarkcfgError:
        pass
