"""Darknet's SGD update (update_convolutional_layer) against a hand computation and torch's SGD."""

import pytest
import torch
from torch import nn

import darkcfg
from darkcfg.train.sgd import DarknetSGD, darknet_param_groups


def test_two_steps_by_hand():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    b = nn.Parameter(torch.tensor([0.5]))
    opt = DarknetSGD([{"params": [w]}, {"params": [b], "decay": 0.0}], momentum=0.9, decay=0.01)
    batch = 4
    # step 1: dL/dw = [0.4, -0.8], dL/db = [2.0]; updates = -g - decay*batch*w
    w.grad, b.grad = torch.tensor([0.4, -0.8]), torch.tensor([2.0])
    opt.step(lr=0.1, batch=batch)
    u1 = [-0.4 - 0.04 * 1.0, 0.8 - 0.04 * -2.0]                # [-0.44, 0.88]
    w1 = [1.0 + 0.025 * u1[0], -2.0 + 0.025 * u1[1]]           # lr/batch = 0.025
    assert w.tolist() == pytest.approx(w1, abs=1e-7)
    assert b.item() == pytest.approx(0.5 + 0.025 * -2.0, abs=1e-7)  # no decay on biases
    # step 2 at another rate: the buffer is momentum * previous updates
    w.grad, b.grad = torch.tensor([0.0, 0.2]), torch.tensor([-1.0])
    opt.step(lr=0.2, batch=batch)
    u2 = [0.9 * u1[0] - 0.0 - 0.04 * w1[0], 0.9 * u1[1] - 0.2 - 0.04 * w1[1]]
    assert w.tolist() == pytest.approx([w1[0] + 0.05 * u2[0], w1[1] + 0.05 * u2[1]], abs=1e-7)
    assert b.item() == pytest.approx(0.45 + 0.05 * (0.9 * -2.0 + 1.0), abs=1e-7)
    assert opt.state[w]["updates"].tolist() == pytest.approx([0.9 * u for u in u2], abs=1e-7)


def test_equals_torch_sgd_on_grad_over_batch_with_changing_rates():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    ours, ref = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt = DarknetSGD([{"params": [ours]}], momentum=0.949, decay=0.0005)
    batch = 64
    tref = torch.optim.SGD([ref], lr=1.0, momentum=0.949, weight_decay=0.0005)
    for step, lr in enumerate([1e-3, 2e-3, 5e-4, 1e-2]):
        g = torch.randn(5, 3) * 10
        ours.grad = g.clone()
        opt.step(lr=lr, batch=batch)
        ref.grad = g / batch
        for group in tref.param_groups:
            group["lr"] = lr
        tref.step()
    torch.testing.assert_close(ours.data, ref.data, rtol=1e-5, atol=1e-6)


def test_param_groups_decay_only_weights():
    model = darkcfg.load("cfgs/tiny-yolo-all.cfg")
    groups = darknet_param_groups(model)
    decayed = {id(p) for g in groups if g.get("decay", None) is None for p in g["params"]}
    plain = {id(p) for g in groups if g.get("decay", None) == 0.0 for p in g["params"]}
    for layer in model.layers:
        for role, t in getattr(layer, "weight_tensors", lambda: [])():
            if isinstance(t, nn.Parameter):
                assert (id(t) in decayed) == (role == "weights"), role
    assert decayed and plain and not decayed & plain
    assert len(decayed | plain) == len({id(p) for p in model.parameters()})


def test_sync_bn_conversion_shares_tensors_and_saves_identically(tmp_path):
    from darkcfg.layers.conv import DarknetBatchNorm
    from darkcfg.train.distributed import convert_sync_batchnorm

    model = darkcfg.load("cfgs/tiny-yolo-all.cfg")
    model.save_weights(tmp_path / "a.weights")
    params = {id(p) for p in model.parameters()}
    n = convert_sync_batchnorm(model)
    assert n > 0 and not any(isinstance(m, DarknetBatchNorm) for m in model.modules())
    assert {id(p) for p in model.parameters()} == params
    model.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    model.eval()
    x = torch.rand(1, 3, model.height, model.width)
    ref = darkcfg.load("cfgs/tiny-yolo-all.cfg", tmp_path / "a.weights")
    for a, b in zip(model(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
