"""The lean module construction (darkcfg/layers/lean.py) and the batched BN fold (conv.fuse_convs).

Both exist for speed only (load and optimize time), so what is tested is that they build and
compute exactly what the plain constructions do: a torch release that changes ``nn.Conv2d``'s
fields, or a batched fold that mixes channels, fails here.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import darkcfg
from darkcfg.layers import lean
from darkcfg.layers.conv import ConvLayer, DarknetBatchNorm, fuse_convs
from darkcfg.weights import synthetic_weights
from fastpath_helpers import CONV, write_cfg

REPO = Path(__file__).resolve().parents[1]

CONV_ARGS = [  # (in, out, size, stride, padding, dilation, groups, bias)
    (3, 8, 3, (1, 1), 1, 1, 1, True), (16, 32, 1, (1, 1), 0, 1, 1, False), (8, 8, 3, (2, 2), 1, 1, 8, False),
    (12, 6, 5, (1, 2), 4, 2, 3, True), (4, 4, 7, (3, 1), 0, 1, 2, False),
]


@pytest.mark.parametrize("args", CONV_ARGS)
def test_new_conv2d_is_the_constructors_conv(args: tuple) -> None:
    c, f, k, stride, pad, dil, groups, bias = args
    torch.manual_seed(3)
    ref = nn.Conv2d(c, f, k, stride, pad, dil, groups, bias=bias)
    torch.manual_seed(3)
    new = lean.new_conv2d(c, f, k, stride, pad, dil, groups, bias)
    assert type(new) is nn.Conv2d and repr(new) == repr(ref)
    ref_vars, new_vars = vars(ref), vars(new)
    assert sorted(ref_vars) == sorted(new_vars)
    for name, value in ref_vars.items():
        if name == "_parameters":
            assert list(value) == list(new_vars[name])
            for p_name, p in value.items():
                q = new_vars[name][p_name]
                assert (p is None) == (q is None)
                if p is not None:  # same Kaiming draws in the same order
                    assert type(q) is nn.Parameter and q.requires_grad and torch.equal(p, q)
        else:
            assert repr(new_vars[name]) == repr(value) and type(new_vars[name]) is type(value), name
    x = torch.rand(2, c, 15, 13)
    assert torch.equal(new(x), ref(x))


def test_weights_follow_skips_the_random_init(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(nn.Conv2d, "reset_parameters", lambda self: calls.append(self))
    with lean.weights_follow():
        lean.new_conv2d(3, 4, 3, (1, 1), 1, 1, 1, True)
    assert calls == []
    lean.new_conv2d(3, 4, 3, (1, 1), 1, 1, 1, True)  # and only within
    assert len(calls) == 1


def test_set_plain_refuses_tensors_and_modules() -> None:
    m = nn.Module()
    lean.set_plain(m, a=1, b=None, c="x")
    assert (m.a, m.b, m.c) == (1, None, "x") and not m._parameters and not m._modules
    for value in (torch.zeros(1), nn.Parameter(torch.zeros(1)), nn.ReLU()):
        with pytest.raises(TypeError, match="registration"):
            lean.set_plain(m, d=value)


def test_conv_layer_registers_what_the_plain_construction_would() -> None:
    layer = ConvLayer(4, 6, 3, (1, 1), 1, 1, 1, bn=True, activation="leaky")
    assert [name for name, _ in layer.named_children()] == ["conv", "act", "bn"]
    assert sorted(k for k, _ in layer.named_parameters()) == ["bn.bias", "bn.weight", "conv.weight"]
    assert sorted(k for k, _ in layer.named_buffers()) == ["bn.running_mean", "bn.running_var"]
    assert layer.conv.bias is None and layer.onednn is None and layer.stride_x == 1
    plain = ConvLayer(4, 6, 3, (1, 1), 1, 1, 1, bn=False, activation="linear")
    assert plain.bn is None and "bn" not in plain._modules and torch.equal(plain.conv.bias, torch.zeros(6))
    bn = DarknetBatchNorm(5, "pjreddie")
    assert bn.pjreddie and isinstance(bn.weight, nn.Parameter) and torch.equal(bn.running_var, torch.zeros(5))
    layer.onednn_ready = True  # later assignments go through nn.Module as usual
    layer.bn = None
    assert layer.bn is None and layer.onednn_ready


def _fold_f64(w: torch.Tensor, bn: DarknetBatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's fuse_conv_batchnorm in numpy float64: the independent reference."""
    scale, bias, mean, var = (t.detach().double().numpy() for t in (bn.weight, bn.bias, bn.running_mean,
                                                                     bn.running_var))
    k = scale / (np.sqrt(var) + 1e-6 if bn.pjreddie else np.sqrt(var + 1e-5))
    shift = bias - mean * k
    folded = (w.double().numpy() * k.reshape(-1, 1, 1, 1)).astype(np.float32)
    return folded, shift.astype(np.float32)


@pytest.mark.parametrize("formula", ["alexeyab", "pjreddie"])
def test_batched_fold_is_each_layers_float64_fold(tmp_path: Path, formula: str) -> None:
    sections = (CONV.format(f=8, k=3, g=1, a="leaky") + CONV.format(f=12, k=1, g=1, a="mish")
                + "[convolutional]\nfilters=5\nsize=1\nstride=1\npad=0\nactivation=linear\n"
                + CONV.format(f=5, k=3, g=5, a="relu"))
    cfg = write_cfg(tmp_path, "fold.cfg", sections)
    model = darkcfg.load(cfg, bn_formula=formula)
    model.load_weights(io.BytesIO(synthetic_weights(model.graph, seed=9)))
    expected = [_fold_f64(layer.conv.weight.detach(), layer.bn) if layer.bn is not None else None
                for layer in model.layers]
    one_by_one = copy.deepcopy(model)
    for layer in one_by_one.layers:
        layer.fuse()
    weights = [layer.conv.weight for layer in model.layers]
    versions = [w._version for w in weights]
    model.fuse()  # fuse_convs: the gains of all layers at once
    for i, (layer, single) in enumerate(zip(model.layers, one_by_one.layers)):
        assert layer.bn is None and torch.equal(layer.conv.weight, single.conv.weight)
        assert torch.equal(layer.conv.bias, single.conv.bias)
        if expected[i] is not None:
            assert layer.conv.weight is weights[i]  # folded in place: the same parameter,
            assert weights[i]._version > versions[i]  # with its version moved on (caches see the change)
            assert np.array_equal(layer.conv.weight.detach().numpy(), expected[i][0])
            assert np.array_equal(layer.conv.bias.detach().numpy(), expected[i][1])


def test_fuse_convs_leaves_xnor_and_bn_free_layers(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "x.cfg", CONV.format(f=8, k=3, g=1, a="leaky") + "xnor=1\n"
                    + CONV.format(f=4, k=1, g=1, a="leaky"))
    model = darkcfg.load(cfg)
    xnor_bn = model.layers[0].bn
    fuse_convs(list(model.layers))
    assert model.layers[0].bn is xnor_bn and model.layers[1].bn is None
