"""Training core: Darknet's gradients for one batch against Darknet's own dumps (shared/training),
train-mode layers, seen, any input size, initialisation and partial weights."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import darkcfg
from darkcfg import conformance
from darkcfg.errors import DarkcfgError
from darkcfg.train.bn import batch_norm_train, batch_stats

REPO = Path(__file__).resolve().parents[1]
FIXTURES = ["yolov3-tiny-128", "yolov4-tiny-160", "yolov4-tiny-160-mse", "yolov4-tiny-160-giou",
            "yolov2-tiny-160", "yolov2-tiny-160-seen12800"]


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).astype(np.float64)) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def _close(ours: np.ndarray, ref: np.ndarray, strict: bool, what: str) -> None:
    """Strict: every element within 1e-4 of max|ref|; else within 5e-2 relative L2 (knife edges)."""
    ours, ref = ours.reshape(-1), ref.reshape(-1)
    if strict:
        err = float(np.abs(ours - ref).max())
        assert err <= 1e-4 * max(float(np.abs(ref).max()), 1e-30), f"{what}: max error {err:.3g}"
    else:
        assert _rel_l2(ours, ref) <= 5e-2, f"{what}: relative L2 error {_rel_l2(ours, ref):.3g}"


@pytest.fixture(scope="module")
def one_step(shared, make_weights):
    """Run Darknet.loss + backward once per fixture; cached for the module's tests."""
    torch.set_num_threads(1)
    cache: dict = {}

    def run(name: str):
        if name in cache:
            return cache[name]
        d = shared / "training" / name
        meta = json.loads((d / "meta.json").read_text())
        z = np.load(d / "expected.npz")
        weights = conformance.case_weights(make_weights, d, meta)
        assert hashlib.sha256(weights).hexdigest() == meta["weights"]["sha256"]
        weights = memoryview(weights)  # content, not a path
        model = darkcfg.load(d / meta["cfg"], weights).train()
        model.seen = meta["seen_before_step"]
        bn_stats: dict = {}
        for i in meta["conv_layers"]:
            bn = getattr(model.layers[i], "bn", None)
            if bn is not None:
                bn.register_forward_hook(lambda m, inp, out, i=i: bn_stats.__setitem__(i, batch_stats(inp[0].detach())))
        result = model.loss(torch.from_numpy(z["input"].astype(np.float32)), [t[:, :5] for t in z["truth"]])
        result.loss.backward()
        cache[name] = (model, meta, z, result, bn_stats)
        return cache[name]

    return run


@pytest.mark.parametrize("name", FIXTURES)
def test_costs_deltas_and_seen(one_step, name):
    model, meta, z, result, _ = one_step(name)
    assert model.seen == meta["seen_during_step"]
    for i in meta["loss_layers"]:
        ref_cost = meta["costs"][str(i)]
        assert abs(result.costs[i] - ref_cost) <= 1e-4 * abs(ref_cost), (i, result.costs[i], ref_cost)
        ref = z[f"delta_{i}"]
        ours = result.deltas[i].numpy().reshape(ref.shape)
        bound = 1e-5 + 1e-3 * max(1.0, float(np.abs(ref).max()))  # the conformance rule
        assert float(np.abs(ours - ref).max()) <= bound, i
    assert abs(result.cost - meta["net_cost"]) <= 1e-4 * abs(meta["net_cost"])
    assert abs(float(result.loss.detach()) - sum(result.costs.values())) <= 1e-3 * abs(float(result.loss.detach()))


@pytest.mark.parametrize("name", FIXTURES)
def test_gradients_are_minus_darknet_updates(one_step, name):
    model, meta, z, _, bn_stats = one_step(name)
    strict_layers = set(meta["strict_layers"])
    checked = 0
    for i in meta["conv_layers"]:
        layer = model.layers[i]
        strict = i in strict_layers
        wu = -layer.conv.weight.grad.numpy().reshape(-1)
        if f"weight_updates_{i}" in z.files:
            _close(wu, z[f"weight_updates_{i}"], strict, f"layer {i} weights")
        else:  # big layers: 8192 samples and per-filter sums
            _close(wu[z[f"wu_idx_{i}"]], z[f"wu_sample_{i}"], strict, f"layer {i} weight samples")
            sums = wu.reshape(layer.conv.weight.shape[0], -1).astype(np.float64).sum(1)
            _close(sums, z[f"wu_filter_sum_{i}"], strict, f"layer {i} filter sums")
        if layer.bn is not None:
            _close(-layer.bn.bias.grad.numpy(), z[f"bias_updates_ref_{i}"], strict, f"layer {i} biases")
            _close(-layer.bn.weight.grad.numpy(), z[f"scale_updates_{i}"], strict, f"layer {i} scales")
            mean, var = bn_stats[i]
            for ours, key in ((mean, "mean"), (var, "variance"), (layer.bn.running_mean, "rolling_mean"),
                              (layer.bn.running_var, "rolling_variance")):
                ref = z[f"{key}_{i}"]
                # 1e-5 of the tensor's scale: Darknet's own float32 sums over N = batch*h*w drift that much
                err = float(np.abs(ours.numpy() - ref).max()) / max(1.0, float(np.abs(ref).max()))
                assert err <= 1e-5, (i, key, err)
        else:
            _close(-layer.conv.bias.grad.numpy(), z[f"bias_updates_{i}"], strict, f"layer {i} biases")
        checked += 1
    assert checked == len(meta["conv_layers"]) and strict_layers


# --------------------------------------------------------------------- own cfgs, no fixtures
_YOLO_CFG = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[dropout]
probability=.25
[convolutional]
filters=21
size=1
stride=1
activation=linear
[yolo]
mask=0,1,2
anchors=8,8, 16,24, 40,32
classes=2
num=3
iou_loss={loss}
iou_normalizer=0.5
scale_x_y=1.1
ignore_thresh=.5
"""


def _tiny_yolo(tmp_path: Path, loss: str = "ciou") -> "darkcfg.Darknet":
    p = tmp_path / f"y-{loss}.cfg"
    p.write_text(_YOLO_CFG.format(loss=loss))
    torch.manual_seed(0)
    return darkcfg.load(p)


TARGETS = [[(0.3, 0.4, 0.2, 0.3, 1), (0.7, 0.6, 0.5, 0.4, 0)], np.array([[0.5, 0.5, 0.25, 0.25, 1.0]])]


@pytest.mark.parametrize("loss", ["mse", "iou", "giou", "diou", "ciou"])
def test_loss_backward_finite_for_every_iou_kind(tmp_path, loss):
    model = _tiny_yolo(tmp_path, loss).train()
    x = torch.rand(2, 3, 64, 64)
    r = model.loss(x, TARGETS)
    r.loss.backward()
    assert model.seen == 2 and set(r.costs) == {3}
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert model.layers[0].bn.weight.grad.abs().sum() > 0


def test_eval_mode_loss_keeps_statistics_and_seen(tmp_path):
    model = _tiny_yolo(tmp_path).eval()
    before = model.layers[0].bn.running_var.clone()
    r = model.loss(torch.rand(2, 3, 64, 64), TARGETS)
    assert model.seen == 0 and torch.equal(before, model.layers[0].bn.running_var)
    assert np.isfinite(r.cost)


def test_targets_are_checked(tmp_path):
    model = _tiny_yolo(tmp_path).train()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(DarkcfgError, match="2 images"):
        model.loss(x, TARGETS[:1])
    with pytest.raises(DarkcfgError, match="K x 5"):
        model.loss(x, [[(0.5, 0.5, 0.1)], []])
    with pytest.warns(UserWarning, match="class ids outside"):
        model.loss(x, [[(0.5, 0.5, 0.1, 0.1, 7)], []])


def test_region_loss_on_own_cfg():
    torch.manual_seed(0)
    model = darkcfg.load(REPO / "cfgs" / "tiny-region.cfg").train()
    c, h, w = model.channels, model.height, model.width
    r = model.loss(torch.rand(2, c, h, w), [[(0.4, 0.5, 0.3, 0.2, 0)], []])
    r.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert r.cost == pytest.approx(sum(r.costs.values()) / len(r.costs))


def test_darknet_bn_backward_formula_and_exact_option():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = batch_norm_train(x, scale, bias, rm, rv)
    (dx,) = torch.autograd.grad(y, x, g)
    # Darknet's formula written out independently (README of shared/training)
    n = 40
    xd = x.detach()
    mean = xd.mean((0, 2, 3), keepdim=True)
    var = xd.var((0, 2, 3), unbiased=True, keepdim=True)
    gs = g * scale.detach().view(1, 3, 1, 1)
    mean_delta = gs.sum((0, 2, 3), keepdim=True) * (-1 / (var + 1e-5).sqrt())
    var_delta = (gs * (xd - mean)).sum((0, 2, 3), keepdim=True) * -0.5 * (var + 1e-5) ** -1.5
    ref = gs / (var.sqrt() + 1e-5) + var_delta * 2 * (xd - mean) / n + mean_delta / n
    assert torch.allclose(dx, ref, atol=1e-12)
    assert torch.allclose(rm, 0.1 * mean.flatten()) and torch.allclose(rv, 0.9 + 0.1 * var.flatten())
    ye = batch_norm_train(x, scale, bias, rm.clone(), rv.clone(), exact=True)
    (dxe,) = torch.autograd.grad(ye, x, g)
    exact = torch.autograd.functional.vjp(
        lambda t: (t - t.mean((0, 2, 3), keepdim=True)) / (t.var((0, 2, 3), keepdim=True) + 1e-5).sqrt()
        * scale.detach().view(1, 3, 1, 1), xd, g)[1]
    assert torch.allclose(dxe, exact, atol=1e-10)
    assert (dxe - dx).abs().max() > 1e-6  # the two really differ on a small map


def test_exact_bn_backward_switch_changes_gradients(tmp_path):
    from darkcfg.train import set_bn_backward

    model = _tiny_yolo(tmp_path, "mse").train()
    x = torch.rand(2, 3, 64, 64)
    grads = []
    for exact in (False, True):
        assert set_bn_backward(model, exact) == 1
        model.zero_grad()
        torch.manual_seed(3)  # same dropout mask
        model.loss(x, TARGETS).loss.backward()
        grads.append(model.layers[0].conv.weight.grad.clone())
    rel = float((grads[0] - grads[1]).norm() / grads[1].norm())
    assert 0 < rel < 0.05


def test_dropout_only_in_train_mode(tmp_path):
    model = _tiny_yolo(tmp_path)
    drop = model.layers[1]
    x = torch.ones(1, 8, 32, 32)
    assert torch.equal(drop([x]), x)
    drop.train()
    y = drop([x])
    assert set(torch.unique(y).tolist()) <= {0.0, float(torch.tensor(1 / 0.75))} and (y == 0).any()


def test_maxpool_gradient_goes_to_first_maximum():
    from darkcfg.layers.pool import PaddedMaxPool

    pool = PaddedMaxPool(2, 2, 2, 0).train()
    x = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], requires_grad=True)
    pool([x]).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_any_input_size_without_rebuild(tmp_path):
    model = darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg")
    outs = model(torch.rand(1, 3, 96, 128))
    assert outs[0].shape[-2:] != model(torch.rand(1, 3, 64, 64))[0].shape[-2:]
    with pytest.raises(DarkcfgError, match="route inputs have different sizes.*multiples of 8"):
        model(torch.rand(1, 3, 64, 65))
    fixed = darkcfg.load(REPO / "cfgs" / "tiny-detection.cfg")
    with pytest.raises(DarkcfgError, match=f"only {fixed.width}x{fixed.height}"):
        fixed(torch.rand(1, fixed.channels, fixed.height + 32, fixed.width + 32))


def test_darknet_initialisation_is_finite_and_scaled():
    torch.manual_seed(0)
    model = darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg")
    for out in model(torch.rand(2, 3, 64, 64)):
        assert torch.isfinite(out).all()
    conv = model.layers[0]
    w = conv.conv.weight
    bound = (2.0 / (w.shape[1] * w.shape[2] * w.shape[3])) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.equal(conv.bn.weight, torch.ones_like(conv.bn.weight))
    assert torch.equal(conv.bn.running_var, torch.ones_like(conv.bn.running_var))


def test_seen_and_partial_weights_round_trip(tmp_path):
    model = _tiny_yolo(tmp_path).train()
    model.loss(torch.rand(2, 3, 64, 64), TARGETS)
    full = tmp_path / "m.weights"
    model.save_weights(full)
    assert struct.unpack_from("<Q", full.read_bytes(), 12)[0] == 2
    # .conv.N as Darknet's `partial`: the first N layers only
    part = tmp_path / "m.conv.1"
    model.save_weights(part, upto=1)
    n_floats = sum(t.numel() for _, t in model.layers[0].weight_tensors())
    assert part.stat().st_size == 20 + 4 * n_floats
    assert struct.unpack_from("<Q", part.read_bytes(), 12)[0] == 0  # `partial` resets seen
    fresh = _tiny_yolo(tmp_path)
    fresh.load_weights(part, upto=1)
    assert fresh.seen == 0
    for (_, a), (_, b) in zip(model.layers[0].weight_tensors(), fresh.layers[0].weight_tensors()):
        assert torch.equal(a, b)
    again = tmp_path / "again.weights"
    reloaded = _tiny_yolo(tmp_path)
    reloaded.load_weights(full)
    reloaded.save_weights(again)
    assert again.read_bytes() == full.read_bytes()


def test_gaussian_yolo_and_yolo_heads_train_together():
    """tiny-yolo-all has a [yolo] (new_coords=1) and a [Gaussian_yolo] head."""
    torch.manual_seed(0)
    model = darkcfg.load(REPO / "cfgs" / "tiny-yolo-all.cfg").train()
    kinds = {s.index: s.kind for s in model.graph.layers if s.kind in ("yolo", "Gaussian_yolo")}
    assert set(kinds.values()) == {"yolo", "Gaussian_yolo"}
    r = model.loss(torch.rand(2, 3, 64, 64), TARGETS)
    r.loss.backward()
    assert set(r.costs) == set(kinds)
    for i, kind in kinds.items():
        d = r.deltas[i]
        assert torch.isfinite(d).all() and d.abs().sum() > 0
        # the delta is exactly what reaches the head's input
        assert r.costs[i] == pytest.approx(float((d.double() ** 2).sum()), rel=1e-6) or kind == "yolo"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_detection_layer_loss_on_own_cfg():
    """tiny-detection: [local], [connected] (BN in train mode), [dropout] and the YOLOv1 head."""
    torch.manual_seed(0)
    model = darkcfg.load(REPO / "cfgs" / "tiny-detection.cfg").train()
    c, h, w = model.channels, model.height, model.width
    r = model.loss(torch.rand(2, c, h, w), [[(0.4, 0.5, 0.3, 0.2, 0)], [(0.7, 0.2, 0.1, 0.3, 0)]])
    r.loss.backward()
    (i,) = r.costs
    d = r.deltas[i].flatten(1)
    assert r.costs[i] == pytest.approx(float((d.double() ** 2).sum()), rel=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.seen == 2


_ONE_ANCHOR = """[net]
width=32
height=32
channels=3
[convolutional]
filters=7
size=3
stride=8
pad=1
activation=linear
[yolo]
mask=0
anchors=12,10
classes=2
num=1
iou_normalizer=0.5
obj_normalizer=2.0
cls_normalizer=3.0
label_smooth_eps=0.1
counters_per_class=10,40
ignore_thresh=1.0
"""


def test_yolo_mse_delta_matches_an_independent_computation(tmp_path):
    """One anchor, one truth: the cell, box, objectness and (smoothed, counted) class deltas by hand."""
    cfg = tmp_path / "one.cfg"
    cfg.write_text(_ONE_ANCHOR)
    torch.manual_seed(1)
    model = darkcfg.load(cfg).train()
    x = torch.rand(1, 3, 32, 32)
    truth = (0.6, 0.3, 0.25, 0.5, 0)
    r = model.loss(x, [[truth]])
    (i_layer,) = r.costs
    out = model.layer_outputs(x)[i_layer][0].detach().double()  # 7 x 4 x 4, activated
    delta = r.deltas[i_layer][0].double()
    ci, cj = int(0.6 * 4), int(0.3 * 4)
    o = out[:, cj, ci]
    scale = 2 - 0.25 * 0.5
    want_box = [0.6 * 4 - ci, 0.3 * 4 - cj, np.log(0.25 * 32 / 12), np.log(0.5 * 32 / 10)]
    mult = 40 / 10  # counters_per_class: class 0's multiplier scales its box, objectness and class deltas
    for k in range(4):
        assert float(delta[k, cj, ci]) == pytest.approx(0.5 * mult * scale * (want_box[k] - float(o[k])), abs=1e-5)
    assert float(delta[4, cj, ci]) == pytest.approx(mult * 2.0 * (1 - float(o[4])), abs=1e-5)
    # classes: y = 1*(1-eps) + eps/2 for the truth's class, eps/2 for the other; the multiplier
    # comes with cls_normalizer on this path
    assert float(delta[5, cj, ci]) == pytest.approx((0.95 - float(o[5])) * mult * 3.0, abs=1e-5)
    assert float(delta[6, cj, ci]) == pytest.approx(0.05 - float(o[6]), abs=1e-6)
    # every other cell: objectness pulled to 0 (ignore_thresh=1 never fires), nothing else
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[cj, ci] = False
    assert torch.allclose(delta[4][mask], -2.0 * out[4][mask], atol=1e-6)
    assert torch.count_nonzero(delta[[0, 1, 2, 3, 5, 6]][:, mask]) == 0
    assert r.costs[i_layer] == pytest.approx(float((delta ** 2).sum()), rel=1e-6)  # mse: sum of squares


def test_stopbackward_and_train_only_bn_freeze_as_darknet(tmp_path):
    cfg = tmp_path / "frozen.cfg"
    text = _YOLO_CFG.format(loss="mse").replace("activation=leaky\n", "activation=leaky\nstopbackward=1\n", 1)
    cfg.write_text(text)
    model = darkcfg.load(cfg).train()
    model.loss(torch.rand(2, 3, 64, 64), TARGETS).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.layers[0].parameters())
    assert model.layers[2].conv.weight.grad is not None
    cfg.write_text(_YOLO_CFG.format(loss="mse").replace("activation=leaky\n", "activation=leaky\ntrain_only_bn=1\n", 1))
    model = darkcfg.load(cfg).train()
    model.loss(torch.rand(2, 3, 64, 64), TARGETS).loss.backward()
    assert model.layers[0].conv.weight.grad is None and model.layers[0].bn.weight.grad is not None


def test_gradient_steps_lower_darknets_cost(tmp_path):
    """Sign check end to end: plain SGD on -Darknet's update lowers Darknet's own cost."""
    cfg = tmp_path / "one.cfg"
    cfg.write_text(_ONE_ANCHOR)
    torch.manual_seed(2)
    model = darkcfg.load(cfg).train()
    x = torch.rand(2, 3, 32, 32)
    targets = [[(0.6, 0.3, 0.25, 0.5, 0)], [(0.2, 0.7, 0.3, 0.3, 1)]]
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    costs = []
    for _ in range(30):
        opt.zero_grad()
        r = model.loss(x, targets)
        r.loss.backward()
        opt.step()
        costs.append(r.cost)
    assert costs[-1] < 0.75 * costs[0]
