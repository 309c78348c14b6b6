"""Pure torch versions of Darknet's layer forwards (inference).

Every function works on batched tensors (NCHW, or ``(N, K)`` for flat layers), on any
device/dtype, without Python loops over pixels.  Each docstring names the Darknet
(AlexeyAB, ``src/``) function it reproduces and the section of ``darknet-format.md``.

"Flat" means one image's C·H·W buffer in Darknet's memory order (channel, row, column),
i.e. ``x.reshape(N, -1)``.  Several Darknet layers reinterpret that buffer; the functions here
do the same so that the results equal Darknet's memory element for element.

Activations are *not* applied here (see :mod:`darkcfg.layers.activations`) except where the
layer itself hard-codes one (logistic in [yolo]/[region]).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..datafiles import DarknetTree, read_tree  # noqa: F401  (re-exported; torch-free home)
from .activations import logistic
from .tracing import in_bounds_fraction, static_dims, static_hw, traced_sizes

__all__ = [
    "FLT_MAX",
    "DarknetTree",
    "antialias_blur",
    "crop_center",
    "darknet_lrn",
    "darknet_maxpool",
    "darknet_softmax",
    "detection_output",
    "gaussian_yolo_output",
    "global_avgpool",
    "local_avgpool",
    "maxpool_depth",
    "normalize_bn",
    "bn_denominator",
    "normalize_shortcut_weights",
    "read_tree",
    "region_output",
    "reorg3d",
    "reorg_old",
    "route",
    "sam",
    "scale_channels",
    "shortcut_add",
    "shortcut_legacy",
    "softmax_groups",
    "tree_softmax",
    "upsample",
    "xnor_conv2d",
    "yolo_output",
]

#: C's ``FLT_MAX``; Darknet initialises running maxima with ``-FLT_MAX``.
FLT_MAX: float = 3.4028234663852886e38


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------


def _lowest(x: Tensor) -> float:
    """Darknet's ``-FLT_MAX`` start value, in ``x``'s dtype (fp16's lowest is -65504)."""
    # Spelled out (torch.finfo is not scriptable).
    if x.dtype == torch.float16:
        return -65504.0
    if x.dtype == torch.bfloat16:
        return -3.3895313892515355e38
    return -3.4028234663852886e38


def _c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _pool_pads(x: Tensor, size: int, stride_x: int, stride_y: int, padding: int) -> List[int]:
    """``F.pad`` amounts for Darknet's pool geometry.

    Left/top get ``padding//2``, right/bottom the rest -- and more when Darknet's C
    formula ``(in + padding - size)/stride + 1`` (truncating) asks for a window that
    reaches past the padded input (alexnet's 3x3/2 pool on a 2x2 map gives 1x1: the
    out-of-range taps are simply ignored by Darknet).
    """
    h, w = static_hw(x)
    return pool_pads_hw(h, w, size, stride_x, stride_y, padding)


def pool_pads_hw(h: int, w: int, size: int, stride_x: int, stride_y: int, padding: int) -> List[int]:
    """:func:`_pool_pads` for an h x w input (a dynamic-size export is exact only where these agree)."""
    pl = padding // 2
    pads: List[int] = []
    for n, stride in ((w, stride_x), (h, stride_y)):
        out = _c_div(n + padding - size, stride) + 1
        # Right/bottom padding that no window reaches is dropped (it would change nothing).
        pr = max(0, (out - 1) * stride + size - n - pl)
        pads += [pl, pr]
    return pads


def darknet_maxpool(x: Tensor, size: int, stride_x: int, stride_y: int, padding: int) -> Tensor:
    """Darknet ``[maxpool]`` (``maxpool_layer.c forward_maxpool_layer``, format §3.5).

    ``padding`` is the TOTAL padding: left/top get ``padding//2``, right/bottom the rest;
    padded positions count as ``-FLT_MAX``; floor mode, so
    ``out = (in + padding - size)//stride + 1``.  Values below ``-FLT_MAX`` (``-inf``)
    come out as ``-FLT_MAX`` as in Darknet, whose running max starts there.

    >>> x = torch.arange(9.).reshape(1, 1, 3, 3)
    >>> darknet_maxpool(x, 2, 1, 1, 1)[0, 0]          # yolov3-tiny: pads right/bottom only
    tensor([[4., 5., 5.],
            [7., 8., 8.],
            [7., 8., 8.]])
    """
    pads = _pool_pads(x, size, stride_x, stride_y, padding)
    if pads[0] > 0 or pads[1] > 0 or pads[2] > 0 or pads[3] > 0:
        x = F.pad(x, pads, mode="constant", value=_lowest(x))
    if traced_sizes():  # a dynamic-size export: one MaxPool (the slices' bounds would be constants)
        return torch.clamp_min(F.max_pool2d(x, size, (stride_y, stride_x)), _lowest(x))
    return torch.clamp_min(_separable_max(x, size, stride_x, stride_y), _lowest(x))


def darknet_maxpool_train(x: Tensor, size: int, stride_x: int, stride_y: int, padding: int) -> Tensor:
    """:func:`darknet_maxpool` whose gradient goes to the first maximum of each window (row-major)."""
    pads = _pool_pads(x, size, stride_x, stride_y, padding)
    if pads[0] > 0 or pads[1] > 0 or pads[2] > 0 or pads[3] > 0:
        x = F.pad(x, pads, mode="constant", value=_lowest(x))
    return torch.clamp_min(F.max_pool2d(x, size, (stride_y, stride_x)), _lowest(x))


def _separable_max(x: Tensor, size: int, stride_x: int, stride_y: int) -> Tensor:
    """Window max as ``size`` strided row maxima, then ``size`` strided column maxima.

    Exactly ``F.max_pool2d`` (max is separable), but 15-30x faster on CPU for NCHW tensors,
    where PyTorch's pooling kernel is slow (it also computes indices); e.g. a 2x2/2 pool on
    64x208x208 takes 0.5 ms instead of 7.8 ms, an SPP 13x13 on 512x52x52 4.6 ms instead of 121.
    """
    h, w = static_hw(x)
    oh = (h - size) // stride_y + 1
    ow = (w - size) // stride_x + 1
    span_y = (oh - 1) * stride_y + 1
    span_x = (ow - 1) * stride_x + 1
    rows = x[:, :, 0:span_y:stride_y, :]
    for dy in range(1, size):
        rows = torch.maximum(rows, x[:, :, dy:dy + span_y:stride_y, :])
    out = rows[:, :, :, 0:span_x:stride_x]
    for dx in range(1, size):
        out = torch.maximum(out, rows[:, :, :, dx:dx + span_x:stride_x])
    return out


def maxpool_depth(x: Tensor, out_channels: int) -> Tensor:
    """Darknet ``[maxpool] maxpool_depth=1`` (``forward_maxpool_layer``, format §3.5).

    ``out[:, g] = max(x[:, g], x[:, g + out_channels], x[:, g + 2*out_channels], ...)``;
    spatial size unchanged; an output channel with no input channel is ``-FLT_MAX``.

    >>> x = torch.tensor([1., 5., 3., 2., 0.]).reshape(1, 5, 1, 1)
    >>> maxpool_depth(x, 2).flatten()
    tensor([3., 5.])
    """
    n = x.shape[0]
    c, h, w = static_dims(x)
    groups = (c + out_channels - 1) // out_channels
    extra = groups * out_channels - c
    if extra > 0:
        x = F.pad(x, [0, 0, 0, 0, 0, extra], mode="constant", value=_lowest(x))
    out = torch.amax(x.reshape(n, groups, out_channels, h, w), dim=1)
    return torch.clamp_min(out, _lowest(x))


def local_avgpool(x: Tensor, size: int, stride_x: int, stride_y: int, padding: int) -> Tensor:
    """Darknet ``[local_avgpool]`` (``maxpool_layer.c forward_local_avgpool_layer``, §3.6).

    Maxpool geometry (total ``padding``, left/top ``padding//2``), mean over the in-bounds
    elements only (a window with none gives ``0/0 = NaN``, as in Darknet).

    >>> x = torch.arange(4.).reshape(1, 1, 2, 2)
    >>> local_avgpool(x, 2, 1, 1, 1)[0, 0]
    tensor([[1.5000, 2.0000],
            [2.5000, 3.0000]])
    """
    pads = _pool_pads(x, size, stride_x, stride_y, padding)
    xp = x
    if pads[0] > 0 or pads[1] > 0 or pads[2] > 0 or pads[3] > 0:  # OpenCV's importer fails on a no-op Pad
        xp = F.pad(x, pads, mode="constant", value=0.0)
    k = [size, size]
    s = [stride_y, stride_x]
    if torch.jit.is_tracing():
        # ONNX's AveragePool has no divisor override: window means over the constant in-bounds fraction.
        return F.avg_pool2d(xp, k, s, 0, False, True) / in_bounds_fraction(x, pads, k, s)
    ones = torch.ones((1, 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    mp = F.pad(ones, pads, mode="constant", value=0.0)
    total = F.avg_pool2d(xp, k, s, 0, False, True, 1)
    count = F.avg_pool2d(mp, k, s, 0, False, True, 1)
    return total / count


def global_avgpool(x: Tensor) -> Tensor:
    """Darknet ``[avgpool]`` (``avgpool_layer.c forward_avgpool_layer``, §3.7): (N,C,1,1).

    >>> global_avgpool(torch.arange(4.).reshape(1, 1, 2, 2)).flatten()
    tensor([1.5000])
    """
    h = x.shape[2]
    w = x.shape[3]
    return torch.sum(x, dim=[2, 3], keepdim=True) / float(h * w)


# ---------------------------------------------------------------------------------------------
# resampling / reorganisation
# ---------------------------------------------------------------------------------------------


def upsample(x: Tensor, stride: int, scale: float = 1.0) -> Tensor:
    """Darknet ``[upsample]`` (``upsample_layer.c``, ``blas.c upsample_cpu``, §3.12).

    ``stride > 0``: nearest neighbour ×stride, times ``scale``.
    ``stride < 0`` (s = -stride): output ``(h//s, w//s)``, each value the SUM of its s×s block
    of ``scale*x``.  If h or w is not a multiple of s, Darknet reads the input buffer with the
    output's pitch; that (misaligned) behaviour is reproduced.

    >>> upsample(torch.tensor([[[[1., 2.]]]]), 2)[0, 0]
    tensor([[1., 1., 2., 2.],
            [1., 1., 2., 2.]])
    >>> upsample(torch.ones(1, 1, 2, 2), -2).flatten()
    tensor([4.])
    """
    n, c, h, w = x.shape
    if stride > 0:
        s = stride
        if (not torch.jit.is_tracing() and c > 1 and x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous()):
            # NHWC in, NHWC out (the same values): an NCHW result would make the next conv
            # reorder its input back (yolov4-tiny's largest conv read its input that way).
            nhwc = x.permute(0, 2, 3, 1)
            out = nhwc.reshape(n, h, 1, w, 1, c).expand(n, h, s, w, s, c).reshape(n, h * s, w * s, c)
            out = out.permute(0, 3, 1, 2)
        else:
            out = x.reshape(n, c, h, 1, w, 1).expand(n, c, h, s, w, s).reshape(n, c, h * s, w * s)
        if scale != 1.0:
            out = out * scale
        return out
    if stride == 0:
        raise ValueError("upsample stride must not be 0")
    s = -stride
    oh = h // s
    ow = w // s
    flat = x.reshape(n, c * h * w)[:, : c * oh * s * ow * s]
    blocks = flat.reshape(n, c, oh, s, ow, s)
    if scale != 1.0:
        blocks = blocks * scale
    return torch.sum(blocks, dim=[3, 5])


def _reorg_buffer(flat: Tensor, w: int, h: int, c: int, stride: int, forward: bool) -> Tensor:
    # blas.c reorg_cpu(x, w, h, c, batch, stride, forward, out) as a permutation of the
    # per-image flat buffers.  Grid A is (c, h, w); grid B is (c/s^2, h*s, w*s).  Channel k of
    # grid A maps to (offset = k // (c/s^2), c2 = k % (c/s^2)), offset = dy*s + dx.
    # forward=0: out(A) = x(B);  forward=1: out(B) = x(A).
    s = stride
    n = flat.shape[0]
    in_c = c // (s * s)
    if forward:
        v = flat.reshape(n, s, s, in_c, h, w)  # (dy, dx, c2, j, i)
        return v.permute(0, 3, 4, 1, 5, 2).reshape(n, -1)  # (c2, j, dy, i, dx)
    v = flat.reshape(n, in_c, h, s, w, s)  # (c2, j, dy, i, dx)
    return v.permute(0, 3, 5, 1, 2, 4).reshape(n, -1)  # (dy, dx, c2, j, i)


def reorg3d(x: Tensor, stride: int, reverse: bool = False) -> Tensor:
    """Darknet ``[reorg3d]`` (``reorg_layer.c forward_reorg_layer`` → ``reorg_cpu``, §3.13).

    Forward: space-to-depth with output channel ``(dy*s + dx)*C + c``
    (not ``nn.PixelUnshuffle``'s order); output ``(c*s², h//s, w//s)``.
    ``reverse=True``: output ``(c//s², h*s, w*s)`` computed exactly as Darknet's
    ``reorg_cpu(..., forward=1)`` with the layer's output dims (it reinterprets the input
    buffer; needs c divisible by s⁴).  Not used by any known cfg.

    >>> x = torch.arange(4.).reshape(1, 1, 2, 2)
    >>> reorg3d(x, 2).flatten()
    tensor([0., 1., 2., 3.])
    """
    s = stride
    n = x.shape[0]
    c, h, w = static_dims(x)
    if s < 1:
        raise ValueError(f"reorg stride must be >= 1, got {s}")
    if not reverse:
        ow = w // s
        oh = h // s
        oc = c * s * s
        # the input is read as grid B = (c, oh*s, ow*s) with that pitch (misaligned if h, w
        # are not multiples of s, as in Darknet)
        flat = x.reshape(n, -1)[:, : c * oh * s * ow * s]
        return _reorg_buffer(flat, ow, oh, oc, s, False).reshape(n, oc, oh, ow)
    if c % (s ** 4) != 0:
        raise ValueError(
            f"reorg3d reverse with stride {s} needs channels divisible by {s ** 4}, got {c}"
        )
    ow = w * s
    oh = h * s
    oc = c // (s * s)
    out = _reorg_buffer(x.reshape(n, -1), ow, oh, oc, s, True)
    return out.reshape(n, oc, oh, ow)


def reorg_old(x: Tensor, stride: int, reverse: bool = False) -> Tensor:
    """Darknet ``[reorg]`` (``reorg_old_layer.c forward_reorg_old_layer`` → ``reorg_cpu``, §3.13).

    The YOLOv2 passthrough: ``reorg_cpu`` with the INPUT dims and forward=0, i.e.
    ``x.reshape(N, C//s², H, s, W, s).permute(0,3,5,1,2,4).reshape(N, C*s², H//s, W//s)``
    (needs C divisible by s²).  ``reverse=True``: ``reorg_cpu(..., forward=1)``, output
    ``(C//s², H*s, W*s)``.

    >>> x = torch.arange(16.).reshape(1, 4, 2, 2)
    >>> reorg_old(x, 2)[0, :, 0, 0]
    tensor([ 0.,  2.,  8., 10.,  1.,  3.,  9., 11.,  4.,  6., 12., 14.,  5.,  7.,
            13., 15.])
    """
    s = stride
    n = x.shape[0]
    c, h, w = static_dims(x)
    if s < 1:
        raise ValueError(f"reorg stride must be >= 1, got {s}")
    if c % (s * s) != 0:
        raise ValueError(f"[reorg] with stride {s} needs channels divisible by {s * s}, got {c}")
    flat = x.reshape(n, -1)
    if not reverse:
        out = _reorg_buffer(flat, w, h, c, s, False)
        oc = c * s * s
        oh = h // s
        ow = w // s
        return out[:, : oc * oh * ow].reshape(n, oc, oh, ow)
    out = _reorg_buffer(flat, w, h, c, s, True)
    return out.reshape(n, c // (s * s), h * s, w * s)


# ---------------------------------------------------------------------------------------------
# merging layers
# ---------------------------------------------------------------------------------------------


def route(xs: List[Tensor], groups: int = 1, group_id: int = 0) -> Tensor:
    """Darknet ``[route]`` (``route_layer.c forward_route_layer``, §3.10).

    Each input's per-image flat buffer is cut into ``groups`` equal parts
    (``outputs // groups`` values) and part ``group_id`` is kept; the parts are concatenated.
    With 4-D inputs of equal H×W (and channels divisible by ``groups``) this is the channel
    concat of the slices ``[group_id*C/g, (group_id+1)*C/g)``; the result is (N, ΣC/g, H, W).
    Otherwise (flat inputs, mismatched sizes) the result is the flat ``(N, K)`` concatenation,
    or 4-D with the first input's H×W when the sizes allow (Darknet's out_c = ΣC/g).

    >>> a = torch.arange(4.).reshape(1, 4, 1, 1)
    >>> route([a], 2, 1).flatten()
    tensor([2., 3.])
    """
    if len(xs) == 0:
        raise ValueError("route needs at least one input")
    if groups < 1 or group_id < 0 or group_id >= groups:
        raise ValueError(f"route: invalid groups={groups} group_id={group_id}")
    first = xs[0]
    n = first.shape[0]
    channel_path = first.dim() == 4
    if channel_path:
        for t in xs:
            if t.dim() != 4 or t.shape[2] != first.shape[2] or t.shape[3] != first.shape[3]:
                channel_path = False
            elif t.shape[1] % groups != 0:
                channel_path = False
    if channel_path:
        parts: List[Tensor] = []
        for t in xs:
            cg = t.shape[1] // groups
            parts.append(t[:, group_id * cg : (group_id + 1) * cg])
        return torch.cat(parts, dim=1)
    flat_parts: List[Tensor] = []
    total_c = 0
    for t in xs:
        f = t.reshape(n, -1)
        part = f.shape[1] // groups
        flat_parts.append(f[:, group_id * part : (group_id + 1) * part])
        total_c += t.shape[1] if t.dim() == 4 else f.shape[1]
    out = torch.cat(flat_parts, dim=1)
    if first.dim() == 4:
        oc = total_c // groups
        h = first.shape[2]
        w = first.shape[3]
        if oc * h * w == out.shape[1]:
            return out.reshape(n, oc, h, w)
    return out


def normalize_shortcut_weights(weights: Tensor, n_inputs: int, normalization: str) -> Tensor:
    """The inference pre-normalisation of shortcut weights (``network.c fuse_conv_batchnorm``).

    ``weights`` holds ``n_inputs`` blocks (layout ``[input k][channel]``, block length 1 for
    per_feature or C for per_channel); normalisation is across the blocks, per position:

    * ``relu`` / ``avg_relu``: ``w_k <- max(w_k, 0.001) / (0.0001 + Σ max(w, 0.001))``
      (Darknet's inference path uses ``max(w, 0.001)``, not ``relu``);
    * ``softmax``: ``w_k <- exp(w_k - max) / (0.0001 + Σ exp(w - max))``;
    * ``none``: unchanged.

    >>> normalize_shortcut_weights(torch.tensor([1., -1.]), 2, "relu")
    tensor([0.9989, 0.0010])
    """
    if normalization == "none" or normalization == "":
        return weights
    w = weights.reshape(n_inputs, -1)
    if normalization == "relu" or normalization == "avg_relu":
        r = torch.clamp_min(w, 0.001)
        out = r / (torch.sum(r, dim=0, keepdim=True) + 0.0001)
    elif normalization == "softmax":
        e = torch.exp(w - torch.amax(w, dim=0, keepdim=True))
        out = e / (torch.sum(e, dim=0, keepdim=True) + 0.0001)
    else:
        raise ValueError(f"unknown shortcut weights_normalization '{normalization}'")
    return out.reshape(weights.shape)


def shortcut_add(
    prev: Tensor,
    froms: List[Tensor],
    weights: Optional[Tensor] = None,
    weights_type: str = "none",
    normalization: str = "none",
) -> Tensor:
    """Darknet ``[shortcut]`` (AlexeyAB ``blas.c shortcut_multilayer_cpu``, §3.11), no activation.

    Output shape = ``prev``'s.  Per image and flat index j of prev's buffer:
    ``out[j] = w0(j)*prev[j] + Σ_i [j < N_i] * w_{i+1}(j) * from_i[j]`` with N_i the flat size
    of ``from_i`` (prefix add: a from-layer with fewer channels feeds the first channels, a
    larger one contributes only its first C·H·W values).

    ``weights`` (only used when ``weights_type`` is ``per_feature``/``per_layer`` or
    ``per_channel``): n+1 scalars, or (n+1)·C values laid out ``[input k][channel]``; index 0 is
    ``prev``.  ``normalization`` (none / relu / avg_relu / softmax) is applied as Darknet does
    at inference (:func:`normalize_shortcut_weights`).

    >>> prev = torch.ones(1, 2, 1, 1); small = torch.full((1, 1, 1, 1), 5.)
    >>> shortcut_add(prev, [small]).flatten()
    tensor([6., 1.])
    """
    if (weights is None or weights_type in ("none", "")) and prev.dim() == 4 and all(
            f.dim() == 4 and f.shape[0] == prev.shape[0] and f.shape[2:] == prev.shape[2:] for f in froms):
        return _shortcut_add_channel_prefix(prev, froms)
    n = prev.shape[0]
    p = prev.numel() // n if n > 0 else 0
    out = prev.reshape(n, p)
    nin = len(froms) + 1
    wvecs: List[Tensor] = []
    weighted = weights is not None and weights_type != "none" and weights_type != ""
    if weights is not None and weighted:
        w = normalize_shortcut_weights(weights.to(prev.dtype), nin, normalization)
        w = w.reshape(nin, -1).to(prev.device)
        if weights_type == "per_feature" or weights_type == "per_layer":
            if w.shape[1] != 1:
                raise ValueError(f"per_feature shortcut needs {nin} weights, got {w.numel()}")
            for k in range(nin):
                wvecs.append(w[k].expand(p))
        elif weights_type == "per_channel":
            c = w.shape[1]
            if c == 0 or p % c != 0:
                raise ValueError(
                    f"per_channel shortcut weights ({w.numel()}) do not fit the layer"
                )
            hw = p // c
            for k in range(nin):
                wvecs.append(w[k].repeat_interleave(hw))
        else:
            raise ValueError(f"unknown shortcut weights_type '{weights_type}'")
        out = out * wvecs[0]
    for i, f in enumerate(froms):
        ff = f.reshape(n, -1)
        m = min(ff.shape[1], p)
        add = ff[:, :m]
        if weighted:
            add = add * wvecs[i + 1][:m]
        if m == p:
            out = out + add
        else:
            out = torch.cat([out[:, :m] + add, out[:, m:]], dim=1)
    return out.reshape(prev.shape)


def _shortcut_add_channel_prefix(prev: Tensor, froms: List[Tensor]) -> Tensor:
    """:func:`shortcut_add`, unweighted, when every ``from`` has ``prev``'s batch and spatial size.

    A flat prefix of an N x C x H x W image is then whole channels: a from-layer with c channels
    adds to prev's first min(c, C) channels, the rest pass through.  The same adds in the same
    order as the flat form (bit-identical), but as channel slices, so a channels-last ``prev``
    gives a channels-last result: the flat form's ``reshape`` copied it to NCHW, and every later
    layer then paid a layout change (csresnext50's first stage, bf16: 3 ms a shortcut)."""
    out = prev
    c = prev.shape[1]
    for f in froms:
        m = min(f.shape[1], c)
        if m == c:
            out = out + f[:, :c]
        else:
            out = torch.cat([out[:, :m] + f[:, :m], out[:, m:]], 1)
    return out


def shortcut_add_same_shape(
    prev: Tensor,
    froms: List[Tensor],
    weights: Optional[Tensor] = None,
    weights_type: str = "none",
    normalization: str = "none",
) -> Tensor:
    """:func:`shortcut_add` when every ``from`` tensor has ``prev``'s shape (N, C, H, W).

    The prefix add then covers every element, so it is ``w0*prev + sum(w_i*from_i)`` with
    scalar (per_feature) or per-channel weights broadcast: the same float operations in the
    same order as the flat form (bit-identical), without flattening.

    >>> shortcut_add_same_shape(torch.ones(1, 2, 1, 1), [torch.full((1, 2, 1, 1), 5.)]).flatten()
    tensor([6., 6.])
    """
    nin = len(froms) + 1
    if weights is None or weights_type in ("none", ""):
        out = prev
        for f in froms:
            out = out + f
        return out
    w = normalize_shortcut_weights(weights.to(prev.dtype), nin, normalization).reshape(nin, -1).to(prev.device)
    if weights_type in ("per_feature", "per_layer"):
        if not torch.jit.is_tracing() and w.shape[1] != 1:
            raise ValueError(f"per_feature shortcut needs {nin} weights, got {w.numel()}")
        scale = [w[k].reshape(1, 1, 1, 1) for k in range(nin)]
    elif weights_type == "per_channel":
        if not torch.jit.is_tracing() and w.shape[1] != prev.shape[1]:
            raise ValueError(f"per_channel shortcut weights ({w.numel()}) do not fit the layer")
        scale = [w[k].reshape(1, -1, 1, 1) for k in range(nin)]
    else:
        raise ValueError(f"unknown shortcut weights_type '{weights_type}'")
    out = prev * scale[0]
    for i, f in enumerate(froms):
        out = out + f * scale[i + 1]
    return out


def shortcut_legacy(prev: Tensor, src: Tensor, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    """pjreddie ``[shortcut]`` between different shapes (pjreddie ``blas.c shortcut_cpu``).

    Conformance README "Legacy cases".  Output = copy of ``prev`` (c2, h2, w2); with
    ``stride = max(w1//w2, 1)``, ``sample = max(w2//w1, 1)`` (w1 = src width), for
    k < min(c1,c2), j < min(h1,h2), i < min(w1,w2):
    ``out[k, j*sample, i*sample] = alpha*out[...] + beta*src[k, j*stride, i*stride]``.
    Activation is applied by the caller.

    >>> prev = torch.zeros(1, 2, 2, 2); src = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> shortcut_legacy(prev, src)[0, 0]
    tensor([[ 0.,  2.],
            [ 8., 10.]])
    """
    c1, h1, w1 = src.shape[1], src.shape[2], src.shape[3]
    c2, h2, w2 = prev.shape[1], prev.shape[2], prev.shape[3]
    stride = max(w1 // w2, 1)
    sample = max(w2 // w1, 1)
    minc = min(c1, c2)
    minh = min(h1, h2)
    minw = min(w1, w2)
    if (minh - 1) * stride >= h1 or (minw - 1) * stride >= w1:
        raise ValueError(
            f"legacy shortcut: source {h1}x{w1} cannot be sampled with stride {stride} "
            f"for a {h2}x{w2} layer (Darknet would read outside the channel)"
        )
    if (minh - 1) * sample >= h2 or (minw - 1) * sample >= w2:
        raise ValueError(
            f"legacy shortcut: layer {h2}x{w2} cannot be written with sample {sample} "
            f"from a {h1}x{w1} source (Darknet would write outside the channel)"
        )
    a = src[:, :minc, 0 : minh * stride : stride, 0 : minw * stride : stride]
    region = prev[:, :minc, 0 : minh * sample : sample, 0 : minw * sample : sample]
    new = region * alpha + a * beta if alpha != 1.0 or beta != 1.0 else region + a
    out = prev.clone()
    out[:, :minc, 0 : minh * sample : sample, 0 : minw * sample : sample] = new
    return out


def scale_channels(prev: Tensor, from_out: Tensor, scale_wh: bool = False) -> Tensor:
    """Darknet ``[scale_channels]`` (``scale_channels_layer.c``, §3.14), no activation.

    ``scale_wh=False``: prev is 1×1×C, ``out[c, y, x] = prev[c] * from[c, y, x]``.
    ``scale_wh=True``: prev is H×W×1, ``out[c, y, x] = prev[y, x] * from[c, y, x]``.
    Output shape = ``from_out``'s.  (Darknet indexes prev's first C / H·W values per image.)

    >>> scale_channels(torch.tensor([2., 3.]).reshape(1, 2, 1, 1), torch.ones(1, 2, 1, 2))[0, :, 0]
    tensor([[2., 2.],
            [3., 3.]])
    """
    n, c, h, w = from_out.shape
    pf = prev.reshape(n, -1)
    if scale_wh:
        s = pf[:, : h * w].reshape(n, 1, h, w)
    else:
        s = pf[:, :c].reshape(n, c, 1, 1)
    return s * from_out


def sam(prev: Tensor, from_out: Tensor) -> Tensor:
    """Darknet ``[sam]`` (``sam_layer.c forward_sam_layer``, §3.14): ``prev * from`` element-wise.

    Output shape = ``from_out``'s (prev must have the same number of elements).

    >>> sam(torch.full((1, 1, 1, 2), 2.), torch.tensor([[[[1., 3.]]]])).flatten()
    tensor([2., 6.])
    """
    return prev.reshape(from_out.shape) * from_out


# ---------------------------------------------------------------------------------------------
# softmax family / detection heads
# ---------------------------------------------------------------------------------------------


def darknet_softmax(x: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """Darknet's ``blas.c softmax``: ``e_i = exp(x_i/T - max/T)``, ``y_i = e_i / Σe``.

    >>> darknet_softmax(torch.tensor([0., 0.]))
    tensor([0.5000, 0.5000])
    """
    m = torch.amax(x, dim=dim, keepdim=True)
    if temperature != 1.0:
        e = torch.exp(x / temperature - m / temperature)
    else:
        e = torch.exp(x - m)
    return e / torch.sum(e, dim=dim, keepdim=True)


def softmax_groups(x_flat: Tensor, groups: int = 1, temperature: float = 1.0) -> Tensor:
    """Darknet ``[softmax]`` (``softmax_layer.c forward_softmax_layer``, ``softmax_cpu``, §3.8).

    The per-image flat buffer (``x.reshape(N, -1)``) is split into ``groups`` contiguous
    chunks and each chunk gets :func:`darknet_softmax` with ``temperature``.  NOT a per-pixel
    channel softmax unless the input is 1×1×C.  Returns the input's shape.

    >>> softmax_groups(torch.tensor([[0., 0., 1., 1.]]), 2)
    tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    n = x_flat.shape[0]
    k = 1
    for d in static_dims(x_flat):
        k *= d
    if groups < 1 or k % groups != 0:
        raise ValueError(f"softmax: {k} inputs cannot be split into {groups} groups")
    y = darknet_softmax(x_flat.reshape(n, groups, k // groups), -1, temperature)
    return y.reshape(x_flat.shape)


def tree_softmax(
    x_flat: Tensor, groups: List[Tuple[int, int]], temperature: float = 1.0
) -> Tensor:
    """Hierarchical softmax (``softmax_layer.c softmax_tree``): one :func:`darknet_softmax`
    per ``(offset, size)`` group along the LAST dimension; entries outside every group are
    returned unchanged.  Vectorised (scatter), no loop over groups at run time.

    >>> tree_softmax(torch.tensor([0., 0., 5., 1., 1.]), [(0, 2), (3, 2)])
    tensor([0.5000, 0.5000, 5.0000, 0.5000, 0.5000])
    """
    k = x_flat.shape[-1]
    ng = len(groups)
    idx_list = [ng] * k
    for g, (off, size) in enumerate(groups):
        if off < 0 or off + size > k:
            raise ValueError(f"tree group ({off}, {size}) outside {k} values")
        for j in range(off, off + size):
            idx_list[j] = g
    x2 = x_flat.reshape(-1, k)
    rows = x2.shape[0]
    idx1 = torch.tensor(idx_list, dtype=torch.long, device=x_flat.device)
    idx = idx1.unsqueeze(0).expand(rows, k)
    gmax = torch.full((rows, ng + 1), _lowest(x2), dtype=x2.dtype, device=x2.device)
    gmax = gmax.scatter_reduce(1, idx, x2, reduce="amax", include_self=True)
    m = torch.gather(gmax, 1, idx)
    if temperature != 1.0:
        e = torch.exp(x2 / temperature - m / temperature)
    else:
        e = torch.exp(x2 - m)
    gsum = torch.zeros((rows, ng + 1), dtype=x2.dtype, device=x2.device).scatter_add(1, idx, e)
    y = e / torch.gather(gsum, 1, idx)
    covered = (idx1 < ng).unsqueeze(0)
    return torch.where(covered, y, x2).reshape(x_flat.shape)


def yolo_output(x: Tensor, n: int, classes: int, scale_x_y: float = 1.0, new_coords: bool = False) -> Tensor:
    """What Darknet's ``[yolo]`` writes to ``l.output`` (``yolo_layer.c forward_yolo_layer``, §5.1).

    Channels are ``[anchor a][entry e]`` with entries tx, ty, tw, th, obj, classes.
    ``new_coords=False``: logistic on tx, ty, obj and every class; ``new_coords=True``: none.
    Always: ``tx, ty <- t*scale_x_y - 0.5*(scale_x_y - 1)``.

    >>> yolo_output(torch.zeros(1, 6, 1, 1), 1, 1, 2.0).flatten()
    tensor([0.5000, 0.5000, 0.0000, 0.0000, 0.5000, 0.5000])
    """
    e = 5 + classes
    if not torch.jit.is_tracing() and x.shape[1] != n * e:
        raise ValueError(f"[yolo] expects {n}*(5+{classes}) = {n * e} channels, got {x.shape[1]}")
    v = x.unflatten(1, (n, e))  # no shape arithmetic: exporters see one Reshape
    if not torch.jit.is_scripting():  # (TorchScript compiles nothing in this block)
        if not new_coords and not torch.jit.is_tracing() and not (torch.is_grad_enabled() and x.requires_grad):
            return _yolo_output_inference(x, v, scale_x_y)
    xy = v[:, :, 0:2]
    wh = v[:, :, 2:4]
    rest = v[:, :, 4:]
    if not new_coords:
        xy = logistic(xy)
        rest = logistic(rest)
    if scale_x_y != 1.0:
        xy = xy * scale_x_y + _yolo_beta(scale_x_y)
    return torch.cat([xy, wh, rest], dim=2).flatten(1, 2)


def _yolo_output_inference(x: Tensor, v: Tensor, scale_x_y: float) -> Tensor:
    """:func:`yolo_output` (``new_coords=0``) for inference: one logistic pass over the whole map
    with tw, th copied back, instead of logistic on slices and a cat (0.24 ms a head on
    Yolo-Fastest, where the convs are now ~0.1 ms).  Values equal to the sliced path's to one
    ulp (torch's vectorised sigmoid and its scalar tail may round the last bit differently)."""
    y = logistic(x)  # ``v``: x viewed as [anchor][entry]
    out = y.unflatten(1, v.shape[1:3])
    out[:, :, 2:4] = v[:, :, 2:4]
    if scale_x_y != 1.0:
        xy = out[:, :, 0:2]
        xy.copy_(xy * scale_x_y + _yolo_beta(scale_x_y))
    return y


def _yolo_beta(scale_x_y: float) -> Tensor:
    """``-0.5*(scale_x_y - 1)`` rounded to float32 as Darknet computes it: a 0-dim tensor, so
    tracing records a constant (no tensor-to-float conversion) and it does not promote the dtype."""
    return torch.full((), -0.5 * (scale_x_y - 1.0), dtype=torch.float32)


def gaussian_yolo_output(x: Tensor, n: int, classes: int, scale_x_y: float = 1.0) -> Tensor:
    """Darknet ``[Gaussian_yolo]`` output (``gaussian_yolo_layer.c``, §5.2).

    Entries per anchor: x, σx, y, σy, w, σw, h, σh, obj, classes.  Logistic on everything but
    w and h; the scale_x_y affine on x and y only.

    >>> gaussian_yolo_output(torch.zeros(1, 9, 1, 1), 1, 0).flatten()
    tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.0000, 0.5000, 0.0000, 0.5000, 0.5000])
    """
    e = 9 + classes
    if not torch.jit.is_tracing() and x.shape[1] != n * e:
        raise ValueError(f"[Gaussian_yolo] expects {n}*(9+{classes}) = {n * e} channels, got {x.shape[1]}")
    v = x.unflatten(1, (n, e))
    beta = _yolo_beta(scale_x_y)
    px = logistic(v[:, :, 0:1])
    sx = logistic(v[:, :, 1:2])
    py = logistic(v[:, :, 2:3])
    sy = logistic(v[:, :, 3:4])
    if scale_x_y != 1.0:
        px = px * scale_x_y + beta
        py = py * scale_x_y + beta
    pw = v[:, :, 4:5]
    sw = logistic(v[:, :, 5:6])
    ph = v[:, :, 6:7]
    sh = logistic(v[:, :, 7:8])
    rest = logistic(v[:, :, 8:])
    return torch.cat([px, sx, py, sy, pw, sw, ph, sh, rest], dim=2).flatten(1, 2)


def region_output(
    x: Tensor,
    n: int,
    coords: int,
    classes: int,
    softmax: bool,
    tree: Optional[List[Tuple[int, int]]] = None,
) -> Tensor:
    """Darknet ``[region]`` output (``region_layer.c forward_region_layer`` CPU path, §5.3).

    The input ``(N, n*size, h, w)`` (size = coords+1+classes) is flattened into records
    ``[h*w][n][size]``; logistic on entry 4 (objectness); then, if ``tree`` (list of
    ``(offset, size)`` groups, see :func:`read_tree`) the tree softmax, else if ``softmax`` the
    softmax, over the values starting at entry 5 of each record.  (Darknet hard-codes entries
    4 and 5, i.e. assumes coords=4.)  x, y, w, h stay raw.

    Returned as ``(N, n*size, h, w)`` whose memory order equals Darknet's flat buffer: element
    ``[(loc*n + a)*size + k]`` of ``out.reshape(N, -1)`` is record (loc, a), entry k.

    >>> out = region_output(torch.zeros(1, 7, 1, 1), 1, 4, 2, True)
    >>> out.flatten()
    tensor([0.0000, 0.0000, 0.0000, 0.0000, 0.5000, 0.5000, 0.5000])
    """
    size = coords + 1 + classes
    if not torch.jit.is_tracing() and x.shape[1] != n * size:
        raise ValueError(f"[region] expects {n}*{size} = {n * size} channels, got {x.shape[1]}")
    if size < 5:
        raise ValueError("[region] records need at least 5 entries")
    rec = x.flatten(2).transpose(1, 2).unflatten(2, (n, size)).flatten(1, 2)  # (N, h*w*n, size)
    head = rec[:, :, 0:4]
    obj = logistic(rec[:, :, 4:5])
    cls = rec[:, :, 5:]
    if tree is not None:
        cls = tree_softmax(cls, tree, 1.0)
    elif softmax:
        ncls = min(classes, size - 5)  # the record holds size-5 values from entry 5 on
        if ncls == size - 5:
            cls = darknet_softmax(cls, -1, 1.0)
        else:
            cls = torch.cat([darknet_softmax(cls[:, :, :ncls], -1, 1.0), cls[:, :, ncls:]], dim=2)
    out = torch.cat([head, obj, cls], dim=2)
    return out.reshape(x.shape)  # Darknet's flat buffer read back as (N, n*size, h, w)


def detection_output(x_flat: Tensor, side: int, classes: int, softmax: bool) -> Tensor:
    """Darknet ``[detection]`` output (``detection_layer.c forward_detection_layer``, §5.4).

    A copy of the input; with ``softmax`` each of the ``side²`` cells' ``classes`` values (the
    first ``side²·classes`` values of the per-image buffer) get a softmax.  Returns the input's
    shape.

    >>> detection_output(torch.tensor([[0., 0., 7.]]), 1, 2, True)
    tensor([[0.5000, 0.5000, 7.0000]])
    """
    n = x_flat.shape[0]
    if not softmax:
        return x_flat
    f = x_flat.reshape(n, -1)
    k = side * side * classes
    if k > f.shape[1]:
        raise ValueError(f"[detection] needs at least {k} inputs, got {f.shape[1]}")
    cls = darknet_softmax(f[:, :k].reshape(n, side * side, classes), -1, 1.0).reshape(n, k)
    return torch.cat([cls, f[:, k:]], dim=1).reshape(x_flat.shape)


# ---------------------------------------------------------------------------------------------
# minor layers
# ---------------------------------------------------------------------------------------------


def crop_center(x: Tensor, crop_h: int, crop_w: int, noadjust: bool = False) -> Tensor:
    """Darknet ``[crop]`` at inference (``crop_layer.c forward_crop_layer``, §3.15).

    Centre crop at ``((h-ch)//2, (w-cw)//2)``; then ``y = 2x - 1`` unless ``noadjust``.

    >>> crop_center(torch.arange(9.).reshape(1, 1, 3, 3), 1, 1)
    tensor([[[[7.]]]])
    """
    h, w = static_hw(x)
    if crop_h > h or crop_w > w or crop_h < 1 or crop_w < 1:
        raise ValueError(f"[crop] {crop_h}x{crop_w} does not fit a {h}x{w} input")
    dh = (h - crop_h) // 2
    dw = (w - crop_w) // 2
    out = x[:, :, dh : dh + crop_h, dw : dw + crop_w]
    if noadjust:
        return out.clone()
    return out * 2.0 - 1.0


def darknet_lrn(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, kappa: float = 1.0) -> Tensor:
    """Darknet ``[lrn]`` (``normalization_layer.c forward_normalization_layer``, §3.15).

    Literal running-window recurrence over the squared channels (vectorised over N, H, W;
    sequential over channels)::

        norms[0] = kappa + alpha * Σ_{k < size//2} x[k]²
        norms[k] = norms[k-1] - alpha*x[k-(size-1)//2-1]² (if >= 0)
                              + alpha*x[k+size//2]²       (if < C)
        out = x * norms^(-beta)

    Note the window is NOT the textbook one (``norms[0]`` omits channel ``size//2``).

    >>> darknet_lrn(torch.ones(1, 1, 1, 1), 5, 1.0, 1.0, 1.0).flatten()   # 1 * (1 + 1)^-1
    tensor([0.5000])
    """
    c = static_dims(x)[0]
    sq = x * x
    norm0 = torch.full_like(x[:, 0], kappa)
    for k in range(min(size // 2, c)):
        norm0 = norm0 + alpha * sq[:, k]
    norms: List[Tensor] = [norm0]
    cur = norm0
    for k in range(1, c):
        prev = k - (size - 1) // 2 - 1
        nxt = k + size // 2
        if prev >= 0:
            cur = cur + (-alpha) * sq[:, prev]
        if nxt < c:
            cur = cur + alpha * sq[:, nxt]
        norms.append(cur)
    norm = torch.stack(norms, dim=1)
    return torch.pow(norm, -beta) * x


def xnor_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: int,
    dilation: int = 1,
    inverted: bool = False,
) -> Tensor:
    """Darknet XNOR convolution (``forward_convolutional_layer``'s bit-packed branch, taken after
    ``calculate_binary_weights`` when ``stride_x == stride_y``; format §3.1).

    ``S_f = conv(sgn(x), sgn(W_f))`` with ``sgn(v) = +1 if v > 0 else -1`` (so 0 -> -1) and
    padding positions counting as -1 (unset bits); ``out_f = S_f * mean|W_f| + b_f``.
    ``weight`` is whatever Darknet binarised (the raw file weights when BN was not fused),
    groups are always 1.  ``stride`` is ``[sy, sx]``; ``padding`` is the per-side pixel padding
    (Darknet's bit path ignores dilation, so callers reproducing it pass ``dilation=1``).

    ``inverted=True`` reproduces ``binary_align_weights`` when the input has ``c % 32 == 0``
    channels and Darknet's global ``gpu_index >= 0`` (its default 0 in a CPU-only libdarknet
    whose caller never set it to -1): the packed weight bits, alignment padding included, are
    flipped, and the AVX2 GEMM still subtracts ``f = (-K) mod 256`` "padding agreements", giving
    ``out_f = (-S_f - 2 f) * mean|W_f| + b_f`` with ``K = c * size**2``.

    >>> xnor_conv2d(torch.ones(1, 1, 1, 1), torch.full((1, 1, 3, 3), -0.5), None, [1, 1], 1)
    tensor([[[[3.5000]]]])
    """
    one = torch.ones_like(x)
    xb = torch.where(x > 0, one, -one)
    if padding > 0:
        xb = F.pad(xb, [padding, padding, padding, padding], mode="constant", value=-1.0)
    wone = torch.ones_like(weight)
    wb = torch.where(weight > 0, wone, -wone)
    scale = torch.mean(torch.abs(weight), dim=[1, 2, 3])
    out = F.conv2d(xb, wb, None, stride, 0, dilation, 1)
    if inverted:
        k = weight.shape[1] * weight.shape[2] * weight.shape[3]
        out = -out - float(2 * ((256 - k % 256) % 256))
    out = out * scale.reshape(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def antialias_blur(x: Tensor, kind: int, stride_x: int, stride_y: int) -> Tensor:
    """Darknet's anti-aliasing blur sub-layer (``convolutional_layer.c`` /
    ``maxpool_layer.c`` ``antialiasing``, §3.1).

    Depthwise, bias 0, linear: ``kind=1`` → 3×3 ``[[1,2,1],[2,4,2],[1,2,1]]/16`` padding 1;
    ``kind=2`` → 2×2 ``ones/4`` padding 0; strides ``(stride_y, stride_x)``.

    >>> antialias_blur(torch.ones(1, 1, 3, 3), 1, 1, 1)[0, 0, 1, 1]
    tensor(1.)
    """
    c = static_dims(x)[0]  # a constant for exporters (the kernel shape must be static)
    if kind == 1:
        v = torch.ones(3, dtype=x.dtype, device=x.device)
        v[1] = 2.0
        k = v[:, None] * v[None, :] / 16.0  # [[1,2,1],[2,4,2],[1,2,1]]/16, no tensor literal for tracers
        pad = 1
        ks = 3
    elif kind == 2:
        k = torch.full((2, 2), 0.25, dtype=x.dtype, device=x.device)
        pad = 0
        ks = 2
    else:
        raise ValueError(f"antialiasing must be 1 or 2, got {kind}")
    wt = k.reshape(1, 1, ks, ks).expand(c, 1, ks, ks).contiguous()
    return F.conv2d(x, wt, None, [stride_y, stride_x], pad, 1, c)


def normalize_bn(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    scale: Tensor,
    bias: Tensor,
    formula: str = "alexeyab",
) -> Tensor:
    """Darknet inference batch norm per channel (dim 1) (``normalize_cpu``, ``scale_bias``,
    ``add_bias``; §3.2 and conformance "Legacy cases").

    ``alexeyab``: ``(x - m)/sqrt(v + 1e-5) * s + b``;
    ``pjreddie``: ``(x - m)/(sqrt(v) + 1e-6) * s + b``.

    >>> one = torch.ones(1)
    >>> normalize_bn(torch.full((1, 1, 1, 1), 3.), one, 4. * one, one, one, "pjreddie").item()  # doctest: +ELLIPSIS
    1.99999952...
    """
    if formula != "alexeyab" and formula != "pjreddie":
        raise ValueError(f"unknown batch-norm formula '{formula}'")
    c = x.shape[1]
    shape = [1, c] + [1] * (x.dim() - 2)
    denom = bn_denominator(var, formula == "pjreddie").reshape(shape)
    return (x - mean.reshape(shape)) / denom * scale.reshape(shape) + bias.reshape(shape)


def bn_denominator(var: Tensor, pjreddie: bool) -> Tensor:
    """THE batch-norm denominator, in ``var``'s dtype: every BN in darkcfg divides by this.

    AlexeyAB ``normalize_cpu``: ``sqrt(var + .00001)``; pjreddie: ``sqrt(var) + .000001``.
    """
    if pjreddie:
        return torch.sqrt(var) + 0.000001
    return torch.sqrt(var + 0.00001)
