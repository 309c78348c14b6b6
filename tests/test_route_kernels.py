"""The native ``[route]`` kernels of optimize()d NHWC nets: the concatenation copy, a route pooled
part by part when a ``[maxpool]`` is its only reader, and a 1x1 conv reading a two-map route in
place (darkcfg/fusion.py FoldedRoute).

The copy and the pools move or compare floats and add nothing, and the 1x1 conv makes the same sums
in the same order as on the concatenation, so everything here is exact equality (with ``torch.cat``,
Darknet's maxpool as :func:`darkcfg.layers.functional.darknet_maxpool`, the 1x1 kernel on the
concatenated map)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import List

import pytest
import torch

import darkcfg
from darkcfg import fusion, native
from darkcfg.fusion import FoldedRoute
from darkcfg.layers import direct_conv
from darkcfg.layers import functional as DF
from darkcfg.layers.direct_conv import DirectConv
from darkcfg.weights import synthetic_weights
from fastpath_helpers import CONV, nhwc, optimized, with_and_without_fusions, write_cfg

pytestmark = pytest.mark.skipif(native.library() is None, reason="the native kernels need a C compiler on Linux")


def _parts(batch: int, nan: bool = False) -> List[torch.Tensor]:
    """A route's kinds of parts: a channel slice (Darknet's groups/group_id), a whole NHWC map with
    a channel count no multiple of 8, and a slice starting at channel 0 -- with -inf (and NaN) in them.
    (The pools are compared without NaN: the torch path lets one through, Darknet's comparison and the
    kernel never do; tests/test_direct_conv.py checks the kernel's.)"""
    torch.manual_seed(batch)
    a = torch.randn(batch, 64, 13, 21)
    a.view(-1)[::11] = float("-inf")
    if nan:
        a.view(-1)[5::97] = float("nan")
    b = torch.randn(batch, 27, 13, 21)
    a, b = nhwc(a), nhwc(b)
    return [a[:, 32:], b, a[:, :5]]


@pytest.mark.parametrize("batch", [1, 3])
def test_concat_kernel_equals_torch_cat(batch: int) -> None:
    parts = _parts(batch, nan=True)
    with torch.no_grad():
        y = direct_conv.concat_nhwc(parts)
        again = direct_conv.concat_nhwc(parts)  # the cached plan
    ref = torch.cat(parts, 1)
    assert y is not None and again is not None and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.nan_to_num(), ref.nan_to_num()) and torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(again.nan_to_num(), y.nan_to_num())


def test_route_kernels_step_aside() -> None:
    """NCHW maps, other dtypes, differing sizes and autograd take the torch path (None)."""
    a, b = _parts(1)[:2]
    for parts in ([a.contiguous(), b], [a.double(), b.double()], [a, b[:, :, :12]]):
        assert direct_conv.concat_nhwc(parts) is None
        assert direct_conv.pool_concat_nhwc(parts, 2, 2, 2, 0) is None
    with torch.no_grad():
        assert direct_conv.concat_nhwc([a, b]) is not None  # (the plan is cached now)
    grad = [a, b.clone().requires_grad_(True)]
    assert direct_conv.concat_nhwc(grad) is None and direct_conv.pool_concat_nhwc(grad, 2, 2, 2, 0) is None


# size, stride x, stride y, total padding
POOLS = [(2, 2, 2, 0), (2, 2, 2, 1), (2, 1, 1, 1), (3, 2, 2, 2), (3, 1, 1, 2), (5, 1, 1, 4), (3, 3, 2, 2)]


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "k{}s{}x{}p{}".format(*p))
@pytest.mark.parametrize("batch", [1, 2])
def test_pooled_parts_equal_the_pooled_concatenation(pool: tuple, batch: int) -> None:
    size, sx, sy, pad = pool
    parts = _parts(batch)
    with torch.no_grad():
        y = direct_conv.pool_concat_nhwc(parts, size, sx, sy, pad)
        one = direct_conv.maxpool_nhwc(parts[0], size, sx, sy, pad)  # a channel slice alone
    ref = DF.darknet_maxpool(torch.cat(parts, 1).contiguous(), size, sx, sy, pad)
    assert y is not None and one is not None and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ref)
    assert torch.equal(one, ref[:, :32])


# first part's channels (taken from a 48-channel map at offset 8, or whole when equal), second
# part's, output channels, h, w, batch
SPLITS = [(16, 24, 32, 7, 9, 1), (40, 24, 24, 5, 5, 2), (8, 5, 13, 3, 3, 1), (32, 32, 255, 4, 5, 1),
          (48, 17, 64, 2, 2, 1), (24, 40, 8, 6, 7, 1)]


@pytest.mark.parametrize("case", SPLITS, ids=lambda c: "{}+{}to{}_{}x{}b{}".format(*c))
def test_1x1_conv_on_two_parts_equals_it_on_their_concatenation(case: tuple) -> None:
    """Channel-slice and whole-map parts; output channels with 16- and 8-wide strips and a partial
    one; maps of fewer pixels than a register block (the padded-copy tail) and of more."""
    ca, cb, co, h, w, batch = case
    torch.manual_seed(ca * 7 + co)
    big = nhwc(torch.randn(batch, 48, h, w))
    a = big if ca == 48 else big[:, 8:8 + ca]
    b = nhwc(torch.randn(batch, cb, h, w))
    conv = torch.nn.Conv2d(ca + cb, co, 1)
    plan = DirectConv(conv, "leaky")
    with torch.no_grad():
        y = plan.on_parts([a, b])
        ref = plan(nhwc(torch.cat([a, b], 1)))
        swapped = plan.on_parts([b, a])  # other channel counts: a plan of its own (or None if they differ)
    assert y is not None and ref is not None and torch.equal(y, ref)
    if ca == cb:
        assert swapped is not None
    assert DirectConv(conv, "leaky").on_parts([a, b, b[:, :0]]) is None  # three parts: the route runs


def _cfg(tmp_path: Path, extra_reader: bool) -> Path:
    """yolov4-tiny's CSP stage in small: conv, its half by groups, two convs, routes, 1x1, maxpool."""
    conv = lambda f, k: CONV.format(f=f, k=k, g=1, a="leaky")  # noqa: E731
    text = (conv(16, 3) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv(8, 3) + conv(8, 3)
            + "[route]\nlayers=-1,-2\n" + conv(16, 1) + "[route]\nlayers=-6,-1\n[maxpool]\nsize=2\nstride=2\n"
            + conv(12, 3) + ("[route]\nlayers=-3\n" if extra_reader else ""))
    return write_cfg(tmp_path, f"csp{int(extra_reader)}.cfg", text)


@pytest.mark.parametrize("extra_reader", [False, True])
def test_routes_read_by_one_layer_alone_are_folded_into_it(tmp_path: Path, extra_reader: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKCFG_REPLAY", "0")  # the ordinary path's calls (replays: tests/test_replay.py)
    m = optimized(_cfg(tmp_path, extra_reader), seed=3)
    folded = {i: f for i, f in m.fusions.items() if isinstance(f, FoldedRoute)}
    # 0 conv, 1 route (half), 2, 3 conv, 4 route [3, 2], 5 conv 1x1, 6 route [0, 5], 7 maxpool;
    # extra: 9 reads 6 too
    assert folded == ({4: FoldedRoute(5)} if extra_reader else {4: FoldedRoute(5), 6: FoldedRoute(7)})
    calls: list = []
    pool, on_parts = fusion.bind_pool_concat, DirectConv.bind_parts
    monkeypatch.setattr(fusion, "bind_pool_concat", lambda *a: calls.append("pool") or pool(*a))
    monkeypatch.setattr(DirectConv, "bind_parts", lambda self, p: calls.append("1x1") or on_parts(self, p))
    x = torch.rand(2, 3, 24, 40)
    fused, every, plain = with_and_without_fusions(m, x)
    assert calls == (["1x1"] if extra_reader else ["1x1", "pool"])
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))
    assert torch.equal(fused[-1], every[m.output_layers[-1]].contiguous())
    monkeypatch.setattr(fusion, "bind_pool_concat", lambda *a: None)  # refused calls run the layers
    monkeypatch.setattr(DirectConv, "bind_parts", lambda self, p: None)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(m(x), plain))


def test_yolov4_tiny_folds_its_six_csp_routes(shared: Path) -> None:
    """yolov4-tiny (Darknet's cfg, synthetic weights, 128x128): its three route -> maxpool and three
    route -> 1x1 pairs are folded and the output equals the layer-by-layer forward's exactly."""
    m = darkcfg.load(shared / "darknet/cfg/yolov4-tiny.cfg", size=(128, 128))
    m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=7)))
    m.optimize()
    assert sorted(i for i, f in m.fusions.items() if isinstance(f, FoldedRoute)) == [6, 8, 14, 16, 22, 24]
    fused, _, plain = with_and_without_fusions(m, torch.rand(1, 3, 128, 128))
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))
