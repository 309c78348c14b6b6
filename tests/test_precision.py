"""``optimize(dtype=torch.bfloat16)``: the stated policy (darkcfg/precision.py) and the stated
agreement with fp32: every output within BF16_AGREEMENT * max(1, max|fp32 output|)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import darkcfg
from darkcfg.cfg import read_cfg
from darkcfg.graph import HEAD_KINDS, build_graph
from darkcfg.precision import FP32_KINDS
from darkcfg.weights import synthetic_weights

from fastpath_helpers import CONV, write_cfg

ROOT = Path(__file__).resolve().parents[1]
OWN_CFGS = sorted((ROOT / "cfgs").glob("*.cfg"))
#: bf16 keeps 8 significant bits (relative rounding 2^-9); a few layers deep on well-scaled
#: weights the own cfgs measure 3e-4..6e-3 (tiny-region the largest), so 2e-2 leaves 3x margin.
BF16_AGREEMENT = 2e-2
#: float16 keeps 11 significant bits (rounding 2^-12, 8x finer than bf16's): the same margin.
FP16_AGREEMENT = BF16_AGREEMENT / 8


def _pair(cfg: Path, dtype: torch.dtype = torch.bfloat16) -> tuple[darkcfg.Darknet, darkcfg.Darknet, torch.Tensor]:
    graph = build_graph(read_cfg(cfg))
    data = bytearray(synthetic_weights(graph, seed=1))  # content (bytes would be a path)
    x = torch.rand(2, graph.net.channels, graph.net.height, graph.net.width,
                   generator=torch.Generator().manual_seed(0))
    return darkcfg.load(cfg, data).optimize(), darkcfg.load(cfg, data).optimize(dtype=dtype), x


@pytest.mark.parametrize("cfg", OWN_CFGS, ids=[p.stem for p in OWN_CFGS])
def test_bf16_agrees_with_fp32(cfg: Path) -> None:
    _check_agreement(cfg, torch.bfloat16, BF16_AGREEMENT)


@pytest.mark.parametrize("cfg", OWN_CFGS, ids=[p.stem for p in OWN_CFGS])
def test_fp16_agrees_with_fp32(cfg: Path) -> None:
    """``optimize(dtype=torch.float16)`` (``run --half`` on CUDA), run here on the CPU: the same
    policy with 3 more significant bits than bf16, so 8x tighter agreement."""
    _check_agreement(cfg, torch.float16, FP16_AGREEMENT)


def _check_agreement(cfg: Path, dtype: torch.dtype, bound: float) -> None:
    fp32, bf16, x = _pair(cfg, dtype)
    if bf16.precision_note is not None:  # the policy's float32 exception: tested on its own below
        return
    with torch.no_grad():
        ref, out = fp32(x), bf16(x)
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert o.dtype == torch.float32 and o.shape == r.shape and o.is_contiguous()
        scale = max(1.0, float(r.abs().max()))
        err = float((o - r).abs().max()) / scale
        assert err <= bound, f"{cfg.name}: {dtype} differs by {err:.2e} of scale"
        assert err > 0  # really computed in the reduced dtype, not silently fp32


def _depthwise_net(tmp_path: Path) -> Path:
    """Two inverted residuals (1x1 expand, depthwise 3x3, 1x1 project, shortcut), as in Yolo-Fastest:
    every conv one the direct kernels run."""
    block = (CONV.format(f=24, k=1, g=1, a="leaky") + CONV.format(f=24, k=3, g=24, a="leaky")
             + CONV.format(f=8, k=1, g=1, a="linear") + "[shortcut]\nfrom=-4\nactivation=linear\n")
    return write_cfg(tmp_path, "depthwise.cfg", CONV.format(f=8, k=1, g=1, a="leaky") + block + block)


def test_bf16_keeps_depthwise_heavy_nets_on_the_float32_direct_kernels(tmp_path: Path, monkeypatch) -> None:
    """A depthwise-heavy net whose convs the float32 direct kernels run is not converted on the
    CPU (those kernels are faster there than oneDNN's bf16 convs): outputs are the fp32 path's
    exactly and ``precision_note`` says why.  Where the native kernels cannot build, or for a net
    that is not depthwise-heavy, bf16 is applied (and agrees with fp32 to the stated bound)."""
    from darkcfg import native

    cfg = _depthwise_net(tmp_path)
    fp32, bf16, x = _pair(cfg)
    assert fp32.prefers_channels_last()
    with torch.no_grad():
        ref, out = fp32(x), bf16(x)
    if native.library() is None:
        assert bf16.precision_note is None and bf16.layer_dtypes is not None
    else:
        assert bf16.layer_dtypes is None and "7 of its 7 convs" in (bf16.precision_note or "")
        assert all(torch.equal(r, o) for r, o in zip(ref, out))
        assert all(p.dtype == torch.float32 for p in bf16.parameters())
    # Not depthwise-heavy (as far as the policy can tell): converted, and within the stated bound.
    monkeypatch.setattr(darkcfg.Darknet, "prefers_channels_last", lambda self: False)
    _, converted, _ = _pair(cfg)
    assert converted.precision_note is None and converted.layer_dtypes is not None
    with torch.no_grad():
        for r, o in zip(ref, converted(x)):
            err = float((o - r).abs().max()) / max(1.0, float(r.abs().max()))
            assert 0 < err <= BF16_AGREEMENT
    monkeypatch.undo()
    # float16 (CUDA's reduced dtype) is never kept back by this rule.
    assert darkcfg.load(cfg).optimize(dtype=torch.float16).precision_note is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_policy_heads_and_their_inputs_stay_fp32(dtype: torch.dtype) -> None:
    cfg = ROOT / "cfgs" / "tiny-yolo-all.cfg"
    _, bf16, _ = _pair(cfg, dtype)
    graph = bf16.graph
    feeds = {j for s in graph.layers if s.kind in HEAD_KINDS for j in s.inputs}
    assert bf16.layer_dtypes is not None and bf16.channels_last
    seen_bf16 = False
    for spec, layer, dtype in zip(graph.layers, bf16.layers, bf16.layer_dtypes):
        want = torch.float32 if spec.kind in FP32_KINDS or spec.index in feeds else dtype
        assert dtype == want, spec.where
        for p in layer.parameters(recurse=False):
            assert p.dtype == want, spec.where
        if spec.kind == "convolutional" and spec.index not in feeds and not getattr(layer, "xnor", False):
            assert layer.conv.weight.dtype == dtype, spec.where
            seen_bf16 = True
    assert seen_bf16


def _no_compiler() -> bool:
    import shutil

    return not hasattr(torch, "compile") or shutil.which(os.environ.get("CXX", "g++")) is None


@pytest.mark.skipif(_no_compiler(), reason="torch.compile's inductor backend needs torch.compile and a C++ compiler "
                                           "(g++ or $CXX), neither found here")
def test_compile_equals_eager() -> None:
    """``optimize(compile=True)``: one captured graph, outputs equal to eager within 1e-5."""
    cfg = ROOT / "cfgs" / "tiny-detection.cfg"
    graph = build_graph(read_cfg(cfg))
    data = bytearray(synthetic_weights(graph, seed=1))
    eager = darkcfg.load(cfg, data).optimize()
    compiled = darkcfg.load(cfg, data).optimize(compile=True)
    assert compiled.compile_seconds > 0
    x = torch.rand(2, graph.net.channels, graph.net.height, graph.net.width,
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for r, o in zip(eager(x), compiled(x)):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
