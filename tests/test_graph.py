"""The layer graph (``darkcfg.graph`` + ``darkcfg.specs``) against Darknet's own numbers.

* every cfg of the Darknet corpus parses and builds at its own size;
* every conformance case: per-layer shapes equal Darknet's (``expected.npz`` shape_i and
  ``layers.tsv``), and the weight blocks equal ``rolemap.tsv`` (Darknet's
  ``load_weights_upto`` order);
* BFLOPs and parameter counts equal Darknet's printed totals and the CSPNet paper's table;
* the real yolo-fastest ``.weights`` files have exactly the size the graph predicts;
* hand-computed shape rules on the project's own cfgs (these need nothing outside the repo).

The shared fixtures are found through the ``shared`` fixture (``darkcfg.shared.shared_dir``);
without them those tests skip with the reason.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from darkcfg.cfg import read_cfg
from darkcfg.errors import CfgError
from darkcfg.graph import build_graph
from darkcfg.shared import shared_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
CORPUS_DIRS = ("cfg/*.cfg", "csp-cfg/*.cfg", "csp-cfg/in-progress/*.cfg", "yolo-fastest/*/*.cfg")
RECURRENT = {"rnn", "gru", "lstm", "conv_lstm", "crnn", "history"}


def _corpus() -> list[str]:
    if SHARED is None:
        return []
    root = SHARED / "darknet"
    return sorted(str(p.relative_to(root)) for pattern in CORPUS_DIRS for p in root.glob(pattern))


def _cases() -> list[str]:
    if SHARED is None:
        return []
    return sorted(p.parent.name for p in (SHARED / "conformance" / "cases").glob("*/meta.json"))


# Without the shared folder each parametrized test still exists once and skips via `shared`.
CORPUS = _corpus() or [None]
CASES = _cases() or [None]

#: Cfgs that cannot build at their own [net] size, and why.  Darknet refuses them too.
INVALID_AT_OWN_SIZE = {
    # parse_convolutional aborts: "Layer size, nweights, channels or filters don't match for the share_layer"
    "csp-cfg/in-progress/yolov3-spp-matrix.cfg": "share_index layer 115",
    # at 416x416 an odd 13x13 map is downsampled and upsampled to 14x14, then routed with a 13x13 one
    # (Darknet prints "The width and height of the input layers are different" and zeroes the layer);
    # the conformance cases run them at 128x128 where the sizes agree
    "csp-cfg/in-progress/csresnet50-elastic-panet-spp.cfg": "route inputs have different sizes",
    "csp-cfg/in-progress/csresnext50-elastic-panet-spp.cfg": "route inputs have different sizes",
}


@functools.lru_cache(maxsize=None)
def case_meta(case: str) -> dict:
    return json.loads((SHARED / "conformance" / "cases" / case / "meta.json").read_text())


@functools.lru_cache(maxsize=None)
def case_graph(case: str):
    meta = case_meta(case)
    return build_graph(read_cfg(SHARED / meta["cfg"]), size=(meta["width"], meta["height"]))


@functools.lru_cache(maxsize=None)
def own_size_graph(rel: str):
    return build_graph(read_cfg(SHARED / "darknet" / rel))


# ------------------------------------------------------------------------------ (a) corpus
@pytest.mark.parametrize("rel", CORPUS)
def test_corpus_cfg_parses_and_builds_at_its_own_size(shared, rel):
    cfg = read_cfg(shared / "darknet" / rel)
    assert cfg.net.type == "net" and cfg.layers
    no_image = cfg.net.get_int("width", 0) <= 0 or cfg.net.get_int("height", 0) <= 0
    recurrent = any(s.type in RECURRENT for s in cfg.layers)
    if rel in INVALID_AT_OWN_SIZE:
        with pytest.raises(CfgError, match=INVALID_AT_OWN_SIZE[rel]):
            own_size_graph(rel)
        return
    if no_image or recurrent:
        # graph-only models (text RNNs): building may fail, but only with a CfgError
        try:
            own_size_graph(rel)
        except CfgError:
            pass
        return
    g = own_size_graph(rel)
    assert len(g.layers) == len(cfg.layers)
    for s in g.layers:
        assert s.outputs > 0 or s.kind in ("cost", "contrastive"), (s.index, s.kind)


def test_corpus_is_complete(shared):
    corpus = _corpus()
    assert len(corpus) >= 120
    assert {"cfg/yolov4.cfg", "csp-cfg/csdarknet53.cfg", "csp-cfg/in-progress/csresnext50-fpn-spp.cfg",
            "yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1.cfg"} <= set(corpus)
    assert set(INVALID_AT_OWN_SIZE) <= set(corpus)


# ------------------------------------------------------------------------------ (b) shapes
def _layers_tsv(case: str) -> list[list[str]]:
    lines = (SHARED / "conformance" / "cases" / case / "layers.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["index", "type", "out_c", "out_h", "out_w", "outputs"]
    return [line.split("\t") for line in lines[1:] if line]


@pytest.mark.parametrize("case", CASES)
def test_case_shapes_equal_darknet(shared, case):
    meta = case_meta(case)
    g = case_graph(case)
    assert len(g.layers) == meta["layers"]
    rows = _layers_tsv(case)
    assert len(rows) == len(g.layers)
    with np.load(shared / "conformance" / "cases" / case / "expected.npz") as npz:
        for spec, row in zip(g.layers, rows):
            where = f"{case} layer {spec.index} [{spec.kind}]"
            assert int(row[0]) == spec.index and row[1] == spec.kind, where
            assert spec.out_shape == tuple(int(v) for v in npz[f"shape_{spec.index}"]), where
            assert spec.out_shape == (int(row[2]), int(row[3]), int(row[4])), where
            assert spec.outputs == int(row[5]), where
    flat = [s.index for s in g.layers if s.out_shape == (0, 0, 0)]
    assert flat == [int(r[0]) for r in rows if r[2:5] == ["0", "0", "0"]]  # Darknet's own layers.tsv
    if "flat_layers" in meta:
        assert flat == meta["flat_layers"]


# ------------------------------------------------------------------------------ (c) rolemap
@pytest.mark.parametrize("case", CASES)
def test_case_weight_blocks_equal_rolemap(shared, case):
    g = case_graph(case)
    lines = (shared / "conformance" / "cases" / case / "rolemap.tsv").read_text().splitlines()
    theirs = []
    for line in lines:
        if line and not line.startswith("#"):
            index, kind, role, count = line.split("\t")
            theirs.append((int(index), kind, role, int(count)))
    ours = [(s.index, s.kind, b.role, b.count) for s in g.layers if not s.dontload
            for b in s.blocks if not (b.optional_bn and s.dontloadscales)]
    assert ours == theirs
    # the rolemap is the whole file: the synthetic .weights size follows
    w = case_meta(case)["weights"]
    if "bytes" in w:
        header = 20 if w["major"] * 10 + w["minor"] >= 2 else 16
        assert header + 4 * sum(n for *_, n in theirs) == w["bytes"]


# ------------------------------------------------------------------------------ (d), (e) totals
BFLOPS = {
    "csp-cfg/csdarknet53": 13.071, "csp-cfg/darknet53": 18.576, "csp-cfg/csresnet50": 8.972,
    "csp-cfg/csresnext50": 7.933, "csp-cfg/csmobilenet-v2": 0.764, "csp-cfg/mobilenet-v2": 0.859,
    "csp-cfg/enetb0": 0.915, "csp-cfg/res2netlite72": 5.187, "csp-cfg/csdarknet53-elastic": 7.745,
    "csp-cfg/csresnext50-elastic": 5.452, "cfg/csresnext50-panet-spp": 71.344, "cfg/yolov4": 128.459,
    "cfg/yolov4-csp": 77.003,
    # recurrent layers: the sum of their inner convolutions (Darknet prints these totals)
    "cfg/crnn.train": 0.017, "cfg/yolov3-tiny_occlusion_track": 8.405, "yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1": 0.252,
}

PARAMS_M = {
    "csdarknet53": 27.61, "darknet53": 41.57, "csresnet50": 21.57, "resnet50": 22.73, "csresnext50": 20.50,
    "resnext50": 22.19, "mobilenet-v2": 3.47, "csmobilenet-v2": 2.51, "enetb0": 4.81, "darknet": 7.31,
    "resnet10": 5.24,
}


@pytest.mark.parametrize("stem,expected", sorted(BFLOPS.items()))
def test_bflops_at_own_size(shared, stem, expected):
    assert round(own_size_graph(stem + ".cfg").bflops, 3) == expected


@pytest.mark.parametrize("stem,expected", sorted(PARAMS_M.items()))
def test_paper_parameter_counts(shared, stem, expected):
    assert round(own_size_graph(f"csp-cfg/{stem}.cfg").params / 1e6, 2) == expected


# ------------------------------------------------------------------------------ (f) real weights
def test_yolo_fastest_weights_sizes(shared):
    files = sorted((shared / "darknet" / "yolo-fastest").glob("*/*.weights"))
    assert len(files) == 5
    for w in files:
        data = w.read_bytes()
        if data.startswith(b"version https://git-lfs"):  # pragma: no cover - LFS pointer checkout
            pytest.skip(f"{w} is a Git LFS pointer")
        major, minor = struct.unpack_from("<ii", data)
        assert major * 10 + minor >= 2, "64-bit 'seen': a 20-byte header"
        g = build_graph(read_cfg(w.with_suffix(".cfg")))
        assert 20 + 4 * g.weight_floats == len(data), w.name


# ------------------------------------------------------------------------------ (g) own cfgs, by hand
def own(name: str):
    return build_graph(read_cfg(REPO / "cfgs" / f"{name}.cfg"))


def test_own_shapes_by_hand():
    g = own("tiny-yolo-all").layers
    assert g[1].out_shape == (8, 32, 32)  # maxpool 2/2, default padding 1: (64 + 1 - 2) // 2 + 1
    assert g[3].out_shape == (8, 32, 32)  # route groups=2 of 16 channels
    assert g[6].out_shape == (24, 32, 32)  # route -1,2: 8 + 16
    assert g[7].out_shape == (24, 32, 32)  # maxpool size 2 stride 1 keeps the size
    assert g[8].out_shape == (16, 16, 16)  # conv 3x3 stride 2 pad 1: (32 + 2 - 3) // 2 + 1
    assert [g[i].out_shape for i in (9, 11, 13)] == [(16, 16, 16)] * 3  # SPP
    assert g[14].out_shape == (64, 16, 16)
    assert g[16].out_shape == (16, 1, 1) and g[19].out_shape == (16, 16, 16)  # SE block
    assert g[24].out_shape == (21, 8, 8) and g[29].out_shape == (21, 16, 16)  # yolo heads
    assert g[26].out_shape == (32, 16, 16) and g[27].out_shape == (48, 16, 16)  # upsample, route
    assert g[32].out_shape == (33, 16, 16)  # Gaussian_yolo
    assert g[24].attrs.mask == (3, 4, 5) and g[24].attrs.masked_anchors == ((16, 20), (24, 30), (40, 36))

    g = own("tiny-classifier").layers
    assert g[1].out_shape == (8, 32, 32)  # dilation 2, pad=1: Darknet's formula ignores dilation
    assert g[1].attrs.padding == 1 and g[1].attrs.dilation == 2
    assert g[2].out_shape == (16, 16, 32)  # stride_y=2, stride_x=1: (32 + 2 - 3) // 2 + 1 = 16 rows
    assert g[3].out_shape == (16, 8, 16)  # local_avgpool 2/2
    assert g[7].out_shape == (20, 1, 1)
    assert (g[8].out_shape, g[8].outputs) == ((24, 1, 1), 24)  # connected
    assert (g[10].out_shape, g[10].outputs, g[10].is_flat) == ((0, 0, 0), 10, True)  # softmax is flat
    assert g[10].tensor_shape == (10, 1, 1)

    g = own("tiny-misc").layers
    # antialiasing: Darknet reports the stride-1 shape, the next layer gets the blurred, strided one
    assert (g[0].out_shape, g[0].next_shape) == ((8, 32, 32), (8, 16, 16))
    assert (g[1].out_shape, g[1].next_shape) == ((8, 16, 16), (8, 8, 8))  # 2x2 blur, pad 0
    assert (g[8].out_shape, g[8].next_shape) == ((8, 8, 8), (8, 4, 4))
    assert g[1].in_shape == (8, 16, 16) and g[9].in_shape == (8, 4, 4)
    assert g[3].attrs.share_index == 2 and g[3].inputs == (2, 2) and g[3].blocks == ()
    assert g[5].inputs == (4, 3, 2)  # previous layer first, then the from= layers
    assert g[7].out_shape == (8, 8, 8)  # dilation 2 with pad=1
    assert g[9].out_shape == (4, 4, 4)  # maxpool_depth out_channels=4
    assert g[10].out_shape == (4, 8, 8)  # upsample 2
    assert g[11].out_shape == (4, 4, 4)  # upsample -2
    assert g[12].out_shape == (16, 2, 2) and g[13].out_shape == (4, 4, 4)  # reorg3d, reverse
    assert g[14].out_shape == (6, 8, 8)  # deconv size 2 stride 2: (4 - 1) * 2 + 2
    assert g[16].out_shape == (6, 8, 8)  # crnn pad=1
    assert g[17].out_shape == (6, 6, 6)  # crop
    assert g[20].out_shape == (6, 1, 1) and g[21].out_shape == (6, 6, 6) and g[23].out_shape == (6, 6, 6)

    g = own("tiny-region").layers
    assert g[9].out_shape == (32, 8, 8)  # reorg stride 2 of 8x16x16
    assert g[10].out_shape == (64, 8, 8) and g[12].out_shape == (35, 8, 8)

    g = own("tiny-detection").layers
    assert g[2].out_shape == (6, 8, 8)  # local pad=1: (16 - 1) // 2 + 1
    assert g[3].out_shape == (4, 6, 6)  # local pad=0: (8 - 3) // 1 + 1
    assert g[4].attrs.inputs == 4 * 6 * 6
    assert (g[7].out_shape, g[7].outputs) == ((0, 0, 0), 52)


def test_own_weight_blocks_and_params():
    g = own("tiny-classifier")
    conv0 = g.layers[0]
    assert [(b.role, b.count) for b in conv0.blocks] == [
        ("biases", 8), ("scales", 8), ("rolling_mean", 8), ("rolling_variance", 8), ("weights", 3 * 8 * 9)]
    assert g.layers[1].params == 1 * 8 * 9  # depthwise
    assert g.layers[2].params == 4 * 16 * 9  # groups=2: 8/2 inputs per filter
    fc = g.layers[8]  # connected with BN: biases, weights, then the BN trio
    assert [b.role for b in fc.blocks] == ["biases", "weights", "scales", "rolling_mean", "rolling_variance"]
    assert fc.params == 20 * 24
    m = own("tiny-misc").layers
    assert [(b.role, b.count) for b in m[4].blocks] == [("shortcut_weights", 2 * 8)]  # per_channel, 1 from
    assert [(b.role, b.count) for b in m[5].blocks] == [("shortcut_weights", 3)]  # per_feature, 2 from
    assert [(b.role, b.count) for b in m[20].blocks] == [("implicit_weights", 6)]
    assert [b.role for b in m[15].blocks] == ["biases", "scales", "rolling_mean", "rolling_variance"]


def test_own_size_override_scales_shapes():
    g = build_graph(read_cfg(REPO / "cfgs" / "tiny-yolo-all.cfg"), size=(128, 96))
    assert g.layers[24].out_shape == (21, 12, 16) and g.layers[29].out_shape == (21, 24, 32)
    assert g.output_indices == [24, 29, 32]
