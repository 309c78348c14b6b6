"""The CPU inference fast paths of ``optimize()``: oneDNN fused conv + activation, the native
mish kernel and the allocator setting.  Each is checked against the eager path it replaces
(which the conformance suite checks against Darknet), and for falling back instead of failing.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import darkcfg
from darkcfg import native
from darkcfg.layers import direct_conv, onednn
from darkcfg.layers.activations import ACTIVATIONS
from darkcfg.layers.conv import ConvLayer
from fastpath_helpers import fused_and_optimized

REPO = Path(__file__).resolve().parents[1]
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN fused conv")


@pytest.fixture(autouse=True)
def _small_maps_take_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests use small maps; the size floor itself is tested on its own below.  The direct
    NHWC kernels and Winograd (which would take some of these layers first) have their own
    tests/test_direct_conv.py and tests/test_winograd.py."""
    monkeypatch.setattr(onednn, "MIN_INPUT_ELEMENTS", 0)
    monkeypatch.setattr(direct_conv, "MAX_MACS", -1)
    monkeypatch.setattr(direct_conv, "MAX_POINTWISE_MACS", -1)
    monkeypatch.setattr(direct_conv, "UNCAPPED_POINTWISE_OUT", 1 << 30)
    monkeypatch.setattr(direct_conv, "MAX_GROUPED_CHANNELS", 0)
    monkeypatch.setattr(direct_conv, "MAX_STEM_CHANNELS", 0)  # the RGB convs too
    monkeypatch.setenv("DARKCFG_WINOGRAD", "0")


def _cfg(tmp_path: Path, activation: str, groups: int = 1) -> Path:
    path = tmp_path / f"{activation}.cfg"
    path.write_text("[net]\nwidth=24\nheight=20\nchannels=3\n"
                    f"[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation={activation}\n"
                    f"[convolutional]\nfilters=8\ngroups={groups}\nsize=3\nstride=2\npad=1\nactivation={activation}\n"
                    f"[convolutional]\nbatch_normalize=1\nfilters=6\nsize=1\nactivation={activation}\n")
    return path


def _pair(cfg: Path) -> tuple[darkcfg.Darknet, darkcfg.Darknet]:
    """(fused eager model, optimize()d model) with the same well-scaled weights."""
    return fused_and_optimized(cfg)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@needs_onednn
@pytest.mark.parametrize("activation", sorted(set(onednn.POST_OPS) | {"mish", "gelu", "elu"}))
@pytest.mark.parametrize("groups", [1, 8])
def test_fused_conv_equals_eager(tmp_path: Path, activation: str, groups: int) -> None:
    """Every post-op oneDNN fuses, and the unfused activations after a fused conv, match eager."""
    eager, fast = _pair(_cfg(tmp_path, activation, groups))
    assert all(layer.onednn_ready for layer in fast.layers)
    assert all(layer.onednn.fused_activation == (activation in onednn.POST_OPS) for layer in fast.layers)
    x = torch.rand(3, 3, 20, 24) * 4 - 2
    with torch.no_grad():
        for layer_eager, layer_fast in zip(eager.layer_outputs(x), fast.layer_outputs(x)):
            assert _rel(layer_fast, layer_eager) < 1e-5, activation
    # the fast path really ran: the packed weights exist now
    assert all(layer.onednn._packed is not None for layer in fast.layers)


@needs_onednn
def test_own_cfgs_optimized_equal_eager_and_take_the_fast_path() -> None:
    cfg = REPO / "cfgs" / "tiny-yolo-all.cfg"
    eager, fast = _pair(cfg)
    convs = [m for m in fast.layers if isinstance(m, ConvLayer) and not m.xnor and not m.antialiasing]
    assert convs and all(m.onednn_ready for m in convs)
    x = torch.rand(2, 3, eager.height, eager.width)
    with torch.no_grad():
        for a, b in zip(fast(x), eager(x)):
            assert _rel(a, b) < 1e-5


@needs_onednn
def test_fast_path_steps_aside_for_autograd_tracing_and_state(tmp_path: Path) -> None:
    eager, fast = _pair(_cfg(tmp_path, "leaky"))
    x = torch.rand(1, 3, 20, 24, requires_grad=True)
    out = fast(x)[0]
    out.sum().backward()  # eager path: differentiable
    assert x.grad is not None and all(layer.onednn._packed is None for layer in fast.layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # the fast path adds no trace warnings
        warnings.filterwarnings("ignore", message=".*list at the output of the tracer.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(fast, x.detach(), check_trace=False)
    assert "mkldnn" not in str(traced.inlined_graph)  # exporters see plain aten ops
    assert all(not t.is_mkldnn for t in fast.state_dict().values())  # packed weights never saved


@needs_onednn
def test_tiny_maps_take_the_eager_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below MIN_INPUT_ELEMENTS the fused op's fixed cost outweighs its saving: eager conv."""
    monkeypatch.setattr(onednn, "MIN_INPUT_ELEMENTS", 8 * 20 * 24 + 1)  # above every layer's input
    eager, fast = _pair(_cfg(tmp_path, "leaky"))
    with torch.no_grad():
        x = torch.rand(1, 3, 20, 24)
        assert _rel(fast(x)[0], eager(x)[0]) < 1e-5
    assert all(layer.onednn._packed is None for layer in fast.layers)
    with torch.no_grad():
        fast(torch.rand(2, 3, 20, 24))  # twice the values: layer 1's 7680 inputs take the fused path
    assert [layer.onednn._packed is not None for layer in fast.layers] == [False, True, False]


@needs_onednn
def test_tiny_maps_with_many_weights_take_the_fused_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny map with at least MIN_WEIGHT_ELEMENTS weights still takes the fused path: the eager
    ``F.conv2d`` re-lays its weights out for oneDNN on every call (yolov4 @128 fp32: 62-66 ms
    with the eager path there, 39 ms without), the fused path once."""
    monkeypatch.setattr(onednn, "MIN_INPUT_ELEMENTS", 16384)  # (the autouse fixture's 0 undone)
    assert 432 < onednn.MIN_WEIGHT_ELEMENTS <= 256 * 16 * 9
    cfg = tmp_path / "deep.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=256\nsize=3\nstride=1\npad=1\nactivation=leaky\n")
    eager, fast = _pair(cfg)  # weights: 16x3x3x3 = 432, 256x16x3x3 = 36864; inputs 192 and 1024 values
    with torch.no_grad():
        x = torch.rand(1, 3, 8, 8)
        assert _rel(fast(x)[0], eager(x)[0]) < 1e-5
    assert [layer.onednn._packed is not None for layer in fast.layers] == [False, True]


@needs_onednn
def test_optimized_model_deep_copies_and_saves(tmp_path: Path) -> None:
    """The packed weights (opaque oneDNN tensors) never travel: copies re-pack on first use."""
    import copy

    eager, fast = _pair(_cfg(tmp_path, "leaky"))
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        ref = fast(x)[0]
        clone = copy.deepcopy(fast)
        assert clone.layers[0].onednn.conv is clone.layers[0].conv  # the plan follows the copied conv
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for m in (clone, loaded):
            assert torch.equal(m(x)[0], ref)
            assert m.layers[0].onednn._packed is not None


@needs_onednn
def test_weight_change_after_optimize_is_seen(tmp_path: Path) -> None:
    """Packed weights are keyed on the weight tensor and its version: an edit re-packs."""
    eager, fast = _pair(_cfg(tmp_path, "leaky"))
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        fast(x)
        for m in (eager, fast):
            m.layers[1].conv.weight.mul_(0.5)
            m.layers[2].conv.weight = torch.nn.Parameter(m.layers[2].conv.weight * 2)
        assert _rel(fast(x)[0], eager(x)[0]) < 1e-5


@needs_onednn
def test_refused_fused_call_falls_back_to_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager, fast = _pair(_cfg(tmp_path, "swish"))

    def refuse(*args: object) -> torch.Tensor:
        raise RuntimeError("oneDNN: unsupported")

    monkeypatch.setattr(onednn, "torch", _OpsStub(refuse))
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert _rel(fast(x)[0], eager(x)[0]) < 1e-6
    assert not any(layer.onednn.enabled for layer in fast.layers)


class _OpsStub:
    """``torch`` with ``ops.mkldnn._convolution_pointwise`` replaced (everything else real)."""

    def __init__(self, fn: object):
        self.ops = type("ops", (), {"mkldnn": type("mk", (), {"_convolution_pointwise": staticmethod(fn)})})

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


# ------------------------------------------------------------------------------ native mish
def _reference_mish(x: torch.Tensor) -> torch.Tensor:
    """Darknet's mish in float64: ``x * tanh(softplus(x))`` with softplus' threshold 20."""
    d = x.double()
    return (d * torch.tanh(F.softplus(d, threshold=20))).float()


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DARKCFG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(native, "_library", False)
    k = native.mish_kernel()
    if k is None:
        pytest.skip("no C compiler here: the native mish is optional (the eager formula runs)")
    return k


def test_native_mish_matches_darknet_formula(kernel) -> None:
    x = torch.cat([torch.randn(300_000) * 6, torch.linspace(-120, 120, 20001),
                   torch.tensor([0.0, -0.0, 19.999, 20.0, 20.001, 1e30, -1e30, math.inf])])
    y, ref = kernel(x), _reference_mish(x)
    finite = torch.isfinite(ref)
    err = (y - ref).abs()[finite]
    assert float((err / ref[finite].abs().clamp_min(1e-3)).max()) < 3e-6
    assert torch.equal(y[x >= 20], x[x >= 20])  # the threshold: mish(x) = x exactly
    assert torch.isnan(kernel(torch.tensor([math.nan]))).all()


def test_native_mish_bf16_is_the_float_result_rounded_once(kernel) -> None:
    """bf16 in, bf16 out: mish computed in float and rounded as torch rounds (nearest even)."""
    x = (torch.randn(200_000) * 6).bfloat16()
    x = torch.cat([x, torch.tensor([math.nan, math.inf, -math.inf, 0.0, 25.0, -100.0]).bfloat16()])
    y = kernel(x)
    assert y.dtype == torch.bfloat16
    expected = kernel(x.float()).bfloat16()
    assert torch.equal(y[:-6], expected[:-6])
    body, ref = y[:-6].float(), _reference_mish(x[:-6].float())
    assert float(((body - ref).abs() / ref.abs().clamp_min(1e-2)).max()) <= 2 ** -8  # half a bf16 ulp, relative
    assert torch.isnan(y[-6]) and y[-5] == math.inf and y[-2] == 25.0


def test_native_bn_fold_is_darknets_float64_product(kernel) -> None:
    """``w[r] = float32(float64(w[r]) * k[r])`` bit for bit, rows split over threads."""
    w = torch.randn(37, 19, 3, 3) * 3
    k = torch.rand(37, dtype=torch.float64) * 4 + 1e-3
    expected = (w.double() * k.view(-1, 1, 1, 1)).float()
    big = torch.randn(600, 64, 3, 3)  # > 262144 values: the threaded branch
    k_big = torch.rand(600, dtype=torch.float64) + 0.5
    expected_big = (big.double() * k_big.view(-1, 1, 1, 1)).float()
    assert native.scale_rows_f64(w, k) and torch.equal(w, expected)
    assert native.scale_rows_f64(big, k_big) and torch.equal(big, expected_big)
    assert not native.scale_rows_f64(w.transpose(0, 1), k)  # only contiguous weights
    assert not native.scale_rows_f64(w, k.float())  # the gains must be float64


def test_native_bn_fold_of_many_tensors_in_one_pass(kernel) -> None:
    """``scale_rows_many``: each tensor's rows by their own gains (taken one after the other),
    the same bits as one at a time, whatever the split over threads cuts through; empty tensors
    take their (zero) rows; refusals change nothing."""
    torch.manual_seed(3)
    shapes = [(5, 3, 3, 3), (0, 4, 1, 1), (600, 64, 3, 3), (7, 1, 1, 1), (129, 2, 5, 5), (1, 9)]  # > 262144: split
    ws = [torch.randn(*s) * 3 for s in shapes]
    gains = torch.rand(sum(s[0] for s in shapes), dtype=torch.float64) * 4 + 1e-3
    expected, row = [], 0
    for w in ws:
        k = gains[row:row + w.shape[0]]
        expected.append((w.double() * k.view(-1, *([1] * (w.dim() - 1)))).float())
        row += w.shape[0]
    before_threads = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            copies = [w.clone() for w in ws]
            assert native.scale_rows_many(copies, gains)
            assert all(torch.equal(c, e) for c, e in zip(copies, expected)), threads
    finally:
        torch.set_num_threads(before_threads)
    before = [w.clone() for w in ws]
    assert not native.scale_rows_many(ws, gains[:-1])  # one gain short
    assert not native.scale_rows_many(ws, gains.float())  # float64 gains only
    assert not native.scale_rows_many(ws[:2] + [ws[2].transpose(1, 2)], gains[:605])  # a non-contiguous one
    assert all(torch.equal(w, b) for w, b in zip(ws, before))
    assert native.scale_rows_many([], gains[:0])


@pytest.mark.parametrize("pjreddie", [False, True])
def test_native_bn_fold_is_the_float64_gain_shift_of(kernel, pjreddie: bool) -> None:
    """``bn_fold_many``: the gains and shifts ``DarknetBatchNorm.gain_shift_of`` computes on the
    concatenated BN tensors (float64), bit for bit, both BN formulas, including a zero and a
    tiny variance; refusals write nothing."""
    from darkcfg.layers.conv import DarknetBatchNorm

    torch.manual_seed(5)
    shapes = [(6, 3, 3, 3), (300, 16, 1, 1), (1, 2, 3, 3), (40, 40, 3, 3)]
    ws = [torch.randn(*s) for s in shapes]
    bns = [(torch.randn(s[0]) * 2, torch.randn(s[0]) * 3, torch.randn(s[0]) * 5, torch.rand(s[0]) * 4)
           for s in shapes]
    bns[1][3][:3] = torch.tensor([0.0, 1e-30, 1e-8])
    k, shift = DarknetBatchNorm.gain_shift_of(*(torch.cat(list(t)) for t in zip(*bns)), pjreddie=pjreddie)
    sizes = [s[0] for s in shapes]
    expected = [(w.double() * g.view(-1, 1, 1, 1)).float() for w, g in zip(ws, k.split(sizes))]
    copies, biases = [w.clone() for w in ws], [torch.full((n,), 7.0) for n in sizes]
    assert native.bn_fold_many(copies, bns, biases, pjreddie)
    assert all(torch.equal(c, e) for c, e in zip(copies, expected))
    assert all(torch.equal(b, e) for b, e in zip(biases, shift.float().split(sizes)))
    untouched = [torch.full((n,), 7.0) for n in sizes]
    short = [b.clone() for b in untouched]
    short[2] = torch.full((0,), 7.0)
    for bad_ws, bad_bns, bad_biases in ((ws, bns, short),  # a bias without a value per row
                                        (ws, bns[:3] + [tuple(t.double() for t in bns[3])], untouched),  # not float32
                                        (ws[:3] + [ws[3].transpose(0, 1)], bns, untouched),  # non-contiguous weight
                                        (ws, bns[:3], untouched)):  # a BN missing
        before, bias_before = [w.clone() for w in bad_ws], [b.clone() for b in bad_biases]
        assert not native.bn_fold_many(bad_ws, bad_bns, bad_biases, pjreddie)
        assert all(torch.equal(w, b) for w, b in zip(bad_ws, before))
        assert all(torch.equal(w, b) for w, b in zip(bad_biases, bias_before))


def test_native_mish_keeps_layout_and_threads(kernel) -> None:
    x = torch.randn(2, 16, 40, 40).to(memory_format=torch.channels_last)  # > 65536: split over threads
    assert native.applies(x) and native.applies(x.bfloat16()) and not native.applies(x[:, :8])
    assert not native.applies(x.double())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        y = kernel(x)
    finally:
        torch.set_num_threads(threads)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert float((y - _reference_mish(x)).abs().max()) < 1e-5


def test_native_library_is_built_once_into_the_cache(kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = list((tmp_path / "home" / "kernels").glob("*/libdarkcfg_kernels.so"))
    assert len(libs) == 1
    leftovers = [p for p in libs[0].parent.iterdir() if p != libs[0]]
    assert not leftovers  # the temporary build folder is gone
    monkeypatch.setattr(native, "_library", False)
    monkeypatch.setattr(native.subprocess, "run", _no_compiler)  # a second process must not rebuild
    assert native.mish_kernel() is not None


def _no_compiler(*args: object, **kwargs: object) -> None:
    raise AssertionError("rebuilt although the cache holds the library")


def test_no_compiler_or_opt_out_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKCFG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(native, "_library", False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native.mish_kernel() is None
    monkeypatch.setattr(native, "_library", False)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("DARKCFG_NATIVE", "0")
    assert native.mish_kernel() is None
    eager, fast = _pair(_cfg(tmp_path, "mish"))  # and the model still runs (eager mish)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert _rel(fast(x)[0], eager(x)[0]) < 1e-5


def test_mish_activation_table_is_what_the_fast_path_replaces() -> None:
    """The kernel stands in for ACTIVATIONS['mish'] after a conv: same values to float rounding."""
    x = torch.randn(70_000) * 5
    k = native.mish_kernel()
    if k is None:
        pytest.skip("no C compiler here")
    assert float((k(x) - ACTIVATIONS["mish"](x)).abs().max()) < 2e-5


# ------------------------------------------------------------------------------ allocator
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_allocator_setting_applies_once_and_can_be_turned_off() -> None:
    code = "from darkcfg.allocator import keep_freed_memory as k; print(k(), k())"
    env = {**os.environ}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    env["DARKCFG_MALLOC_TUNING"] = "0"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    import platform

    expected = "True True" if platform.libc_ver()[0] == "glibc" else "False False"
    assert on.stdout.split() == expected.split(), on.stderr
    assert off.stdout.split() == ["False", "False"], off.stderr
