"""The direct NHWC convolution kernels (darkcfg/layers/direct_conv.py, csrc/darkcfg_kernels.c):
equal to ``F.conv2d`` + Darknet's activation over a sweep of geometries (borders, strides,
padding wider than the kernel, channel counts off the 8-lane vector width), taken by
``optimize()`` on depthwise nets, and stepping aside wherever they do not apply."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch

import darkcfg
from darkcfg import fusion, native
from darkcfg.layers import direct_conv
from darkcfg.layers.conv import ConvLayer
from darkcfg.fusion import Fusion
from darkcfg.layers.direct_conv import DirectConv
from darkcfg.weights import synthetic_weights
from fastpath_helpers import (CONV, count_calls, nhwc, one_and_two_threads, optimized, reference, rel,
                              with_and_without_fusions, write_cfg)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _library() -> None:
    if native.library() is None:
        pytest.skip("no C compiler here: the direct kernels are optional (oneDNN / eager run instead)")





def _check_kernel(conv: torch.nn.Conv2d, activation: str, shape: tuple, kind: str) -> None:
    """The kernel's output on an NHWC input: NHWC, and the float64 reference to float rounding."""
    plan = DirectConv(conv, activation)
    x = nhwc(torch.randn(*shape))
    with torch.no_grad():
        y = plan(x)
        ref = reference(conv, activation, x)
    assert plan.kind == kind and y is not None
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel(y, ref) < 1e-6


# channels, size, stride, padding, input (h, w), batch
DEPTHWISE = [
    (8, 3, 1, 1, (17, 23), 1), (13, 3, 1, 1, (9, 9), 2), (40, 3, 2, 1, (20, 21), 1), (3, 3, 2, 0, (7, 8), 1),
    (32, 5, 1, 2, (10, 12), 1), (19, 5, 2, 2, (11, 6), 2), (8, 1, 1, 0, (5, 7), 1), (16, 7, 1, 3, (9, 10), 1),
    (24, 3, 1, 3, (6, 5), 1), (2, 3, 1, 1, (4, 4), 1), (64, 3, 1, 1, (2, 2), 1), (9, 2, 2, 0, (8, 9), 1),
    (16, 3, 3, 1, (13, 14), 1),
]


@pytest.mark.parametrize("activation", sorted(direct_conv.ACTIVATIONS))
@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: "c{}k{}s{}p{}_{}x{}b{}".format(*c[:4], *c[4], c[5]))
def test_depthwise_kernel_equals_conv2d(case: tuple, activation: str) -> None:
    channels, size, stride, pad, (h, w), batch = case
    torch.manual_seed(channels * 100 + size * 10 + stride)
    conv = torch.nn.Conv2d(channels, channels, size, stride, pad, groups=channels)
    _check_kernel(conv, activation, (batch, channels, h, w), "depthwise")


# in channels, out channels, input (h, w), batch
POINTWISE = [(8, 4, (16, 16), 1), (4, 24, (9, 11), 2), (1, 1, (3, 3), 1), (33, 17, (7, 5), 1), (16, 48, (6, 6), 3),
             (224, 48, (10, 10), 1), (3, 255, (5, 4), 1), (256, 256, (2, 3), 1), (7, 16, (1, 1), 1),
             (300, 8, (5, 5), 1),  # > 256 inputs on the 8-channel strip: its tail copy is heap-allocated
             (64, 40, (40, 41), 1), (512, 24, (9, 7), 2)]  # several L2-sized pixel chunks, with a remainder


@pytest.mark.parametrize("activation", sorted(direct_conv.ACTIVATIONS))
@pytest.mark.parametrize("case", POINTWISE, ids=lambda c: "{}to{}_{}x{}b{}".format(c[0], c[1], *c[2], c[3]))
def test_pointwise_kernel_equals_conv2d(case: tuple, activation: str) -> None:
    cin, cout, (h, w), batch = case
    torch.manual_seed(cin * 1000 + cout)
    _check_kernel(torch.nn.Conv2d(cin, cout, 1), activation, (batch, cin, h, w), "pointwise")


# in channels, out channels, size, stride, padding, input (h, w), batch, NHWC input
STEM = [(3, 8, 3, 2, 1, (20, 22), 1, False), (3, 32, 3, 1, 1, (17, 13), 2, False), (3, 24, 3, 2, 1, (9, 11), 1, True),
        (1, 16, 3, 1, 1, (8, 8), 1, False), (4, 40, 3, 2, 0, (10, 9), 1, False), (3, 5, 3, 1, 1, (6, 7), 1, False),
        (3, 64, 1, 2, 0, (5, 6), 1, True), (2, 12, 2, 2, 0, (8, 8), 1, False), (3, 32, 3, 1, 1, (1, 1), 1, False),
        (3, 72, 3, 3, 1, (13, 14), 1, False), (3, 16, 3, 1, 1, (3, 40), 1, True)]


@pytest.mark.parametrize("activation", sorted(direct_conv.STEM_ACTIVATIONS))
@pytest.mark.parametrize("case", STEM, ids=lambda c: "{}to{}k{}s{}p{}_{}x{}b{}{}".format(
    *c[:5], *c[5], c[6], "nhwc" if c[7] else ""))
def test_stem_kernel_equals_conv2d(case: tuple, activation: str) -> None:
    """The first conv of a net (few input channels, the image itself: NCHW or NHWC) against a
    float64 conv: borders, strides 1-3, kernels 1-3, output channels off the 8/32 blocks."""
    cin, cout, size, stride, pad, (h, w), batch, channels_last = case
    torch.manual_seed(cin * 100 + cout + size)
    conv = torch.nn.Conv2d(cin, cout, size, stride, pad)
    plan = DirectConv(conv, activation)
    x = torch.rand(batch, cin, h, w) * 4 - 2
    x = nhwc(x) if channels_last else x
    with torch.no_grad():
        y = plan(x)
        ref = reference(conv, activation, x)
    assert plan.kind == "stem" and y is not None
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel(y, ref) < 1e-6


def test_stem_kernel_reads_strided_inputs_and_splits_rows_exactly() -> None:
    """A channel slice of a bigger tensor is read in place; 1 or 2 threads give the same bits
    (threads split whole rows; each pixel's sum runs over its taps in one order)."""
    conv = torch.nn.Conv2d(3, 24, 3, 2, 1)
    plan = DirectConv(conv, "leaky")
    big = torch.rand(2, 7, 41, 37)
    sliced = big[:, 2:5]
    one, two = one_and_two_threads(lambda: plan(sliced))
    with torch.no_grad():
        ref = reference(conv, "leaky", sliced)
    assert one is not None and two is not None
    assert torch.equal(one, two)
    assert rel(one, ref) < 1e-6


# in channels, out channels, groups, size, stride, padding, input (h, w), batch
GROUPED = [(128, 128, 32, 3, 1, 1, (13, 21), 1),  # csresnext50's: 4 channels a group (2 groups per 8 lanes)
           (64, 64, 8, 3, 2, 1, (15, 16), 2),  # 8 a group, stride 2
           (16, 32, 2, 3, 1, 1, (9, 30), 1),  # 8 in, 16 out a group (one group, two vectors)
           (12, 24, 6, 3, 1, 1, (7, 7), 1),  # 2 in, 4 out a group
           (8, 8, 4, 5, 1, 2, (11, 12), 1),  # 2 a group (4 groups per 8 lanes), 5x5
           (32, 64, 4, 1, 1, 0, (5, 6), 1),  # 1x1 grouped
           (16, 16, 2, 3, 1, 1, (2, 3), 1),  # fewer pixels than a block: every pixel on the single path
           (24, 24, 3, 3, 3, 0, (13, 14), 1)]  # stride 3, no padding


@pytest.mark.parametrize("activation", sorted(direct_conv.ACTIVATIONS))
@pytest.mark.parametrize("case", GROUPED, ids=lambda c: "{}to{}g{}k{}s{}p{}_{}x{}b{}".format(*c[:6], *c[6], c[7]))
def test_grouped_kernel_equals_conv2d(case: tuple, activation: str) -> None:
    """Grouped (not depthwise) convs against a float64 conv: groups joined into 8-lane blocks or
    spanning several, borders, strides 1-3, 1x1 to 5x5."""
    cin, cout, groups, size, stride, pad, (h, w), batch = case
    torch.manual_seed(cin + cout * 10 + groups)
    conv = torch.nn.Conv2d(cin, cout, size, stride, pad, groups=groups)
    _check_kernel(conv, activation, (batch, cin, h, w), "grouped")


def test_grouped_kernel_splits_rows_exactly_and_steps_aside() -> None:
    """1 or 2 threads give the same bits; an NCHW input goes to oneDNN (None here)."""
    conv = torch.nn.Conv2d(64, 64, 3, 1, 1, groups=16)
    plan = DirectConv(conv, "leaky")
    x = torch.randn(1, 64, 23, 29)
    one, two = one_and_two_threads(lambda: plan(nhwc(x)))
    assert one is not None and two is not None and torch.equal(one, two)
    with torch.no_grad():
        assert plan(x) is None


def test_what_the_stem_kernel_does_not_take() -> None:
    assert DirectConv(torch.nn.Conv2d(3, 16, 5, 1, 2), "leaky").kind == ""  # 75-term sums: oneDNN does well
    assert DirectConv(torch.nn.Conv2d(5, 16, 3, 1, 1), "leaky").kind == ""  # more input channels: oneDNN
    assert DirectConv(torch.nn.Conv2d(3, 16, 3, 1, 2, dilation=2), "leaky").kind == ""
    assert not DirectConv(torch.nn.Conv2d(3, 16, 3, 1, 1), "swish").usable  # an activation it does not apply
    plan = DirectConv(torch.nn.Conv2d(3, 16, 3, 1, 1), "mish")
    x = torch.rand(1, 3, 8, 8)
    assert plan(x) is None  # a trainable weight with grad enabled: the eager conv, differentiable
    with torch.no_grad():
        assert plan(x.double()) is None and plan(x) is not None


# block inputs (0: no expanding 1x1), depthwise channels, size, stride, 1x1 outputs, residual, input (h, w), batch
BLOCKS = [(0, 8, 3, 1, 4, True, (16, 16), 1), (8, 32, 3, 1, 8, True, (9, 13), 2), (4, 24, 3, 2, 8, False, (15, 12), 1),
          (16, 48, 5, 1, 16, False, (10, 10), 1), (0, 96, 3, 1, 16, True, (7, 5), 1), (5, 13, 3, 1, 24, False, (6, 9), 1),
          (40, 224, 3, 1, 40, True, (5, 5), 1), (8, 16, 3, 1, 8, True, (1, 1), 3), (8, 24, 3, 2, 16, False, (2, 9), 2),
          (12, 16, 5, 2, 12, False, (11, 7), 1),
          # maps whose rows do not fit the slab buffer: the ring of expanded rows
          (8, 32, 3, 1, 8, True, (90, 60), 1), (4, 24, 3, 2, 8, False, (96, 100), 2)]


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("case", BLOCKS, ids=lambda c: "in{}c{}k{}s{}to{}{}_{}x{}b{}".format(
    *c[:5], "r" if c[5] else "", *c[6], c[7]))
def test_fused_block_equals_the_separate_kernels_bit_for_bit(case: tuple, act: int) -> None:
    """[1x1 expand ->] depthwise -> 1x1 (-> + residual) as one call gives exactly the bits of the
    kernels run one after the other (the expanded and depthwise rows never leave the thread's
    buffers; windows at the borders, strides 1 and 2, batches, 1x1 maps)."""
    cin, channels, size, stride, cout, with_residual, (h, w), batch = case
    torch.manual_seed(channels + cout + cin)
    ex = DirectConv(torch.nn.Conv2d(cin, channels, 1), "leaky") if cin else None
    dw = DirectConv(torch.nn.Conv2d(channels, channels, size, stride, size // 2, groups=channels), "relu")
    pw = DirectConv(torch.nn.Conv2d(channels, cout, 1), "linear" if with_residual else ["linear", "leaky"][act])
    x = nhwc(torch.randn(batch, cin or channels, h, w))
    with torch.no_grad():
        mid = dw(ex(x) if ex is not None else x)
        assert mid is not None
        residual = nhwc(torch.randn(batch, cout, *mid.shape[2:])) if with_residual else None
        apart = pw.with_residual(mid, residual, act) if residual is not None else pw(mid)
        fused = direct_conv.fused_block(ex, dw, pw, x, residual, act if with_residual else pw.act)
    assert apart is not None and fused is not None
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fused, apart)


def test_fused_block_refuses_what_a_kernel_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = DirectConv(torch.nn.Conv2d(4, 16, 1), "leaky")
    dw = DirectConv(torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), "leaky")
    pw = DirectConv(torch.nn.Conv2d(16, 8, 1), "linear")
    x, x16 = nhwc(torch.randn(1, 4, 6, 6)), nhwc(torch.randn(1, 16, 6, 6))
    with torch.no_grad():
        assert direct_conv.fused_block(ex, dw, pw, x.contiguous(), None, 0) is None  # NCHW input
        assert direct_conv.fused_block(ex, dw, pw, x, nhwc(torch.randn(1, 8, 5, 6)), 0) is None  # residual shape
        assert direct_conv.fused_block(None, pw, dw, x16, None, 0) is None  # not depthwise -> 1x1
        assert direct_conv.fused_block(ex, dw, pw, x16, None, 0) is None  # 16 channels into a 4-input 1x1
        assert direct_conv.fused_block(ex, dw, pw, x, None, 0) is not None
        assert direct_conv.fused_block(None, dw, pw, x16, None, 0) is not None
        monkeypatch.setattr(direct_conv, "MAX_MACS", 16 * 36 * 9 - 1)  # the depthwise part now too big
        assert direct_conv.fused_block(None, dw, pw, nhwc(torch.randn(1, 16, 6, 7)), None, 0) is None
        monkeypatch.setattr(native, "library", lambda: None)
        fresh = DirectConv(pw.conv, "linear")  # (a plan looks the library up at its first call)
        assert direct_conv.fused_block(ex, dw, fresh, x, None, 0) is None


def test_pointwise_chunks_and_thread_splits_change_no_bit() -> None:
    """Where a pixel block, an L2 chunk or a thread's range starts does not change a value."""
    conv = torch.nn.Conv2d(64, 40, 1)
    plan = DirectConv(conv, "leaky")
    x = nhwc(torch.randn(1, 64, 53, 47))  # 2491 pixels: 2 chunks of 1024 + remainder per thread count
    one, two = one_and_two_threads(lambda: plan(x))
    with torch.no_grad():
        whole = torch.cat([plan(x[:, :, :20]), plan(x[:, :, 20:])], 2)  # other block starts
    assert one is not None and two is not None
    assert torch.equal(one, two) and torch.equal(one, whole)


def test_leaky_is_darknets_on_both_sides_of_zero() -> None:
    """x > 0 ? x : 0.1 * x, bit for bit (a 1x1 identity conv isolates the activation)."""
    conv = torch.nn.Conv2d(8, 8, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        conv.bias.zero_()
        x = nhwc(torch.tensor([-3.5, -1e-30, -0.0, 0.0, 1e-30, 2.25, -7.0, 1.0]).view(1, 8, 1, 1).repeat(1, 1, 3, 5))
        y = DirectConv(conv, "leaky")(x)
    assert y is not None and torch.equal(y, torch.where(x > 0, x, 0.1 * x))


def test_what_the_kernels_do_not_take() -> None:
    dw = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8)
    x = nhwc(torch.randn(1, 8, 6, 6))
    assert DirectConv(dw, "mish").usable is False  # activation not fused: oneDNN + the mish kernel instead
    assert DirectConv(torch.nn.Conv2d(32, 32, 3, 1, 1, groups=2), "leaky").usable is False  # 16 inputs a group: oneDNN
    assert DirectConv(torch.nn.Conv2d(9, 9, 3, 1, 1, groups=3), "leaky").usable is False  # 3 outputs a group: no 8 lanes
    assert DirectConv(torch.nn.Conv2d(8, 8, 3, 1, 1, groups=2), "mish").usable is False  # the grouped kernel: no mish
    assert DirectConv(torch.nn.Conv2d(8, 8, 3, 1, 2, dilation=2, groups=8), "leaky").usable is False
    assert DirectConv(torch.nn.Conv2d(8, 16, 3, 1, 1), "leaky").usable is False  # dense 3x3: oneDNN
    assert DirectConv(torch.nn.Conv2d(8, 16, 1, 2), "leaky").usable is False  # strided 1x1
    assert DirectConv(torch.nn.Conv2d(1024, 512, 1), "leaky").usable is False  # a big GEMM: oneDNN
    plan = DirectConv(dw, "leaky")
    assert not plan.applies(x)  # grad enabled and a trainable weight: the eager conv, differentiable
    with torch.no_grad():
        assert plan.applies(x)
        assert not plan.applies(x.contiguous())  # NCHW
        assert not plan.applies(x.double()) and not plan.applies(nhwc(torch.randn(1, 4, 6, 6)))
        assert plan(x.contiguous()) is None
        big = nhwc(torch.randn(1, 8, 600, 600))  # 8 * 9 * 360000 multiply-adds > MAX_MACS: oneDNN threads it
        assert not plan.applies(big)
        assert plan.applies(x)  # the per-shape answers are cached separately


def _depthwise_cfg(tmp_path: Path) -> Path:
    """A tiny Yolo-Fastest-like block: 1x1 expand, depthwise 3x3 (s1, s2) and 5x5, 1x1 project,
    a residual, mish (not fused by the kernels) and a head."""
    path = tmp_path / "dw.cfg"
    conv = "[convolutional]\nbatch_normalize=1\nfilters={f}\nsize={k}\nstride={s}\npad=1\ngroups={g}\nactivation={a}\n"
    path.write_text("[net]\nwidth=40\nheight=32\nchannels=3\n"
                    + conv.format(f=8, k=3, s=2, g=1, a="leaky")
                    + conv.format(f=24, k=1, s=1, g=1, a="leaky")
                    + conv.format(f=24, k=3, s=1, g=24, a="leaky")
                    + conv.format(f=8, k=1, s=1, g=1, a="linear")
                    + "[shortcut]\nfrom=-4\nactivation=linear\n"
                    + "[maxpool]\nsize=5\nstride=1\n"
                    + conv.format(f=16, k=1, s=1, g=1, a="relu")
                    + conv.format(f=16, k=3, s=2, g=16, a="leaky")
                    + conv.format(f=16, k=5, s=1, g=16, a="mish")
                    + conv.format(f=16, k=5, s=1, g=16, a="linear")
                    + "[convolutional]\nfilters=21\nsize=1\nstride=1\npad=1\nactivation=linear\n"
                    + "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=2\nnum=3\n")
    return path


def test_optimize_takes_the_kernels_on_depthwise_nets_and_equals_eager(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _depthwise_cfg(tmp_path)
    models = []
    for _ in range(2):
        m = darkcfg.load(cfg)
        m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=3)))
        models.append(m)
    eager, fast = models[0].fuse(), models[1].optimize()
    assert fast.channels_last  # depthwise-heavy: NHWC, the layout the kernels need
    convs = [layer for layer in fast.layers if isinstance(layer, ConvLayer)]
    # the RGB stem conv, 1x1s and depthwise convs; not the mish depthwise conv
    assert [layer.direct is not None for layer in convs] == [True, True, True, True, True, True, False, True, True]
    assert convs[0].direct.kind == "stem"
    calls = count_calls(monkeypatch, DirectConv)
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        outs_fast, outs_eager = fast.layer_outputs(x), eager.layer_outputs(x)
    assert sum(calls) == 8  # every usable layer ran the kernel
    for i, (a, b) in enumerate(zip(outs_fast, outs_eager)):
        assert rel(a, b) < 1e-5, f"layer {i}"
    # an edited weight is seen (re-laid out), a copy drops the caches and rebuilds them
    with torch.no_grad():
        for m in (fast, eager):
            m.layers[2].conv.weight.mul_(0.5)
            m.layers[3].conv.weight = torch.nn.Parameter(m.layers[3].conv.weight * 2)
        assert rel(fast(x)[0], eager(x)[0]) < 1e-5
        clone = copy.deepcopy(fast)
        assert clone.layers[2].direct._packed is None and clone.layers[2].direct.conv is clone.layers[2].conv
        assert torch.equal(clone(x)[0], fast(x)[0])


def test_without_the_library_onednn_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _depthwise_cfg(tmp_path)
    m = darkcfg.load(cfg)
    m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=3)))
    eager = copy.deepcopy(m).fuse()
    fast = m.optimize()
    monkeypatch.setattr(native, "library", lambda: None)
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert rel(fast(x)[0], eager(x)[0]) < 1e-5
    assert all(layer.direct is None or layer.direct._packed is None for layer in fast.layers
               if isinstance(layer, ConvLayer))


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_split_covers_every_row_and_changes_no_bit(threads: int) -> None:
    """Rows (depthwise) and 6-pixel blocks (1x1) split over the threads: odd counts, remainders."""
    before = torch.get_num_threads()
    cases = [(torch.nn.Conv2d(24, 24, 3, 2, 1, groups=24), (3, 24, 37, 41)),
             (torch.nn.Conv2d(40, 40, 5, 1, 2, groups=40), (1, 40, 33, 29)),
             (torch.nn.Conv2d(20, 37, 1), (2, 20, 31, 23))]
    try:
        for conv, shape in cases:
            plan = DirectConv(conv, "leaky")
            x = nhwc(torch.randn(*shape))
            with torch.no_grad():
                torch.set_num_threads(1)
                one = plan(x)
                torch.set_num_threads(threads)
                many = plan(x)
                ref = reference(conv, "leaky", x)
            assert one is not None and many is not None
            assert torch.equal(one, many) and rel(many, ref) < 1e-6
    finally:
        torch.set_num_threads(before)


def test_kernels_share_torchs_openmp_team() -> None:
    """Where torch runs on GNU OpenMP the library joins its team: one libgomp in the process."""
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch build does not use OpenMP")
    with open("/proc/self/maps", encoding="utf-8") as f:
        gomp = {line.split()[-1] for line in f if "libgomp" in line}
    if not gomp:
        pytest.skip("torch's OpenMP is not GNU libgomp here")
    assert native.uses_openmp()
    assert len(gomp) == 1, f"a second OpenMP runtime was loaded: {sorted(gomp)}"


# channels, h, w, size, stride x, stride y, total padding, batch
POOLS = [(48, 10, 10, 9, 1, 1, 8, 1), (48, 10, 10, 5, 1, 1, 4, 1), (13, 10, 9, 13, 1, 1, 12, 2), (64, 16, 16, 2, 2, 2, 0, 1),
         (32, 15, 17, 2, 2, 2, 1, 1), (20, 26, 26, 2, 1, 1, 1, 1), (9, 7, 5, 3, 2, 2, 0, 1), (16, 2, 2, 3, 2, 2, 1, 1),
         (8, 5, 6, 3, 3, 2, 2, 1), (3, 3, 3, 3, 2, 2, 0, 1)]


@pytest.mark.parametrize("case", POOLS, ids=lambda c: "c{}_{}x{}k{}s{}x{}p{}b{}".format(*c))
def test_maxpool_kernel_equals_darknet_maxpool(case: tuple) -> None:
    """Bit-identical to the torch path, -inf inputs (Darknet's -FLT_MAX start) included."""
    from darkcfg.layers import functional as DF

    c, h, w, size, sx, sy, pad, batch = case
    torch.manual_seed(c * 31 + size)
    x = torch.randn(batch, c, h, w)
    x.view(-1)[::7] = float("-inf")
    x = nhwc(x)
    with torch.no_grad():
        y = direct_conv.maxpool_nhwc(x, size, sx, sy, pad)
        ref = DF.darknet_maxpool(x.contiguous(), size, sx, sy, pad)
    assert y is not None and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ref)


def test_maxpool_kernel_is_darknets_comparison_and_steps_aside() -> None:
    """``val > max ? val : max`` from -FLT_MAX: a NaN never wins (torch.maximum would spread it)."""
    x = nhwc(torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]]).view(1, 1, 2, 2).repeat(1, 8, 1, 1))
    with torch.no_grad():
        y = direct_conv.maxpool_nhwc(x, 2, 2, 2, 0)
        all_nan = direct_conv.maxpool_nhwc(nhwc(torch.full((1, 8, 2, 2), float("nan"))), 2, 2, 2, 0)
        assert y is not None and all_nan is not None
        assert torch.equal(y, torch.ones(1, 8, 1, 1))
        assert bool((all_nan == -3.4028234663852886e38).all())
        assert direct_conv.maxpool_nhwc(x.contiguous(), 2, 2, 2, 0) is None  # NCHW: the torch path
        assert direct_conv.maxpool_nhwc(x.double(), 2, 2, 2, 0) is None
        big = nhwc(torch.zeros(1, 512, 19, 19))
        assert direct_conv.maxpool_nhwc(big, 13, 1, 1, 12) is None  # 31M taps: separable torch maxima
    assert direct_conv.maxpool_nhwc(x.clone().requires_grad_(True), 2, 2, 2, 0) is None


# ------------------------------------------------------------------ [shortcut] folded into the 1x1 conv
def _fusion_cfg(tmp_path: Path, extra_reader: bool) -> Path:
    """expand 1x1 -> depthwise 3x3 -> project 1x1 linear -> dropout -> shortcut (an inverted
    residual, as in Yolo-Fastest); ``extra_reader``: a route also reads the projection."""
    text = (CONV.format(f=8, k=3, g=1, a="leaky")
            + CONV.format(f=24, k=1, g=1, a="leaky") + CONV.format(f=24, k=3, g=24, a="leaky")
            + CONV.format(f=8, k=1, g=1, a="linear")
            + "[dropout]\nprobability=.15\n[shortcut]\nfrom=-5\nactivation=leaky\n"
            + CONV.format(f=24, k=1, g=1, a="leaky") + CONV.format(f=24, k=3, g=24, a="leaky")
            + CONV.format(f=8, k=1, g=1, a="linear")
            + "[shortcut]\nfrom=-4\nactivation=linear\n" + ("[route]\nlayers=-2,-1\n" if extra_reader else ""))
    return write_cfg(tmp_path, f"fusion{int(extra_reader)}.cfg", text)


@pytest.mark.parametrize("extra_reader", [False, True])
def test_shortcut_folds_into_the_projection_conv_bit_for_bit(tmp_path: Path, extra_reader: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKCFG_REPLAY", "0")  # the ordinary path's calls (replays: tests/test_replay.py)
    m = optimized(_fusion_cfg(tmp_path, extra_reader), seed=11)
    # 1 expand -> 2 depthwise -> 3 projection -> 4 dropout -> 5 shortcut; 6 -> 7 -> 8 -> 9 shortcut
    # (with extra_reader a route reads 8: the shortcut stays apart)
    second = Fusion(8, 8, 7, None, 0, 6) if extra_reader else Fusion(9, 8, 7, 5, 0, 6)
    assert m.fusions == {1: Fusion(5, 3, 2, 0, 1, 1), 6: second}
    x = torch.rand(2, 3, 24, 40)
    fused, every, plain = with_and_without_fusions(m, x)  # layer_outputs never folds: every layer as Darknet computes it
    m.train()
    with torch.no_grad():
        trained = m(x)  # training: dropout is live, nothing is folded
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)  # the kernel adds the residual to the same float32 sum: no new rounding
    assert torch.equal(fused[-1], every[-1].contiguous())
    assert all(t.shape == s for t, s in zip(trained, [o.shape for o in plain]))
    calls: list = []
    original, original_block = DirectConv.bind, fusion.bind_block
    monkeypatch.setattr(DirectConv, "bind", lambda self, x, residual=None, act=None: (  # type: ignore[func-returns-value]
        residual is not None and calls.append("residual")) or original(self, x, residual, act))
    monkeypatch.setattr(fusion, "bind_block",
                        lambda *a: calls.append("block") or original_block(*a))  # type: ignore[func-returns-value]
    m.eval()
    with torch.no_grad():
        m(x)
    assert calls == ["block", "block"]  # one kernel call per fused chain, none refused


def test_wide_1x1_convs_have_no_multiply_add_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_POINTWISE_MACS a 1x1 conv keeps the kernel with >= 64 output channels (where it
    measured level with oneDNN or better) and goes to oneDNN with fewer."""
    monkeypatch.setattr(direct_conv, "MAX_POINTWISE_MACS", 100)
    x = nhwc(torch.randn(1, 16, 5, 6))
    with torch.no_grad():
        assert DirectConv(torch.nn.Conv2d(16, 64, 1), "leaky")(x) is not None
        assert DirectConv(torch.nn.Conv2d(16, 56, 1), "leaky")(x) is None


def test_residual_fold_has_no_multiply_add_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x1 conv too big for the plain kernel call (oneDNN's) still folds its shortcut."""
    monkeypatch.setattr(direct_conv, "MAX_POINTWISE_MACS", 100)
    conv = torch.nn.Conv2d(16, 8, 1)
    plan = DirectConv(conv, "linear")
    x, r = nhwc(torch.randn(1, 16, 9, 7)), nhwc(torch.randn(1, 8, 9, 7))
    with torch.no_grad():
        assert plan(x) is None  # 16 * 8 * 63 multiply-adds > 100
        y = plan.with_residual(x, r, 1)
        ref = torch.nn.functional.leaky_relu(reference(conv, "linear", x) + r, 0.1)
    assert y is not None and rel(y, ref) < 1e-6


def test_refused_fusion_runs_the_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKCFG_REPLAY", "0")  # (a replay refused at its recording: tests/test_replay.py)
    m = darkcfg.load(_fusion_cfg(tmp_path, False))
    m.load_weights(io.BytesIO(synthetic_weights(m.graph, seed=11)))
    m.optimize()
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        ref = m(x)
        monkeypatch.setattr(fusion, "bind_block", lambda *a: None)
        assert all(torch.equal(a, b) for a, b in zip(m(x), ref))
        original = DirectConv.bind
        monkeypatch.setattr(DirectConv, "bind", lambda self, x, residual=None, act=None:
                            None if residual is not None else original(self, x, residual, act))
        assert all(torch.equal(a, b) for a, b in zip(m(x), ref))


def test_real_models_fold_their_residuals_bit_for_bit(shared: Path) -> None:
    """Yolo-Fastest 1.1 and MobileNetV2-YOLOv3-Nano with their real weights: the folded forward
    equals the layer-by-layer one exactly (which tests/test_conformance.py checks against Darknet)."""
    models = [shared / "darknet/yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1",
              shared / "darknet/real/MobileNetV2-YOLOv3-Nano-coco"]
    for stem in models:
        m = darkcfg.load(f"{stem}.cfg", f"{stem}.weights").optimize()
        assert len(m.fusions) >= 5, stem.name
        x = torch.rand(1, 3, m.height, m.width)
        with torch.no_grad():
            fused = m(x)
            plans, m.fusions = m.fusions, {}
            plain = m(x)
        assert all(torch.equal(a, b) for a, b in zip(fused, plain)), stem.name


def test_compile_captures_a_depthwise_net(tmp_path: Path) -> None:
    """``optimize(compile=True)`` on an NHWC depthwise net (maxpool, shortcut, depthwise): the
    native kernels step aside while torch.compile traces (fullgraph: any call into them would
    break the graph), and the captured graph equals the eager kernels' outputs."""
    import shutil

    if not hasattr(torch, "compile") or shutil.which("g++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler (g++), not found here")
    cfg = _depthwise_cfg(tmp_path)
    data = bytearray(synthetic_weights(darkcfg.load(cfg).graph, seed=3))
    eager = darkcfg.load(cfg, data).optimize()
    compiled = darkcfg.load(cfg, data).optimize(compile=True)
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        for a, b in zip(compiled(x), eager(x)):
            assert rel(a, b) < 1e-5
