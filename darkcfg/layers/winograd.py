"""Winograd convolution for dense 3x3 stride-1 layers (CPU float32 NHWC inference).

Why: the 3x3 stride-1 convolutions are most of the arithmetic of the dense Darknet nets
(yolov4-tiny: 45 of its ~60 ms on 2 cores), and oneDNN's direct convolution already runs them
near the machine's peak (~145 GFLOP/s here): only doing fewer multiplications is faster.
Winograd's F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input tile with
(m+2)^2 multiplications per channel pair instead of 9 m^2: 4x fewer for F(4x4), 2.25x for
F(2x2).  The multiplications become (m+2)^2 independent GEMMs, between two cheap linear
transforms, all in C (``csrc/darkcfg_kernels.c``: ``darkcfg_wino_in_nhwc``,
``darkcfg_bgemm_packed``, ``darkcfg_wino_out_nhwc``; the output one also adds the bias and
applies a fused leaky/relu/mish).  The weights are transformed once, in float64, and packed in
16-column strips so each GEMM streams them in order: ``torch.bmm`` (MKL) re-packs them on every
call, which on small maps -- 49 rows per product for a 26x26 map -- cost as much as the
products (the packed kernel: 48-74 GMAC/s on 2 cores where ``torch.bmm`` gave 37-54).

Accuracy: the transforms add float32 roundings.  Measured against a float64 convolution, the
largest error relative to the output's scale is ~5e-6 for F(4x4) and ~4e-7 for F(2x2) (oneDNN:
~1-2e-6), far inside the conformance tolerance; tests/test_winograd.py bounds it and
``darkcfg conformance --optimized`` checks whole models against Darknet.

Which variant (:func:`choose`): a cost model in units of the machine's GEMM speed -- the
multiply-adds of each variant plus the weight bytes each must stream, per call -- picks F(4x4),
F(2x2) or none (oneDNN's direct conv).  F(4x4) wins on large maps; on 13x13 maps with 512
channels its 36 transformed weight matrices (38 MB) cost more to read than it saves, and
F(2x2) wins; on a 1x1 map, the direct conv.  Tiles are processed in chunks whose transformed input and
output fit in a few MB, so they stay in cache between the three passes.

Used by :meth:`darkcfg.layers.conv.ConvLayer.enable_onednn` (so by :meth:`Darknet.optimize`)
where the library builds; ``DARKCFG_WINOGRAD=0`` turns it off (oneDNN runs those layers).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import native
from .direct_conv import ACTIVATIONS, _inference_nhwc, nhwc_strides
from .onednn import version

#: The filter transforms G (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"),
#: applied in float64 once per weight: U = G w G^T.  The input (B^T) and output (A^T) transforms
#: live in the C kernels.
_G = {
    4: [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    2: [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
}

#: A chunk of tiles holds at most this many bytes of transformed input + GEMM output (or the
#: transformed weights' size, if larger: each chunk re-reads them).
CHUNK_BYTES = 2 << 20

#: Cost model (:func:`choose`): a byte of weights streamed per call costs as much as this many
#: multiply-adds, and the two transforms cost this many per transformed value.  Fitted to
#: per-layer timings (4 round-robin rounds, fastest of each) of the 29 distinct 3x3 stride-1
#: shapes of yolov4-tiny @416 (batch 1 and 4), yolov4 @608 and csresnext50-panet-spp @512 on 2
#: AVX2 cores with the packed GEMM: the pick is the fastest of the three on every one (so is any
#: BYTE_COST from 3 to 5.5; 12, fitted to torch.bmm's per-call packing, now took F(2x2) on the
#: 19x19 512-channel layers where F(4x4) is 21% faster).
BYTE_COST = 4.0
TRANSFORM_COST = 12.0

#: Activation -> the output transform's code: the direct kernels' (linear, leaky, relu) and mish.
ACTIVATION_CODES = {**ACTIVATIONS, "mish": 3}

#: Smallest channel counts worth it (below, oneDNN's direct conv is as fast; the kernels need
#: multiples of 8).
MIN_CHANNELS = 16


def enabled() -> bool:
    """False where ``DARKCFG_WINOGRAD=0``."""
    return os.environ.get("DARKCFG_WINOGRAD", "1") != "0"


def qualifies(conv: torch.nn.Conv2d) -> bool:
    """A dense 3x3 stride-1 conv with padding 1, no dilation, channels multiples of 8."""
    out_c, in_c, kh, kw = conv.weight.shape
    return (conv.groups == 1 and (kh, kw) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(int(p) for p in conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and in_c % 8 == 0 and out_c % 8 == 0 and min(in_c, out_c) >= MIN_CHANNELS)


def _chunk_bytes(weight_bytes: int) -> int:
    """Bytes of transformed tiles per chunk: :data:`CHUNK_BYTES`, or the transformed weights'
    size where larger (each chunk streams them once; smaller chunks would multiply that)."""
    return max(CHUNK_BYTES, weight_bytes)


def choose(n: int, h: int, w: int, c: int, k: int) -> int:
    """The tile size m (4 or 2) for an n x c x h x w input and k outputs, or 0 for the direct conv.

    Cost of each in multiply-adds: the GEMMs, the weights each streams (a direct conv's 9 c k,
    Winograd's (m+2)^2 c k per chunk of tiles), and the transforms."""
    direct = n * h * w * c * k * 9 + BYTE_COST * 4 * 9 * c * k
    best, best_m = direct, 0
    for m in (4, 2):
        a2 = (m + 2) ** 2
        tiles = n * ((h + m - 1) // m) * ((w + m - 1) // m)
        weight_bytes = 4 * a2 * c * k
        chunks = -(-tiles * a2 * (c + k) * 4 // _chunk_bytes(weight_bytes))
        cost = (a2 * tiles * c * k + BYTE_COST * weight_bytes * chunks
                + TRANSFORM_COST * a2 * tiles * (c + k))
        if cost < best:
            best, best_m = cost, m
    return best_m


@dataclass(frozen=True)
class _ShapePlan:
    """One input shape's schedule: the tile size, output shape, and per chunk of tile rows the
    geometry arrays of the two transforms (built once; a call only passes pointers)."""

    m: int
    out_shape: Tuple[int, int, int, int]
    chunks: List[Tuple[int, Tensor, Tensor, Tensor]]  # (tiles in the chunk, geometries: input, output, GEMM)
    scratch: int  # floats of transformed input + output the largest chunk needs


_local = threading.local()


def _scratch(floats: int) -> Tensor:
    """A per-thread float buffer of at least ``floats`` values, reused across layers and calls
    (the transformed tiles never outlive a call; fresh multi-MB buffers would fault in page by
    page on every layer)."""
    buf: Optional[Tensor] = getattr(_local, "buffer", None)
    if buf is None or buf.numel() < floats:
        # A normal tensor even when the first call runs under torch.inference_mode: an inference
        # tensor could not be written by a later call made outside it (no_grad).
        with torch.inference_mode(False):
            buf = torch.empty(floats)
        _local.buffer = buf
    return buf


def pack(u: Tensor) -> Tensor:
    """[E, C, K] product weights in ``darkcfg_bgemm_packed``'s layout, [E, C * K]: per e, the
    columns in strips of 16 (then one of 8 where K % 16 == 8), each strip a contiguous [C][16]
    block, so a product streams its weights in order (see the C kernel)."""
    e, c, k = u.shape
    k16 = k // 16 * 16
    parts = [u[:, :, :k16].reshape(e, c, k16 // 16, 16).permute(0, 2, 1, 3).reshape(e, c * k16)]
    if k16 < k:
        parts.append(u[:, :, k16:].reshape(e, c * (k - k16)))
    with torch.inference_mode(False):  # a normal tensor whatever the caller's mode (see _scratch)
        return torch.cat(parts, 1).contiguous()


class WinogradConv:
    """One conv layer's Winograd plan: transformed weights per tile size and a schedule per
    input shape.  Plain object (caches, never state): the weights are re-transformed when the
    layer's weight or bias changes (a new tensor, or an in-place edit seen through ``_version``).
    """

    def __init__(self, conv: torch.nn.Conv2d, activation: str):
        self.conv = conv
        self.act = ACTIVATION_CODES.get(activation, 0)
        #: True when the kernel applies the layer's activation (else the caller does, on the result).
        self.fused_activation = activation in ACTIVATION_CODES
        self._shapes: Dict[Tuple[int, ...], Optional[_ShapePlan]] = {}
        self._weights: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._key: Optional[tuple] = None
        self._lib: Optional[ctypes.CDLL] = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the caches behind (rebuilt on first use)."""
        return {**self.__dict__, "_shapes": {}, "_weights": {}, "_key": None, "_lib": None}

    def _library(self) -> Optional[ctypes.CDLL]:
        """The native library, looked up once per plan (None where it cannot be built)."""
        if self._lib is None:
            self._lib = native.library()
        return self._lib

    def _plan(self, x: Tensor) -> Optional[_ShapePlan]:
        key = (*x.shape, *x.stride())
        plan = self._shapes.get(key, False)
        if plan is False:
            plan = self._shapes[key] = self._plan_shape(tuple(x.shape), tuple(x.stride()))
        return plan  # type: ignore[return-value]

    def _plan_shape(self, shape: Tuple[int, ...], strides: Tuple[int, ...]) -> Optional[_ShapePlan]:
        if len(shape) != 4 or shape[1] != self.conv.in_channels:
            return None
        n, c, h, w = shape
        sn, sc, sh, sw = strides
        # Channels contiguous, pixels, rows and images apart without overlap: an NHWC tensor or
        # a channel slice of one (a [route] group: read in place, no copy).
        # (A dimension of size 1 may carry any stride: it is never stepped along.)
        sw = sw if w > 1 else c
        sh = sh if h > 1 else w * sw
        sn = sn if n > 1 else h * sh
        if not (sc == 1 and sw >= c and sh >= w * sw and sn >= h * sh):
            return None
        k = self.conv.out_channels
        m = choose(n, h, w, c, k)
        if m == 0:
            return None
        a2 = (m + 2) ** 2
        th, tw = (h + m - 1) // m, (w + m - 1) // m
        weight_bytes = 4 * a2 * c * k
        rows = max(1, min(n * th, _chunk_bytes(weight_bytes) // (4 * a2 * tw * (c + k))))
        chunks = []
        for row0 in range(0, n * th, rows):
            count = min(rows, n * th - row0)
            geometry_in = torch.tensor([n, h, w, c, th, tw, m, 1, 0, row0, count, sn, sh, sw], dtype=torch.int64)
            geometry_out = torch.tensor([n, h, w, k, th, tw, m, self.act, 0, row0, count], dtype=torch.int64)
            geometry_gemm = torch.tensor([a2, count * tw, c, k, 0], dtype=torch.int64)
            chunks.append((count * tw, geometry_in, geometry_out, geometry_gemm))
        return _ShapePlan(m, (n, k, h, w), chunks, a2 * rows * tw * (c + k))

    def transformed(self, m: int, packed: bool = False) -> Tuple[Tensor, Tensor]:
        """(U, bias): U[e] = (G w G^T)[e] as a [(m+2)^2, C, K] float32 tensor, transformed in
        float64 from the layer's current weights (not cached: see :meth:`weights`).  ``packed``:
        in the batched GEMM's layout instead (:func:`pack`; the C transform writes it directly)."""
        params = self.conv._parameters
        weight, b = params["weight"], params.get("bias")
        assert weight is not None
        g = torch.tensor(_G[m], dtype=torch.float64)
        w = weight.detach()
        k, c, a = w.shape[0], w.shape[1], m + 2
        lib = self._library()
        if lib is not None and w.dtype == torch.float32 and w.is_cpu:
            w = w.contiguous()
            with torch.inference_mode(False):
                u = torch.empty(a * a, c * k) if packed else torch.empty(a * a, c, k)
            lib.darkcfg_wino_weights(w.data_ptr(), u.data_ptr(), g.data_ptr(), k, c, a, 0, int(packed))
        else:  # the same float64 products, by torch (slower: ~0.4 s per 4.7M weights)
            u = torch.einsum("ij,kcjl,ml->imck", g, w.double(), g).reshape(a * a, c, k).float().contiguous()
            u = pack(u) if packed else u
        bias = torch.zeros(k) if b is None else b.detach().float()
        return u, bias.contiguous()

    def weights(self, m: int) -> Tuple[Tensor, Tensor]:
        """(packed U, bias), cached until the layer's weight or bias changes: :meth:`transformed`
        in the batched GEMM's layout (:func:`pack`)."""
        params = self.conv._parameters
        weight, b = params["weight"], params.get("bias")
        assert weight is not None
        key = (id(weight), version(weight), None if b is None else (id(b), version(b)))
        if key != self._key:
            self._weights, self._key = {}, key
        cached = self._weights.get(m)
        if cached is None:
            cached = self._weights[m] = self.transformed(m, packed=True)
        return cached

    def __call__(self, x: Tensor, residual: Optional[Tensor] = None) -> Optional[Tensor]:
        """``conv(x) + b`` (with the activation if :attr:`fused_activation`) in NHWC, or None
        where this call does not qualify (the caller then runs oneDNN).  ``residual``: an NHWC map
        of the output's shape added after the activation (a linear ``[shortcut]`` folded into the
        conv: :mod:`darkcfg.fusion`); only with a fused activation."""
        w = self.conv._parameters["weight"]
        if (w is None or x.dtype != torch.float32 or w.dtype != torch.float32 or not x.is_cpu
                or torch._C._get_tracing_state() is not None
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return None
        plan = self._plan(x)
        if plan is None and x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
            # An NCHW input (the first convs of a dense net on a small image, a layer that wrote
            # NCHW): one reorder, as oneDNN would do inside; the NHWC output keeps the rest NHWC.
            x = x.contiguous(memory_format=torch.channels_last)
            plan = self._plan(x)
        if plan is None:
            return None
        if residual is not None and (not self.fused_activation or tuple(residual.shape) != plan.out_shape
                                     or not _inference_nhwc(residual)):
            return None
        lib = self._library()
        if lib is None:
            return None
        u, bias = self.weights(plan.m)
        a2 = (plan.m + 2) ** 2
        c, k = self.conv.in_channels, self.conv.out_channels
        y = torch.empty_strided(plan.out_shape, nhwc_strides(plan.out_shape))
        buf = _scratch(plan.scratch)
        for tiles, geometry_in, geometry_out, geometry_gemm in plan.chunks:
            v = buf[:a2 * tiles * c]
            out = buf[a2 * tiles * c:a2 * tiles * (c + k)]
            lib.darkcfg_wino_in_nhwc(x.data_ptr(), v.data_ptr(), geometry_in.data_ptr())
            lib.darkcfg_bgemm_packed(v.data_ptr(), u.data_ptr(), out.data_ptr(), geometry_gemm.data_ptr())
            lib.darkcfg_wino_out_nhwc(out.data_ptr(), bias.data_ptr(), None if residual is None else residual.data_ptr(),
                                      y.data_ptr(), geometry_out.data_ptr())
        return y
