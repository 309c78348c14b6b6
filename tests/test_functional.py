"""Tests of darkcfg.layers.functional and darkcfg.layers.activations.

Every reference below is an independent, deliberately naive numpy transcription of the
formulas in darknet-format.md (§3, §4, §5) and the conformance README (explicit loops over
tiny tensors, Darknet's flat-buffer index arithmetic written out).  Inputs are random, batch 2,
odd sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkcfg.layers import activations as A
from darkcfg.layers import functional as F

FLT_MAX = float(np.finfo(np.float32).max)

# torch.jit.script is deprecated upstream but is still a supported export path for darkcfg
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def rng(seed=0):
    return np.random.default_rng(seed)


def rand(shape, seed=0, scale=2.0):
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def close(got, ref, rtol=1e-5, atol=1e-6):
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


# =============================================================================================
# activations (§4)
# =============================================================================================

GRID = np.array(
    [-25, -20.5, -19.5, -6.5, -4.5, -4, -3, -2, -1.5, -1, -0.5, -0.1, 0, 0.1, 0.5, 0.9, 1,
     1.5, 2, 2.5, 3, 4, 4.5, 5.5, 6, 6.5, 19.5, 20.5, 25],
    dtype=np.float32,
)


def _e(x):
    return math.exp(x)


def _tanh_dn(z):
    return 2.0 / (1.0 + _e(-2.0 * z)) - 1.0


def _softplus_dn(x):
    if x > 20:
        return x
    if x < -20:
        return _e(x)
    return math.log(_e(x) + 1.0)


def _stair(x):
    n = math.floor(x)
    if n % 2 == 0:
        return math.floor(x / 2.0)
    return (x - n) + math.floor(x / 2.0)


SCALAR_REF = {
    "linear": lambda x: x,
    "leaky": lambda x: x if x > 0 else 0.1 * x,
    "revleaky": lambda x: x if x > 0 else 0.1 * x,
    "logistic": lambda x: 1.0 / (1.0 + _e(-x)),
    "relu": lambda x: x if x > 0 else 0.0,
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "elu": lambda x: x if x >= 0 else _e(x) - 1.0,
    "selu": lambda x: 1.0507 * x if x >= 0 else 1.0507 * 1.6732 * (_e(x) - 1.0),
    "gelu": lambda x: 0.5 * x * (1.0 + math.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "swish": lambda x: x / (1.0 + _e(-x)),
    "mish": lambda x: x * _tanh_dn(_softplus_dn(x)),
    "hard_mish": lambda x: x if x > 0 else (x * x / 2.0 + x if x > -2 else 0.0),
    "tanh": lambda x: 2.0 / (1.0 + _e(-2.0 * x)) - 1.0,
    "loggy": lambda x: 2.0 / (1.0 + _e(-x)) - 1.0,
    "relie": lambda x: x if x > 0 else 0.01 * x,
    "ramp": lambda x: (x if x > 0 else 0.0) + 0.1 * x,
    "plse": lambda x: 0.01 * (x + 4) if x < -4 else (0.01 * (x - 4) + 1 if x > 4 else 0.125 * x + 0.5),
    "hardtan": lambda x: -1.0 if x < -1 else (1.0 if x > 1 else x),
    "lhtan": lambda x: 0.001 * x if x < 0 else (0.001 * (x - 1) + 1 if x > 1 else x),
    "stair": _stair,
}

PER_PIXEL = ["normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"]


def test_registry_is_complete():
    assert set(A.ACTIVATIONS) == set(SCALAR_REF) | set(PER_PIXEL)
    assert set(A.PER_PIXEL_ACTIVATIONS) == set(PER_PIXEL)


@pytest.mark.parametrize("name", sorted(SCALAR_REF))
def test_elementwise_activation(name):
    xs = np.concatenate([GRID, rand((41,), seed=3, scale=5.0)])
    ref = np.array([SCALAR_REF[name](float(v)) for v in xs], dtype=np.float64)
    got = A.ACTIVATIONS[name](t(xs))
    assert got.dtype == torch.float32
    close(got, ref, rtol=2e-6, atol=1e-6)
    # also through the module and get_activation, on a 4-D tensor
    x4 = t(xs[:40].reshape(2, 4, 5, 1))
    close(A.Activation(name)(x4).flatten(), ref[:40], rtol=2e-6, atol=1e-6)
    close(A.get_activation(name)(x4).flatten(), ref[:40], rtol=2e-6, atol=1e-6)


def test_relu_negative_zero_and_relu6_not_cpu_bug():
    y = A.ACTIVATIONS["relu"](torch.tensor([-3.0, 2.0]))
    assert y.tolist() == [0.0, 2.0]  # Darknet's x*(x>0) gives -0.0, F.relu 0.0: the same value
    assert A.ACTIVATIONS["relu6"](torch.tensor([7.0, 3.0, -1.0])).tolist() == [6.0, 3.0, 0.0]


def test_mish_large_negative_is_darknet_zero():
    # tanh_activate(expf(-19.5)) underflows to exactly 0 in float32 through 2/(1+e^-2z)-1
    y = A.ACTIVATIONS["mish"](torch.tensor([-19.5, -25.0]))
    assert y.abs().max().item() < 1e-7


def _per_pixel_ref(x, name):
    n, c, h, w = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                v = [float(x[b, k, i, j]) for k in range(c)]
                if name == "normalize_channels":
                    s = 0.0001 + sum(q for q in v if q > 0)
                    r = [q / s if q > 0 else 0.0 for q in v]
                else:
                    m = max(v) if name.endswith("maxval") else 0.0
                    s = 0.0001 + sum(math.exp(q - m) for q in v)
                    r = [math.exp(q - m) / s for q in v]
                for k in range(c):
                    out[b, k, i, j] = r[k]
    return out


@pytest.mark.parametrize("name", PER_PIXEL)
def test_per_pixel_activations(name):
    x = rand((2, 5, 3, 7), seed=11)
    x[0, :, 0, 0] = -1.0  # a pixel with no positive value
    close(A.ACTIVATIONS[name](t(x)), _per_pixel_ref(x, name), rtol=2e-6, atol=1e-7)


def test_unknown_activation():
    assert A.is_known("leaky") and not A.is_known("Leaky") and not A.is_known("swish2")
    with pytest.warns(UserWarning, match="swish2"):
        fn = A.get_activation("swish2")
    x = t(GRID)
    assert torch.equal(fn(x), A.ACTIVATIONS["relu"](x))
    with pytest.warns(UserWarning, match="nope"):
        m = A.Activation("nope")
    assert torch.equal(m(x), A.ACTIVATIONS["relu"](x))
    assert "nope" in repr(m)


@pytest.mark.parametrize("name", sorted(A.ACTIVATIONS))
def test_activation_module_scripts_and_exports(name):
    m = A.Activation(name)
    assert repr(m) == f"Activation({name})"
    sm = torch.jit.script(m)
    x = t(rand((2, 3, 5, 3), seed=5, scale=6.0))
    torch.testing.assert_close(sm(x), m(x), equal_nan=True, rtol=0, atol=0)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x), equal_nan=True, rtol=0, atol=0)


# =============================================================================================
# pooling
# =============================================================================================


def _maxpool_ref(x, size, sx, sy, pad):
    n, c, h, w = x.shape
    oh = (h + pad - size) // sy + 1
    ow = (w + pad - size) // sx + 1
    off = -(pad // 2)
    out = np.zeros((n, c, oh, ow), np.float32)
    for b in range(n):
        for k in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = -FLT_MAX
                    for dy in range(size):
                        for dx in range(size):
                            y = off + i * sy + dy
                            xx = off + j * sx + dx
                            ok = 0 <= y < h and 0 <= xx < w
                            v = x[b, k, y, xx] if ok else -FLT_MAX
                            if v > best:
                                best = v
                    out[b, k, i, j] = best
    return out


@pytest.mark.parametrize(
    "size,sx,sy,pad",
    [(2, 2, 2, 1), (2, 1, 1, 1), (3, 2, 2, 2), (5, 1, 1, 4), (3, 1, 2, 2), (2, 2, 2, 0), (3, 3, 2, 1)],
)
def test_maxpool(size, sx, sy, pad):
    x = rand((2, 3, 5, 7), seed=size * 10 + sx + pad)
    close(F.darknet_maxpool(t(x), size, sx, sy, pad), _maxpool_ref(x, size, sx, sy, pad), 0, 0)


def test_maxpool_minus_inf_becomes_minus_flt_max():
    x = torch.full((1, 1, 2, 2), -math.inf)
    assert F.darknet_maxpool(x, 2, 2, 2, 0).item() == -FLT_MAX


@pytest.mark.parametrize("oc", [1, 2, 3, 7])
def test_maxpool_depth(oc):
    x = rand((2, 5, 3, 3), seed=oc)
    n, c, h, w = x.shape
    ref = np.zeros((n, oc, h, w), np.float32)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for g in range(oc):
                    best = -FLT_MAX
                    for k in range(g, c, oc):
                        if x[b, k, i, j] > best:
                            best = x[b, k, i, j]
                    ref[b, g, i, j] = best
    close(F.maxpool_depth(t(x), oc), ref, 0, 0)


@pytest.mark.parametrize("size,sx,sy,pad", [(2, 1, 1, 1), (3, 2, 2, 2), (3, 1, 2, 2), (2, 2, 2, 1), (5, 1, 1, 4)])
def test_local_avgpool(size, sx, sy, pad):
    x = rand((2, 3, 5, 7), seed=size + 100 * sy)
    n, c, h, w = x.shape
    oh = (h + pad - size) // sy + 1
    ow = (w + pad - size) // sx + 1
    off = -(pad // 2)
    ref = np.zeros((n, c, oh, ow), np.float64)
    for b in range(n):
        for k in range(c):
            for i in range(oh):
                for j in range(ow):
                    acc, cnt = 0.0, 0
                    for dy in range(size):
                        for dx in range(size):
                            y, xx = off + i * sy + dy, off + j * sx + dx
                            if 0 <= y < h and 0 <= xx < w:
                                acc += x[b, k, y, xx]
                                cnt += 1
                    ref[b, k, i, j] = acc / cnt
    close(F.local_avgpool(t(x), size, sx, sy, pad), ref)


def test_global_avgpool():
    x = rand((2, 3, 5, 7), seed=1)
    ref = np.zeros((2, 3, 1, 1))
    for b in range(2):
        for k in range(3):
            ref[b, k, 0, 0] = sum(float(v) for v in x[b, k].ravel()) / 35
    close(F.global_avgpool(t(x)), ref)


# =============================================================================================
# upsample / reorg
# =============================================================================================


@pytest.mark.parametrize("stride,scale", [(2, 1.0), (3, 0.5), (1, 2.0)])
def test_upsample_positive(stride, scale):
    x = rand((2, 3, 3, 5), seed=stride)
    n, c, h, w = x.shape
    s = stride
    ref = np.zeros((n, c, h * s, w * s), np.float32)
    for b in range(n):
        for k in range(c):
            for y in range(h * s):
                for xx in range(w * s):
                    ref[b, k, y, xx] = scale * x[b, k, y // s, xx // s]
    close(F.upsample(t(x), stride, scale), ref, 0, 0)


@pytest.mark.parametrize("h,w,s,scale", [(6, 4, 2, 1.0), (5, 7, 2, 0.5), (6, 9, 3, 2.0)])
def test_upsample_negative_is_sum_pool(h, w, s, scale):
    # darknet: upsample_cpu(l.output, out_w, out_h, c, batch, s, forward=0, scale, net.input):
    #   out_flat[b, k*ow*oh + (j/s)*ow + i/s] += scale * in_flat[b, k*ow*oh*s*s + j*ow*s + i]
    x = rand((2, 3, h, w), seed=h * w)
    n, c = 2, 3
    oh, ow = h // s, w // s
    flat = x.reshape(n, -1)
    ref = np.zeros((n, c * oh * ow), np.float64)
    for b in range(n):
        for k in range(c):
            for j in range(oh * s):
                for i in range(ow * s):
                    ref[b, k * ow * oh + (j // s) * ow + i // s] += scale * flat[b, k * ow * oh * s * s + j * ow * s + i]
    close(F.upsample(t(x), -s, scale), ref.reshape(n, c, oh, ow))


def _reorg_cpu(x_flat, w, h, c, batch, stride, forward):
    """Literal transcription of darknet blas.c reorg_cpu on per-batch flat buffers."""
    out = np.full(x_flat.size, np.nan, np.float32)
    x = x_flat.ravel()
    in_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % in_c
                    offset = k // in_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + in_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


@pytest.mark.parametrize("c,h,w,s", [(3, 6, 4, 2), (2, 9, 3, 3), (5, 4, 8, 2)])
def test_reorg3d_forward(c, h, w, s):
    x = rand((2, c, h, w), seed=c + h)
    oh, ow, oc = h // s, w // s, c * s * s
    ref = _reorg_cpu(x, ow, oh, oc, 2, s, False).reshape(2, oc, oh, ow)
    got = F.reorg3d(t(x), s)
    close(got, ref, 0, 0)
    # the documented closed form: out[k][j][i] = in[k % C][j*s + (k/C)/s][i*s + (k/C)%s]
    for k in range(oc):
        for j in range(oh):
            for i in range(ow):
                q = k // c
                assert got[1, k, j, i].item() == x[1, k % c, j * s + q // s, i * s + q % s]


def test_reorg3d_forward_non_multiple_reads_like_darknet():
    x = rand((2, 2, 5, 7), seed=4)
    s, oh, ow, oc = 2, 2, 3, 8
    flat = x.reshape(2, -1)[:, : 2 * oh * s * ow * s]  # darknet only touches this prefix
    ref = _reorg_cpu(flat, ow, oh, oc, 2, s, False).reshape(2, oc, oh, ow)
    close(F.reorg3d(t(x), s), ref, 0, 0)


def test_reorg3d_reverse():
    s, c, h, w = 2, 16, 3, 5
    x = rand((2, c, h, w), seed=9)
    ref = _reorg_cpu(x, w * s, h * s, c // 4, 2, s, True).reshape(2, c // 4, h * s, w * s)
    close(F.reorg3d(t(x), s, reverse=True), ref, 0, 0)
    with pytest.raises(ValueError):
        F.reorg3d(t(rand((1, 4, 3, 3))), 2, reverse=True)


@pytest.mark.parametrize("c,h,w,s", [(4, 6, 4, 2), (8, 3, 5, 2), (9, 6, 3, 3)])
def test_reorg_old(c, h, w, s):
    x = rand((2, c, h, w), seed=c * w)
    oc, oh, ow = c * s * s, h // s, w // s
    # darknet keeps the first out_c*out_h*out_w values of each image's buffer (batch 1 in darknet)
    ref = _reorg_cpu(x, w, h, c, 2, s, False).reshape(2, -1)[:, : oc * oh * ow].reshape(2, oc, oh, ow)
    close(F.reorg_old(t(x), s), ref, 0, 0)
    refr = _reorg_cpu(x, w, h, c, 2, s, True).reshape(2, c // (s * s), h * s, w * s)
    close(F.reorg_old(t(x), s, reverse=True), refr, 0, 0)


def test_reorg_old_matches_format_formula():
    # conformance README: value = in_flat[(i*s + off%s) + w*s*((j*s + off/s) + h*s*c2)]
    c, h, w, s = 8, 6, 4, 2
    x = rand((1, c, h, w), seed=2)
    got = F.reorg_old(t(x), s).reshape(-1)
    flat = x.ravel()
    ref = np.zeros(c * h * w, np.float32)
    cs = c // (s * s)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                c2, off = k % cs, k // cs
                ref[i + w * (j + h * k)] = flat[(i * s + off % s) + w * s * ((j * s + off // s) + h * s * c2)]
    close(got, ref, 0, 0)


# =============================================================================================
# route / shortcut / scale_channels / sam
# =============================================================================================


def _route_ref(xs, groups, gid):
    n = xs[0].shape[0]
    out = [[] for _ in range(n)]
    for x in xs:
        flat = x.reshape(n, -1)
        part = flat.shape[1] // groups
        for b in range(n):
            for j in range(part):
                out[b].append(flat[b, gid * part + j])
    return np.array(out, np.float32)


@pytest.mark.parametrize("groups,gid", [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_route_4d(groups, gid):
    xs = [rand((2, 6, 3, 5), seed=1), rand((2, 12, 3, 5), seed=2), rand((2, 3 * groups, 3, 5), seed=3)]
    got = F.route([t(x) for x in xs], groups, gid)
    assert got.shape == (2, (6 + 12 + 3 * groups) // groups, 3, 5)
    close(got.reshape(2, -1), _route_ref(xs, groups, gid), 0, 0)


def test_route_flat_and_uneven():
    xs = [rand((2, 7), seed=1), rand((2, 5), seed=2)]
    got = F.route([t(x) for x in xs], 2, 1)
    assert got.dim() == 2
    close(got, _route_ref(xs, 2, 1), 0, 0)
    # channels not divisible by groups: darknet cuts the flat buffer, not channels
    xs = [rand((2, 3, 3, 3), seed=4)]
    got = F.route([t(x) for x in xs], 2, 1)
    close(got.reshape(2, -1), _route_ref(xs, 2, 1), 0, 0)


def _norm_weights_ref(wts, nin, norm):
    wts = np.asarray(wts, np.float64).reshape(nin, -1)
    out = wts.copy()
    for ch in range(wts.shape[1]):
        col = wts[:, ch]
        if norm == "relu":
            r = [max(v, 0.001) for v in col]  # darknet's inference-time lrelu
            s = 0.0001 + sum(r)
            out[:, ch] = [v / s for v in r]
        elif norm == "softmax":
            m = max(col)
            s = 0.0001 + sum(math.exp(v - m) for v in col)
            out[:, ch] = [math.exp(v - m) / s for v in col]
    return out


def _shortcut_ref(prev, froms, wts, wtype, norm):
    """darknet shortcut_multilayer_cpu with weights pre-normalised by fuse_conv_batchnorm."""
    n = prev.shape[0]
    size = prev[0].size
    pf = prev.reshape(n, -1)
    nin = len(froms) + 1
    if wts is not None:
        wn = _norm_weights_ref(wts, nin, norm).ravel()
        layer_step = len(wn) // nin
        step = size // layer_step
    out = np.zeros((n, size), np.float64)
    for b in range(n):
        for j in range(size):
            if wts is not None:
                out[b, j] = pf[b, j] * wn[j // step]
            else:
                out[b, j] = pf[b, j]
            for i, f in enumerate(froms):
                ff = f.reshape(n, -1)
                if j < ff.shape[1]:
                    wv = wn[j // step + (i + 1) * layer_step] if wts is not None else 1.0
                    out[b, j] += ff[b, j] * wv
    return out.reshape(prev.shape)


def test_shortcut_unweighted_prefix_add():
    prev = rand((2, 4, 3, 5), seed=1)
    froms = [rand((2, 2, 3, 5), seed=2), rand((2, 6, 3, 5), seed=3), rand((2, 4, 3, 5), seed=4)]
    got = F.shortcut_add(t(prev), [t(f) for f in froms])
    assert got.shape == prev.shape
    close(got, _shortcut_ref(prev, froms, None, "none", "none"))


def test_shortcut_unweighted_prefix_add_other_spatial_sizes():
    """From-layers of another height/width: the prefix is not whole channels (the flat form)."""
    prev = rand((2, 4, 3, 5), seed=1)
    froms = [rand((2, 3, 2, 5), seed=2), rand((2, 2, 4, 4), seed=3)]
    close(F.shortcut_add(t(prev), [t(f) for f in froms]), _shortcut_ref(prev, froms, None, "none", "none"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shortcut_channel_prefix_keeps_channels_last_bit_identical(dtype):
    """Fewer/more channels at the same size: channels-last in, channels-last out (no copy back to
    NCHW), and the very values of the flat prefix add done by hand."""
    g = torch.Generator().manual_seed(3)
    prev = torch.randn(2, 6, 5, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    froms = [torch.randn(2, c, 5, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
             for c in (4, 9, 6)]
    got = F.shortcut_add(prev, froms)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype
    flat = prev.reshape(2, -1).clone()
    for f in froms:
        ff = f.reshape(2, -1)[:, :flat.shape[1]]
        flat[:, :ff.shape[1]] = flat[:, :ff.shape[1]] + ff
    assert torch.equal(got, flat.reshape(prev.shape))


@pytest.mark.parametrize("wtype,norm", [
    ("per_feature", "none"), ("per_feature", "relu"), ("per_layer", "softmax"),
    ("per_channel", "none"), ("per_channel", "relu"), ("per_channel", "softmax"), ("per_channel", "avg_relu"),
])
def test_shortcut_weighted(wtype, norm):
    c = 3
    prev = rand((2, c, 3, 5), seed=5)
    froms = [rand((2, 2, 3, 5), seed=6), rand((2, 5, 3, 5), seed=7)]
    nin = 3
    k = nin if wtype != "per_channel" else nin * c
    wts = rand((k,), seed=8, scale=1.0)
    wts[0] = -0.7  # exercise max(w, 0.001)
    got = F.shortcut_add(t(prev), [t(f) for f in froms], t(wts), wtype, norm)
    rnorm = "relu" if norm == "avg_relu" else norm
    close(got, _shortcut_ref(prev, froms, wts, wtype, rnorm), rtol=1e-5, atol=1e-6)


def test_shortcut_flat_prev():
    prev = rand((2, 7), seed=1)
    froms = [rand((2, 4), seed=2)]
    close(F.shortcut_add(t(prev), [t(f) for f in froms]), _shortcut_ref(prev, froms, None, "none", "none"))


def _legacy_ref(prev, src):
    n, c2, h2, w2 = prev.shape
    _, c1, h1, w1 = src.shape
    stride = max(w1 // w2, 1)
    sample = max(w2 // w1, 1)
    out = prev.copy().ravel()
    add = src.ravel()
    for b in range(n):
        for k in range(min(c1, c2)):
            for j in range(min(h1, h2)):
                for i in range(min(w1, w2)):
                    oi = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
                    ai = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
                    out[oi] += add[ai]
    return out.reshape(prev.shape)


@pytest.mark.parametrize("prev_shape,src_shape", [
    ((2, 6, 3, 5), (2, 4, 6, 10)),   # source 2x larger, fewer channels
    ((2, 3, 3, 3), (2, 5, 6, 6)),    # source 2x larger, more channels
    ((2, 4, 6, 6), (2, 3, 3, 3)),    # source smaller: sample = 2
    ((2, 4, 5, 7), (2, 8, 5, 7)),    # same size
])
def test_shortcut_legacy(prev_shape, src_shape):
    prev = rand(prev_shape, seed=1)
    src = rand(src_shape, seed=2)
    close(F.shortcut_legacy(t(prev), t(src)), _legacy_ref(prev, src), 0, 0)


@pytest.mark.parametrize("scale_wh", [False, True])
def test_scale_channels(scale_wh):
    frm = rand((2, 4, 3, 5), seed=1)
    prev = rand((2, 1, 3, 5), seed=2) if scale_wh else rand((2, 4, 1, 1), seed=2)
    n, c, h, w = frm.shape
    ref = np.zeros_like(frm)
    pflat = prev.ravel()
    for i in range(frm.size):  # darknet's global index arithmetic
        if scale_wh:
            ref.ravel()[i] = pflat[i % (h * w) + (i // (c * h * w)) * (h * w)] * frm.ravel()[i]
        else:
            ref.ravel()[i] = pflat[i // (h * w)] * frm.ravel()[i]
    close(F.scale_channels(t(prev), t(frm), scale_wh), ref, 0, 0)


def test_sam():
    a, b = rand((2, 3, 3, 5), seed=1), rand((2, 3, 3, 5), seed=2)
    ref = np.array([x * y for x, y in zip(a.ravel(), b.ravel())]).reshape(a.shape)
    close(F.sam(t(a), t(b)), ref, 0, 0)


# =============================================================================================
# heads and softmax family
# =============================================================================================


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


@pytest.mark.parametrize("scale,new_coords", [(1.0, False), (1.05, False), (2.0, True), (1.0, True)])
def test_yolo_output(scale, new_coords):
    n, classes, h, w = 3, 2, 3, 5
    x = rand((2, n * (5 + classes), h, w), seed=3)
    ref = x.astype(np.float64).copy()
    for b in range(2):
        for a in range(n):
            for e in range(5 + classes):
                ch = a * (5 + classes) + e
                for i in range(h):
                    for j in range(w):
                        v = float(x[b, ch, i, j])
                        if not new_coords and e != 2 and e != 3:
                            v = _sig(v)
                        if e < 2:
                            v = v * scale - 0.5 * (scale - 1)
                        ref[b, ch, i, j] = v
    close(F.yolo_output(t(x), n, classes, scale, new_coords), ref)


@pytest.mark.parametrize("scale", [1.0, 1.1])
def test_gaussian_yolo_output(scale):
    n, classes, h, w = 2, 3, 3, 5
    e_n = 9 + classes
    x = rand((2, n * e_n, h, w), seed=4)
    ref = x.astype(np.float64).copy()
    for b in range(2):
        for a in range(n):
            for e in range(e_n):
                ch = a * e_n + e
                for i in range(h):
                    for j in range(w):
                        v = float(x[b, ch, i, j])
                        if e not in (4, 6):
                            v = _sig(v)
                        if e in (0, 2):
                            v = v * scale - 0.5 * (scale - 1)
                        ref[b, ch, i, j] = v
    close(F.gaussian_yolo_output(t(x), n, classes, scale), ref)


def _softmax_ref(vals, temp=1.0):
    m = max(vals)
    e = [math.exp(v / temp - m / temp) for v in vals]
    s = sum(e)
    return [q / s for q in e]


def _region_ref(x, n, coords, classes, softmax, groups=None):
    b_, c, h, w = x.shape
    size = coords + 1 + classes
    flat_in = x.reshape(b_, -1)
    out = np.zeros((b_, c * h * w), np.float64)
    for b in range(b_):
        for loc in range(h * w):
            for a in range(n):
                for k in range(size):
                    out[b, (loc * n + a) * size + k] = flat_in[b, (a * size + k) * (w * h) + loc]
        for r in range(h * w * n):
            base = r * size
            out[b, base + 4] = _sig(out[b, base + 4])
            if groups is not None:
                for off, sz in groups:
                    if sz:
                        vals = list(out[b, base + 5 + off: base + 5 + off + sz])
                        out[b, base + 5 + off: base + 5 + off + sz] = _softmax_ref(vals)
            elif softmax:
                out[b, base + 5: base + 5 + classes] = _softmax_ref(list(out[b, base + 5: base + 5 + classes]))
    return out


@pytest.mark.parametrize("softmax", [False, True])
def test_region_output(softmax):
    n, coords, classes, h, w = 3, 4, 4, 3, 5
    x = rand((2, n * (coords + 1 + classes), h, w), seed=5)
    got = F.region_output(t(x), n, coords, classes, softmax)
    assert got.shape == x.shape
    close(got.reshape(2, -1), _region_ref(x, n, coords, classes, softmax))


def test_region_output_tree(tmp_path):
    p = tmp_path / "t.tree"
    p.write_text("a -1\nb -1\nc 0\nd 0\ne 0\nf 1\n")
    tree = F.read_tree(str(p))
    n, coords, classes, h, w = 2, 4, 6, 3, 3
    x = rand((2, n * (coords + 1 + classes), h, w), seed=6)
    got = F.region_output(t(x), n, coords, classes, True, tree.groups())
    close(got.reshape(2, -1), _region_ref(x, n, coords, classes, True, tree.groups()))


def test_read_tree(tmp_path):
    p = tmp_path / "t.tree"
    # first parent is not -1 -> darknet opens with an empty group; CRLF tolerated; name only -> -1
    p.write_bytes(b"n1 5\r\nn2 5\nn3 0\nn4 0\nn5 0\nn6 1\nn7\n")
    tree = F.read_tree(str(p))
    assert tree.names == ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    assert tree.parent == [5, 5, 0, 0, 0, 1, -1]
    assert tree.groups() == [(0, 0), (0, 2), (2, 3), (5, 1), (6, 1)]
    assert tree.group == [1, 1, 2, 2, 2, 3, 4]
    assert tree.leaf == [False, False, True, True, True, False, True]
    assert tree.n == 7


def test_read_tree_9k(shared):
    tree = F.read_tree(shared / "darknet" / "data" / "9k.tree")
    assert tree.n == 9418
    assert sum(tree.group_size) == 9418
    offs = [o for o, s in tree.groups()]
    assert offs == sorted(offs)


def test_tree_softmax_and_temperature():
    groups = [(0, 3), (3, 0), (3, 2), (6, 4)]  # entry 5 uncovered
    x = rand((2, 3, 10), seed=7)
    for temp in (1.0, 0.5):
        ref = x.astype(np.float64).copy()
        for b in range(2):
            for r in range(3):
                for off, sz in groups:
                    if sz:
                        ref[b, r, off:off + sz] = _softmax_ref(list(x[b, r, off:off + sz].astype(np.float64)), temp)
        close(F.tree_softmax(t(x), groups, temp), ref)


@pytest.mark.parametrize("groups,temp", [(1, 1.0), (3, 1.0), (5, 2.0)])
def test_softmax_groups(groups, temp):
    x = rand((2, 15), seed=groups)
    ref = np.zeros((2, 15))
    g = 15 // groups
    for b in range(2):
        for q in range(groups):
            ref[b, q * g:(q + 1) * g] = _softmax_ref([float(v) for v in x[b, q * g:(q + 1) * g]], temp)
    close(F.softmax_groups(t(x), groups, temp), ref)
    # on a (N, C, 1, 1) tensor the shape is kept
    x4 = t(x.reshape(2, 15, 1, 1))
    close(F.softmax_groups(x4, groups, temp).reshape(2, 15), ref)
    with pytest.raises(ValueError):
        F.softmax_groups(t(x), 4)


@pytest.mark.parametrize("softmax", [False, True])
def test_detection_output(softmax):
    side, classes, num, coords = 3, 4, 2, 4
    k = side * side * ((1 + coords) * num + classes)
    x = rand((2, k), seed=8)
    ref = x.astype(np.float64).copy()
    if softmax:
        for b in range(2):
            for i in range(side * side):
                o = i * classes
                ref[b, o:o + classes] = _softmax_ref([float(v) for v in x[b, o:o + classes]])
    close(F.detection_output(t(x), side, classes, softmax), ref)


# =============================================================================================
# minor layers
# =============================================================================================


@pytest.mark.parametrize("ch,cw,noadjust", [(3, 4, False), (2, 5, True), (5, 7, False)])
def test_crop_center(ch, cw, noadjust):
    x = rand((2, 3, 5, 7), seed=ch)
    h, w = 5, 7
    dh, dw = (h - ch) // 2, (w - cw) // 2
    ref = np.zeros((2, 3, ch, cw), np.float32)
    for b in range(2):
        for c in range(3):
            for i in range(ch):
                for j in range(cw):
                    v = x[b, c, i + dh, j + dw]
                    ref[b, c, i, j] = v if noadjust else v * 2 - 1
    close(F.crop_center(t(x), ch, cw, noadjust), ref, 0, 0)


@pytest.mark.parametrize("size,c", [(5, 7), (3, 4), (4, 6), (5, 2)])
def test_darknet_lrn(size, c):
    alpha, beta, kappa = 0.05, 0.75, 1.5
    x = rand((2, c, 3, 5), seed=size + c)
    n, _, h, w = x.shape
    ref = np.zeros_like(x, dtype=np.float64)
    for b in range(n):
        for yy in range(h):
            for xx in range(w):
                sq = [float(x[b, k, yy, xx]) ** 2 for k in range(c)]
                norms = [0.0] * c
                norms[0] = kappa
                for k in range(size // 2):
                    if k < c:
                        norms[0] += alpha * sq[k]
                for k in range(1, c):
                    norms[k] = norms[k - 1]
                    prev = k - (size - 1) // 2 - 1
                    nxt = k + size // 2
                    if prev >= 0:
                        norms[k] -= alpha * sq[prev]
                    if nxt < c:
                        norms[k] += alpha * sq[nxt]
                for k in range(c):
                    ref[b, k, yy, xx] = float(x[b, k, yy, xx]) * norms[k] ** (-beta)
    close(F.darknet_lrn(t(x), size, alpha, beta, kappa), ref, rtol=1e-5, atol=1e-6)


def _xnor_ref(x, wt, bias, sy, sx, pad, dil=1, inverted=False):
    """Naive Darknet bit-packed xnor conv: count sign agreements (padding bits unset = -1),
    ``(2*count - K) * mean|W_f| + b_f``; ``inverted``: binary_align_weights with gpu_index >= 0
    flips every packed weight bit including the 256-bit alignment padding (which then never
    agrees with the zero input padding) while the GEMM still subtracts the padding count."""
    n, cin, h, w = x.shape
    cout, _, ks, _ = wt.shape
    eff = dil * (ks - 1) + 1
    oh = (h + 2 * pad - eff) // sy + 1
    ow = (w + 2 * pad - eff) // sx + 1
    K = cin * ks * ks
    f1 = 0 if K % 256 == 0 else 256 - K % 256
    ref = np.zeros((n, cout, oh, ow))
    for b in range(n):
        for f in range(cout):
            mean = np.mean(np.abs(wt[f].astype(np.float64)))
            for i in range(oh):
                for j in range(ow):
                    count = 0
                    for k in range(cin):
                        for dy in range(ks):
                            for dx in range(ks):
                                y = i * sy - pad + dy * dil
                                xx = j * sx - pad + dx * dil
                                xbit = (0 <= y < h and 0 <= xx < w) and x[b, k, y, xx] > 0
                                wbit = wt[f, k, dy, dx] > 0
                                if inverted:
                                    wbit = not wbit
                                count += int(xbit == wbit)
                    if inverted:
                        count -= f1  # f1 padding bits disagree, still subtracted
                    ref[b, f, i, j] = (2 * count - K) * mean + (0.0 if bias is None else bias[f])
    return ref


@pytest.mark.parametrize("stride,pad,dil,ks,inv", [((1, 1), 1, 1, 3, False), ((2, 2), 1, 1, 3, False),
                                                   ((1, 2), 0, 1, 1, False), ((1, 1), 2, 2, 3, False),
                                                   ((1, 1), 1, 1, 3, True), ((2, 2), 0, 1, 1, True)])
def test_xnor_conv2d(stride, pad, dil, ks, inv):
    cin, cout, h, w = 3, 4, 5, 7
    x = rand((2, cin, h, w), seed=1)
    x[0, 0, 0, 0] = 0.0  # sgn(0) = -1
    wt = rand((cout, cin, ks, ks), seed=2, scale=0.3)
    bias = rand((cout,), seed=3)
    ref = _xnor_ref(x, wt, bias, stride[0], stride[1], pad, dil, inv)
    got = F.xnor_conv2d(t(x), t(wt), t(bias), list(stride), pad, dil, inv)
    close(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cin,bin_output,bn", [(3, False, True), (3, True, True), (32, False, True),
                                               (32, True, False)])
def test_xnor_conv_layer(cin, bin_output, bn):
    """ConvLayer(xnor=1) = Darknet after load_weights + calculate_binary_weights, no BN fusion:
    raw weights binarised, BN skipped (only biases/beta added), activation linear when
    bin_output, dilation ignored (pad stays the cfg's), weights inverted when c % 32 == 0."""
    from darkcfg.layers.conv import ConvLayer

    cout, ks, pad, dil = 4, 3, 1, 2
    m = ConvLayer(cin, cout, ks, (1, 1), pad, dil, 1, bn=bn, activation="leaky", xnor=True,
                  bin_output=bin_output).eval()
    wt = rand((cout, cin, ks, ks), seed=4, scale=0.3)
    beta = rand((cout,), seed=5)
    with torch.no_grad():
        m.conv.weight.copy_(t(wt))
        if bn:
            m.bn.bias.copy_(t(beta))
            m.bn.weight.fill_(3.0)
            m.bn.running_mean.fill_(7.0)
            m.bn.running_var.fill_(0.25)
        else:
            m.conv.bias.copy_(t(beta))
    x = rand((1, cin, 5, 6), seed=6)
    ref = _xnor_ref(x, wt, beta, 1, 1, pad, 1, cin % 32 == 0)
    if not bin_output:
        ref = np.where(ref > 0, ref, 0.1 * ref)
    with torch.no_grad():
        got = m([t(x)])
        close(got, ref, rtol=1e-5, atol=1e-4)
        m.fuse()  # xnor layers keep their (BN-free) numbers
        close(m([t(x)]), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind,sx,sy", [(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 2, 1), (2, 1, 1)])
def test_antialias_blur(kind, sx, sy):
    x = rand((2, 3, 5, 7), seed=kind + sx)
    if kind == 1:
        k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64) / 16
        pad = 1
    else:
        k = np.ones((2, 2)) / 4
        pad = 0
    ks = k.shape[0]
    h, w = 5, 7
    oh = (h + 2 * pad - ks) // sy + 1
    ow = (w + 2 * pad - ks) // sx + 1
    ref = np.zeros((2, 3, oh, ow))
    for b in range(2):
        for c in range(3):
            for i in range(oh):
                for j in range(ow):
                    s = 0.0
                    for dy in range(ks):
                        for dx in range(ks):
                            y, xx = i * sy - pad + dy, j * sx - pad + dx
                            if 0 <= y < h and 0 <= xx < w:
                                s += k[dy, dx] * x[b, c, y, xx]
                    ref[b, c, i, j] = s
    close(F.antialias_blur(t(x), kind, sx, sy), ref)


@pytest.mark.parametrize("formula", ["alexeyab", "pjreddie"])
def test_normalize_bn(formula):
    x = rand((2, 4, 3, 5), seed=1)
    m, s, bb = rand((4,), 2), rand((4,), 3), rand((4,), 4)
    v = np.abs(rand((4,), 5)) + 0.1
    v[0] = 0.0  # unloaded variance: 1/sqrt(1e-5) or 1/1e-6 gain
    ref = np.zeros(x.shape)
    for b in range(2):
        for c in range(4):
            for i in range(3):
                for j in range(5):
                    if formula == "alexeyab":
                        d = math.sqrt(float(v[c]) + 1e-5)
                    else:
                        d = math.sqrt(float(v[c])) + 1e-6
                    ref[b, c, i, j] = (float(x[b, c, i, j]) - float(m[c])) / d * float(s[c]) + float(bb[c])
    close(F.normalize_bn(t(x), t(m), t(v), t(s), t(bb), formula), ref, rtol=1e-5, atol=1e-4)
    # 2-D (connected) input
    x2 = t(x[:, :, 0, 0].copy())
    close(F.normalize_bn(x2, t(m), t(v), t(s), t(bb), formula), ref[:, :, 0, 0], rtol=1e-5, atol=1e-4)


# =============================================================================================
# TorchScript
# =============================================================================================

SCRIPTABLE = [
    "darknet_maxpool", "maxpool_depth", "local_avgpool", "global_avgpool", "upsample", "reorg3d",
    "reorg_old", "route", "normalize_shortcut_weights", "shortcut_add", "shortcut_legacy",
    "scale_channels", "sam", "darknet_softmax", "softmax_groups", "tree_softmax", "yolo_output",
    "gaussian_yolo_output", "region_output", "detection_output", "crop_center", "darknet_lrn",
    "xnor_conv2d", "antialias_blur", "normalize_bn",
]


@pytest.mark.parametrize("name", SCRIPTABLE)
def test_functions_script(name):
    torch.jit.script(getattr(F, name))


def test_scripted_matches_eager_samples():
    x = t(rand((2, 3, 5, 7), seed=1))
    sm = torch.jit.script(F.darknet_maxpool)
    assert torch.equal(sm(x, 2, 2, 2, 1), F.darknet_maxpool(x, 2, 2, 2, 1))
    y = t(rand((2, 2 * 9, 3, 3), seed=2))
    sr = torch.jit.script(F.region_output)
    assert torch.equal(sr(y, 2, 4, 4, True, None), F.region_output(y, 2, 4, 4, True))
    sc = torch.jit.script(F.shortcut_add)
    f1 = t(rand((2, 2, 5, 7), seed=3))
    w = t(rand((6,), seed=4))
    assert torch.equal(sc(x, [f1], w, "per_channel", "softmax"), F.shortcut_add(x, [f1], w, "per_channel", "softmax"))


def test_doctests():
    import doctest

    res = doctest.testmod(F, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0
