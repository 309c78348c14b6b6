"""darkcfg's own small cfgs (``cfgs/*.cfg``) run end to end, with random weights.

These tests need nothing outside the repository.  Each cfg is built with
``darkcfg.load``, given deterministic random ``.weights`` (written block by block
from the graph's own description, loaded, then saved back byte-identically), run on
a batch of 2, and checked against the shapes the graph predicted.  The cfgs together
must touch every layer kind darkcfg can run (asserted programmatically), and a few
layers are re-computed independently with plain torch ops from their inputs.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import darkcfg
from darkcfg.cfg import read_cfg
from darkcfg.graph import build_graph
from darkcfg.layers import registry
from darkcfg.layers.activations import ACTIVATIONS

REPO = Path(__file__).resolve().parents[1]
CFG_DIR = REPO / "cfgs"
OWN_CFGS = sorted(CFG_DIR.glob("*.cfg"))
NAMES = [p.stem for p in OWN_CFGS]

#: Kinds darkcfg only knows as a graph (sequence models): not runnable, not required here.
NOT_RUNNABLE = {"rnn", "gru", "lstm", "conv_lstm", "history"}

#: A non-square size per cfg that respects its strides (all downsampling is by powers of 2).
NON_SQUARE = {
    "tiny-classifier": (40, 24),
    "tiny-detection": (48, 32),
    "tiny-misc": (64, 32),
    "tiny-region": (48, 80),
    "tiny-train": (96, 64),
    "tiny-yolo-all": (96, 64),
}


def _registered_builders() -> set[str]:
    from darkcfg.layers import conv, heads, merge, misc, pool  # noqa: F401  (register the builders)

    return set(registry.BUILDERS)


def write_random_weights(graph, path: Path, seed: int) -> None:
    """A valid .weights file for ``graph``: header 0.2.5 then every block, values by role."""
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<iiiQ", 0, 2, 5, 0)]
    for spec in graph.layers:
        if spec.dontload:
            continue
        outs = {b.role.rsplit(".", 1)[0]: b.count for b in spec.blocks if b.role.endswith("biases")}
        for b in spec.blocks:
            if b.role.endswith(("rolling_variance", "scales")):
                v = rng.uniform(0.5, 1.5, b.count)
            elif b.role.endswith("weights") and b.role != "shortcut_weights":
                n_out = outs.get(b.role.rsplit(".", 1)[0], 1)
                v = rng.uniform(-1, 1, b.count) * (3.0 / max(1.0, b.count / n_out)) ** 0.5
            else:
                v = rng.uniform(-0.5, 0.5, b.count)
            parts.append(v.astype("<f4").tobytes())
    path.write_bytes(b"".join(parts))


class Run:
    """One own cfg, loaded with random weights, and its per-layer outputs on a batch of 2."""

    def __init__(self, path: Path, tmp: Path, size=None):
        self.path = path
        self.model = darkcfg.load(path, size=size)
        self.graph = self.model.graph
        self.weights = tmp / f"{path.stem}.weights"
        write_random_weights(self.graph, self.weights, seed=len(path.stem))
        self.model.load_weights(self.weights)
        net = self.graph.net
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.rand(2, net.channels, net.height, net.width, generator=gen)
        with torch.no_grad():
            self.outs = self.model.layer_outputs(self.x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: intra-op threads only cost time (and flake on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(one_thread, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    return {p.stem: Run(p, tmp) for p in OWN_CFGS}


def test_own_cfgs_exist():
    assert len(OWN_CFGS) >= 5, f"expected the project's own cfgs in {CFG_DIR}"


@pytest.mark.parametrize("name", NAMES)
def test_builds_runs_and_matches_graph_shapes(runs, name):
    run = runs[name]
    g = run.graph
    assert len(run.outs) == len(g.layers)
    for spec, out in zip(g.layers, run.outs):
        assert tuple(out.shape) == (2,) + spec.tensor_shape, f"{name} layer {spec.index} [{spec.kind}]"
        if spec.kind not in ("cost", "contrastive"):
            assert torch.isfinite(out).all(), f"{name} layer {spec.index} [{spec.kind}] is not finite"
    # forward() returns the output layers only
    with torch.no_grad():
        heads = run.model(run.x)
    assert len(heads) == len(g.output_indices)
    for i, h in zip(g.output_indices, heads):
        assert torch.equal(h, run.outs[i])


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip(runs, name, tmp_path):
    run = runs[name]
    assert run.weights.stat().st_size == 20 + 4 * run.graph.weight_floats
    saved = tmp_path / "saved.weights"
    run.model.save_weights(saved)
    assert saved.read_bytes() == run.weights.read_bytes()
    # a fresh model from the saved file computes the same outputs
    fresh = darkcfg.load(run.path, saved)
    with torch.no_grad():
        outs = fresh.layer_outputs(run.x)
    for spec, a, b in zip(run.graph.layers, run.outs, outs):
        assert torch.equal(a, b), f"{name} layer {spec.index} [{spec.kind}]"


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_two_equals_two_single_runs(runs, name):
    run = runs[name]
    with torch.no_grad():
        singles = [run.model.layer_outputs(run.x[i:i + 1]) for i in range(2)]
    for spec, both, a, b in zip(run.graph.layers, run.outs, singles[0], singles[1]):
        scale = max(1.0, float(both.detach().abs().max()))
        torch.testing.assert_close(both, torch.cat([a, b]), rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m: f"{name} layer {spec.index} [{spec.kind}]: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_non_square_size(name, tmp_path):
    w, h = NON_SQUARE[name]
    assert w != h
    run = Run(CFG_DIR / f"{name}.cfg", tmp_path, size=(w, h))
    assert (run.graph.net.width, run.graph.net.height) == (w, h)
    for spec, out in zip(run.graph.layers, run.outs):
        assert tuple(out.shape) == (2,) + spec.tensor_shape, f"{name} at {w}x{h}: layer {spec.index} [{spec.kind}]"
    # the first layer really sees a non-square image
    assert run.outs[0].shape[2] != run.outs[0].shape[3]


def _graphs():
    return {p.stem: build_graph(read_cfg(p)) for p in OWN_CFGS}


def test_cover_every_runnable_kind():
    kinds = {s.kind for g in _graphs().values() for s in g.layers}
    need = _registered_builders() - NOT_RUNNABLE
    assert not need - kinds, f"own cfgs miss layer kinds: {sorted(need - kinds)}"
    assert not kinds - _registered_builders()


def test_cover_every_activation():
    used = {s.attrs.activation for g in _graphs().values() for s in g.layers
            if hasattr(s.attrs, "activation")}
    assert not set(ACTIVATIONS) - used, f"own cfgs miss activations: {sorted(set(ACTIVATIONS) - used)}"


def test_cover_layer_options():
    layers = [s for g in _graphs().values() for s in g.layers]
    raw = {s.section.raw_type for s in layers}

    def some(kind, pred):
        return any(s.kind == kind and pred(s) for s in layers)

    checks = {
        "conv groups": some("convolutional", lambda s: s.attrs.groups > 1),
        "conv depthwise": some("convolutional", lambda s: s.attrs.groups == s.attrs.filters == s.in_shape[0] > 1),
        "conv dilation": some("convolutional", lambda s: s.attrs.dilation > 1),
        "conv stride_x != stride_y": some("convolutional", lambda s: s.attrs.stride_x != s.attrs.stride_y),
        "conv padding=": some("convolutional", lambda s: s.section.has("padding")),
        "conv pad=1": some("convolutional", lambda s: s.section.has("pad")),
        "conv batch_normalize": some("convolutional", lambda s: s.attrs.batch_normalize),
        "conv no batch_normalize": some("convolutional", lambda s: not s.attrs.batch_normalize),
        "conv share_index": some("convolutional", lambda s: s.attrs.share_index is not None),
        "conv antialiasing 1": some("convolutional", lambda s: s.attrs.antialiasing == 1),
        "conv antialiasing 2": some("convolutional", lambda s: s.attrs.antialiasing == 2),
        "conv flipped": some("convolutional", lambda s: s.attrs.flipped),
        "connected bn": some("connected", lambda s: s.attrs.batch_normalize),
        "connected no bn": some("connected", lambda s: not s.attrs.batch_normalize),
        "maxpool default padding": some("maxpool", lambda s: not s.section.has("padding") and s.attrs.size == 2
                                        and s.attrs.stride_x == 2 and not s.attrs.antialiasing),
        "maxpool size 2 stride 1": some("maxpool", lambda s: s.attrs.size == 2 and s.attrs.stride_x == 1
                                        and not s.attrs.maxpool_depth),
        "maxpool SPP": some("maxpool", lambda s: s.attrs.size >= 5 and s.attrs.stride_x == 1),
        "maxpool_depth": some("maxpool", lambda s: s.attrs.maxpool_depth),
        "maxpool antialiasing": some("maxpool", lambda s: s.attrs.antialiasing),
        "softmax groups": some("softmax", lambda s: s.attrs.groups > 1),
        "softmax temperature": some("softmax", lambda s: s.attrs.temperature != 1),
        "route negative": some("route", lambda s: any(v < 0 for v in s.section.get_ints("layers"))),
        "route absolute": some("route", lambda s: any(v >= 0 for v in s.section.get_ints("layers"))),
        "route groups": some("route", lambda s: s.attrs.groups > 1 and s.attrs.group_id > 0),
        "shortcut several from": some("shortcut", lambda s: len(s.attrs.sources) > 1),
        "shortcut plain": some("shortcut", lambda s: s.attrs.weights_type == "none"),
        "shortcut per_feature": some("shortcut", lambda s: s.attrs.weights_type == "per_feature"),
        "shortcut per_channel": some("shortcut", lambda s: s.attrs.weights_type == "per_channel"),
        "shortcut relu norm": some("shortcut", lambda s: s.attrs.weights_normalization == "relu"),
        "shortcut softmax norm": some("shortcut", lambda s: s.attrs.weights_normalization == "softmax"),
        "shortcut weighted, no norm": some("shortcut", lambda s: s.attrs.weights_type != "none"
                                           and s.attrs.weights_normalization == "none"),
        "shortcut activation": some("shortcut", lambda s: s.attrs.activation != "linear"),
        "upsample stride": some("upsample", lambda s: s.attrs.stride > 1),
        "upsample scale": some("upsample", lambda s: s.attrs.scale != 1),
        "upsample negative stride": some("upsample", lambda s: s.attrs.stride < 0),
        "reorg3d reverse": some("reorg3d", lambda s: s.attrs.reverse),
        "yolo mask": some("yolo", lambda s: s.attrs.mask != tuple(range(len(s.attrs.anchors)))),
        "yolo scale_x_y": some("yolo", lambda s: s.attrs.scale_x_y != 1),
        "yolo new_coords": some("yolo", lambda s: s.attrs.new_coords),
        "scale_channels scale_wh": some("scale_channels", lambda s: s.attrs.scale_wh),
        "scale_channels channels": some("scale_channels", lambda s: not s.attrs.scale_wh),
        "[silence] alias": "silence" in raw,
        "[empty]": "empty" in raw,
    }
    missing = [k for k, ok in checks.items() if not ok]
    assert not missing, f"own cfgs do not cover: {missing}"


# ---------------------------------------------------------------- independent per-layer checks
def _pad_max(x, left, right):
    return F.pad(x, (left, right, left, right), value=float("-inf"))


def test_yolo_all_layers_by_hand(runs):
    o = runs["tiny-yolo-all"].outs
    # [maxpool] size 2 stride 2, default padding 1 (bottom/right): plain 2x2 pooling on an even input
    torch.testing.assert_close(o[1], F.max_pool2d(o[0], 2, 2))
    # [route] groups=2 group_id=1 = second half of the channels
    torch.testing.assert_close(o[3], o[2][:, 8:16])
    # [route] -1,2 = concatenation
    torch.testing.assert_close(o[6], torch.cat([o[5], o[2]], 1))
    # [maxpool] size 2 stride 1: padding 1, all of it on the right/bottom
    torch.testing.assert_close(o[7], F.max_pool2d(_pad_max(o[6], 0, 1), 2, 1))
    # SPP: size 5/9/3 stride 1 keep the size (padding size-1 split evenly)
    torch.testing.assert_close(o[9], F.max_pool2d(_pad_max(o[8], 2, 2), 5, 1))
    torch.testing.assert_close(o[11], F.max_pool2d(_pad_max(o[8], 4, 4), 9, 1))
    torch.testing.assert_close(o[13], F.max_pool2d(_pad_max(o[8], 1, 1), 3, 1))
    torch.testing.assert_close(o[14], torch.cat([o[13], o[11], o[9], o[8]], 1))
    # [avgpool] = spatial mean; [scale_channels] = from * prev; [sam] = from * prev
    torch.testing.assert_close(o[16], o[15].mean((2, 3), keepdim=True))
    torch.testing.assert_close(o[19], o[15] * o[18])
    torch.testing.assert_close(o[21], o[19] * o[20])
    # [upsample] stride 2 = nearest neighbour
    torch.testing.assert_close(o[26], o[25].repeat_interleave(2, 2).repeat_interleave(2, 3))
    # [yolo] (new_coords=0, scale_x_y=1.05): logistic on x, y, obj, classes; affine on x, y
    x, y = o[23].view(2, 3, 7, 8, 8), o[24].view(2, 3, 7, 8, 8)
    alpha = 1.05
    torch.testing.assert_close(y[:, :, :2], torch.sigmoid(x[:, :, :2]) * alpha - 0.5 * (alpha - 1))
    torch.testing.assert_close(y[:, :, 2:4], x[:, :, 2:4])
    torch.testing.assert_close(y[:, :, 4:], torch.sigmoid(x[:, :, 4:]))
    # [yolo] new_coords=1, scale_x_y=2: no logistic, only the affine on x, y
    x, y = o[28].view(2, 3, 7, 16, 16), o[29].view(2, 3, 7, 16, 16)
    torch.testing.assert_close(y[:, :, :2], x[:, :, :2] * 2.0 - 0.5)
    torch.testing.assert_close(y[:, :, 2:], x[:, :, 2:])


def test_misc_layers_by_hand(runs):
    run = runs["tiny-misc"]
    o = run.outs
    # [shortcut] from=3, linear, no weights = plain add
    torch.testing.assert_close(o[6], o[5] + o[3])
    # [upsample] stride 2 scale 0.5; stride -2 = 2x2 sum-pool (times scale 1)
    torch.testing.assert_close(o[10], 0.5 * o[9].repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(o[11], F.avg_pool2d(o[10], 2) * 4)
    # [reorg3d] and its reverse move values around without changing them (Darknet's reverse runs
    # reorg_cpu on the output dims, so it is not the inverse of the forward mode)
    assert not torch.equal(o[12].flatten(), o[11].flatten())
    for i in (12, 13):
        torch.testing.assert_close(torch.sort(o[i].flatten(1))[0], torch.sort(o[11].flatten(1))[0])
    # [maxpool_depth] out_channels=4: max over channel groups g, g+4
    torch.testing.assert_close(o[9], torch.maximum(o[8][:, :4], o[8][:, 4:]))
    # [crop] 6x6 from 8x8: centre window mapped to 2x - 1
    torch.testing.assert_close(o[17], 2 * o[16][:, :, 1:7, 1:7] - 1)
    # [empty], [silence]: identity
    assert torch.equal(o[18], o[17]) and torch.equal(o[19], o[18])
    # [implicit]: a learned constant, the same for every image
    assert tuple(o[20].shape) == (2, 6, 1, 1) and torch.equal(o[20][0], o[20][1])
    # [scale_channels] (per channel) and scale_wh (per pixel)
    torch.testing.assert_close(o[21], o[19] * o[20])
    torch.testing.assert_close(o[23], o[21] * o[22])
    # [activation] tanh / linear
    torch.testing.assert_close(o[24], torch.tanh(o[23]))
    act = [s.index for s in run.graph.layers if s.kind == "activation" and s.attrs.activation == "linear"]
    assert len(act) == 2
    for i in act:
        assert torch.equal(o[i], o[i - 1])
    # share_index: layer 3 owns no weights in the file
    assert run.graph.layers[3].blocks == () and run.graph.layers[3].params == 0
    # [contrastive] has nothing to compute at inference: zeros of the input's size
    last = run.graph.layers[-1]
    assert last.kind == "contrastive" and last.outputs == run.graph.layers[-2].outputs
    assert not o[-1].any()


def test_classifier_layers_by_hand(runs):
    o = runs["tiny-classifier"].outs
    # [dropout] identity
    assert torch.equal(o[5], o[4])
    # [avgpool]
    torch.testing.assert_close(o[7], o[6].mean((2, 3), keepdim=True))
    # [softmax] groups=2 temperature=2.5
    x = o[9].view(2, 2, 5)
    torch.testing.assert_close(o[10].view(2, 2, 5), torch.softmax(x / 2.5, -1))
    # [cost] outputs zeros at inference
    assert tuple(o[11].shape) == (2, 10, 1, 1) and not o[11].any()


def test_detection_and_region_heads(runs):
    g = runs["tiny-detection"].graph
    assert [s.kind for s in g.layers][-1] == "detection"
    assert g.output_indices == [len(g.layers) - 1]
    r = runs["tiny-region"]
    assert r.graph.output_indices == [len(r.graph.layers) - 1]
    # [reorg] of 8x16x16 at stride 2 -> 32x8x8, holding the same values
    i = next(s.index for s in r.graph.layers if s.kind == "reorg")
    torch.testing.assert_close(torch.sort(r.outs[i].flatten(1))[0], torch.sort(r.outs[i - 1].flatten(1))[0])
