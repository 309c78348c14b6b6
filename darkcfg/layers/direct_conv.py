"""Direct NHWC convolutions (and max pools, route copies) for the layers oneDNN runs poorly (CPU inference).

Why: Yolo-Fastest and the MobileNet-style YOLOs are ~85 convolutions of a few MFLOPs each
(depthwise k x k, and 1x1 with 4..256 channels).  oneDNN and ``F.conv2d`` spend ~40-100 us of
fixed cost on each call whatever its size, so these nets ran at ~5-15 GFLOP/s per layer; the
vectorised C kernels of ``csrc/darkcfg_kernels.c`` (:mod:`darkcfg.native`) have no such cost.

When a conv takes this path (:meth:`DirectConv.applies`): CPU float32 NHWC input (the layout
:meth:`Darknet.optimize` picks for such nets) outside autograd and tracing, a depthwise conv
(``groups == channels``, no dilation) or a 1x1 stride-1 dense conv of at most
:data:`MAX_POINTWISE_WEIGHTS` input x output channels, an activation the kernel fuses (linear,
leaky, relu), and at most :data:`MAX_MACS` (depthwise) or :data:`MAX_POINTWISE_MACS` (1x1 with
fewer than :data:`UNCAPPED_POINTWISE_OUT` outputs) multiply-adds in the call; or a net's first conv on the image (:data:`MAX_STEM_CHANNELS` input
channels, NCHW or NHWC, mish too); or a grouped conv of at most :data:`MAX_GROUPED_CHANNELS`
input channels a group (ResNeXt's 32-group 3x3s, where oneDNN ran at 8-22 GMAC/s; any size: the
stem's row code on each block of groups).  The kernels split their rows over torch's own
OpenMP team where torch uses GNU OpenMP (:func:`darkcfg.native.uses_openmp`), else run on the
calling thread.  Float sums run in another order than oneDNN's: rounding only
(tests/test_direct_conv.py bounds it; tests/test_conformance.py runs optimized models against
Darknet's own outputs).  :meth:`DirectConv.with_residual`, :meth:`DirectConv.on_parts`,
:func:`fused_block` and :func:`pool_concat_nhwc` serve :mod:`darkcfg.fusion`; :func:`maxpool_nhwc`
serves ``[maxpool]`` and :func:`concat_nhwc` ``[route]`` on NHWC maps.  ``torch.compile`` never sees
any of it (the callers step aside while it traces).
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import native
from .functional import pool_pads_hw
from .onednn import version

#: Activation -> the kernel's code (the ones it computes exactly as Darknet's ``activate``).
ACTIVATIONS = {"linear": 0, "leaky": 1, "relu": 2}

#: Depthwise calls above this many multiply-adds go to oneDNN, whose blocked convs win on big
#: layers (Yolo-Fastest 1.1 @320, 2 threads: batch 1 15.5 -> 9.3 ms, batch 4 31 -> 27 ms with this cap).
MAX_MACS = 16_000_000

#: 1x1 calls up to this many multiply-adds (and MAX_POINTWISE_WEIGHTS) take the kernel, which
#: since it works in L2-sized pixel chunks beats oneDNN on the dense nets' 1x1 convs on small
#: maps (2 threads, same process: yolov4-tiny's 64->64 @104 1.45x, 256->128 @13 1.7x, 512->255
#: @13 1.2x, 128->128 @52 .. 384->256 @26 1.03-1.1x).  On big maps single layers measured from
#: 0.76x to 1.45x oneDNN from one run to the next (64->64 @104 batch 4, 64->128 @128), so whole
#: models decide the next constant.
MAX_POINTWISE_MACS = 80_000_000

#: ... unless they have at least this many output channels: those take the kernel whatever their
#: size (whole models, same process: csresnext50-panet-spp @512 1.06x -- its 128x128 and 64x64
#: maps' 64..256-channel 1x1s --, yolov4-tiny batch 4 1.02x, yolov4 level; with 32 outputs the
#: kernel lost, 64->32 @304: 0.6x oneDNN, so those keep the cap).
UNCAPPED_POINTWISE_OUT = 64

#: 1x1 convs up to this many input x output channels (bigger ones -- 1024 -> 512: 0.6x -- are
#: GEMMs oneDNN does better).
MAX_POINTWISE_WEIGHTS = 512 * 256

#: Dense convs with at most this many input channels and windows of at most MAX_STEM_TAPS take the
#: stem kernel (a network's first conv, on the RGB image: oneDNN's blocked convs want long sums and
#: ran 3x3x3 ones at ~45 GFLOP/s; a 7x7x3 one, 147 terms, it runs well: csresnext50's, 1.8x faster).
MAX_STEM_CHANNELS = 4
MAX_STEM_TAPS = 9

#: Grouped (not depthwise) convs with at most this many input channels per group take the grouped
#: kernel (csresnext50's 32-group 3x3s, 2 threads: 4 channels @128x128 1.33x oneDNN, 8 @64x64
#: 1.26x, 8 @128x128 stride 2 1.2x; 16 and 32 channels: 0.8-0.95x, oneDNN keeps those).
MAX_GROUPED_CHANNELS = 8
MAX_GROUPED_TAPS = 25


def _super_group(per_group: int) -> int:
    """Output channels the grouped kernel computes together for groups of ``per_group`` outputs:
    whole groups making a multiple of its 8 lanes (2 groups of 4, 1 of 8, 16...), or 0 if none."""
    if per_group % 8 == 0:
        return per_group
    return 8 if per_group > 0 and 8 % per_group == 0 else 0


#: The tallest depthwise window the kernels take (their per-row pointer arrays).
DEPTHWISE_MAX_K = 32

#: The stem kernel's activation codes: the others' plus mish (applied to each output row in cache).
STEM_ACTIVATIONS = {**ACTIVATIONS, "mish": 3}


#: DirectConv kind -> its native function (arguments: x, weights, bias, y, geometry)
_KERNELS = {"depthwise": "darkcfg_dw_nhwc", "pointwise": "darkcfg_pw_nhwc", "stem": "darkcfg_conv_nhwc",
            "grouped": "darkcfg_gconv_nhwc"}

_STRIDES: Dict[Tuple[int, ...], Tuple[int, ...]] = {}

#: A kernel call with its checks done and its arguments fixed but for the tensors' addresses (see
#: :meth:`DirectConv.bind`): ``call(x, residual) -> y``.
Bound = Callable[[Tensor, Optional[Tensor]], Tensor]
#: The same for kernels reading several maps in place: ``call(addresses of the parts) -> y``.
BoundParts = Callable[[Sequence[int]], Tensor]
#: A step of a frame replay (:mod:`darkcfg.replay`): ``call(xs, outs) -> output``, ``xs`` the
#: layer's (or fused chain's) inputs, ``outs`` the frame's outputs so far (a folded shortcut's residual).
StepCall = Callable[[List[Tensor], List[Tensor]], Tensor]


def bind_parts(call: BoundParts, xs: List[Tensor], parts: Sequence[Tensor]) -> StepCall:
    """A step reading ``parts`` -- views of the inputs ``xs`` (a ``[route]``'s channel slices) -- in
    place: their addresses are the inputs' plus the views' offsets, fixed for a layout."""
    offsets = [(k, part.data_ptr() - x.data_ptr()) for k, (x, part) in enumerate(zip(xs, parts))]
    return lambda xs, outs: call([xs[k].data_ptr() + offset for k, offset in offsets])


def nhwc_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The strides of an NHWC (channels-last) tensor of NCHW ``shape``, cached per shape: outputs
    are made with ``torch.empty_strided`` (half the cost of ``empty(memory_format=...)``, per
    layer and frame)."""
    strides = _STRIDES.get(shape)
    if strides is None:
        n, c, h, w = shape
        strides = (h * w * c, 1, w * c, c)
        if len(_STRIDES) < 4096:
            _STRIDES[tuple(shape)] = strides
    return strides


def _inference(t: Tensor) -> bool:
    """A CPU float32 tensor outside autograd and tracing (the stem kernel reads any layout).
    (Runs for every small layer of every frame: the cheapest checks first.)"""
    return (t.dtype == torch.float32 and t.is_cpu and torch._C._get_tracing_state() is None
            and not (torch.is_grad_enabled() and t.requires_grad))


def _inference_nhwc(t: Tensor) -> bool:
    """:func:`_inference` and NHWC: what every other kernel here reads."""
    return _inference(t) and t.is_contiguous(memory_format=torch.channels_last)


class DirectConv:
    """One conv layer's direct-kernel plan: kind, geometry, and the weights re-laid out once.

    Plain object (not a module): the re-laid weights and the per-input-shape geometry are
    caches, never state; the weights are rebuilt when the layer's weight or bias changes (a new
    tensor or an in-place edit, seen through ``_version``).
    """

    def __init__(self, conv: torch.nn.Conv2d, activation: str):
        self.conv = conv
        self.act = ACTIVATIONS.get(activation, -1)
        out_c, in_per_group, kh, kw = conv.weight.shape
        self.kind = ""
        if (conv.groups > 1 and conv.groups == out_c == conv.in_channels and in_per_group == 1
                and tuple(conv.dilation) == (1, 1) and kh <= DEPTHWISE_MAX_K):
            self.kind = "depthwise"
        elif (conv.groups == 1 and (kh, kw) == (1, 1) and tuple(conv.stride) == (1, 1)
              and tuple(conv.padding) == (0, 0) and out_c * in_per_group <= MAX_POINTWISE_WEIGHTS):
            self.kind = "pointwise"
        elif (conv.groups == 1 and in_per_group <= MAX_STEM_CHANNELS and kh * kw <= MAX_STEM_TAPS
              and tuple(conv.dilation) == (1, 1)):
            self.kind = "stem"
            self.act = STEM_ACTIVATIONS.get(activation, -1)
        elif (conv.groups > 1 and in_per_group <= MAX_GROUPED_CHANNELS and tuple(conv.dilation) == (1, 1)
              and _super_group(out_c // conv.groups) and kh * kw <= MAX_GROUPED_TAPS):
            self.kind = "grouped"
        #: grouped: output channels computed together (whole groups filling 8 lanes: _super_group)
        self.group_block = _super_group(out_c // conv.groups) if self.kind == "grouped" else 0
        self.macs_per_output_pixel = kh * kw * in_per_group * out_c
        #: 1x1: output channels rounded up to the kernel's 8-channel strips (weights zero beyond).
        self.padded_out = (out_c + 7) // 8 * 8
        self._packed: Optional[Tuple[Tensor, Tensor]] = None
        self._key: Optional[tuple] = None
        self._source: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None)  # the tensors packed
        self._lib: Optional[ctypes.CDLL] = None  # the native library, found at the first call
        self._shapes: Dict[Tuple[int, ...], Optional[Tuple[Tuple[int, ...], Tensor]]] = {}
        self._uncapped: Dict[Tuple[int, ...], Optional[Tuple[Tuple[int, ...], Tensor]]] = {}  # with_residual's
        #: (block input shape, activation, expanded?) -> (output shape, its strides, geometry) of :func:`fused_block`
        self._fused: Dict[tuple, Optional[Tuple[Tuple[int, ...], Tuple[int, ...], Tensor]]] = {}
        self._split: Dict[tuple, Optional[Tuple[Tuple[int, ...], Tensor]]] = {}  # :meth:`on_parts`' plans

    @property
    def usable(self) -> bool:
        """Whether the layer has a kernel at all (kind and activation); :meth:`applies` decides per call."""
        return bool(self.kind) and self.act >= 0

    def __getstate__(self) -> dict:
        """Copies and pickles leave the caches behind (rebuilt on first use)."""
        return {**self.__dict__, "_packed": None, "_key": None, "_source": (None, None), "_shapes": {},
                "_uncapped": {}, "_fused": {}, "_split": {}, "_lib": None}

    def _library(self) -> Optional[ctypes.CDLL]:
        """The native library, looked up at the first call (None where it cannot be built)."""
        if self._lib is None:
            self._lib = native.library()
        return self._lib

    def applies(self, x: Tensor) -> bool:
        """Whether this call can take the kernel (see the module docstring)."""
        return self._geometry(x) is not None

    def _geometry(self, x: Tensor, uncapped: bool = False) -> Optional[Tuple[Tuple[int, ...], Tensor]]:
        """(output shape, the kernel's int64 geometry array) for this call, or None where the
        kernel does not apply.  Shape-only answers are cached per input shape."""
        w = self.conv._parameters["weight"]  # (no nn.Module lookup: this runs per layer and frame)
        if w is None or w.dtype != torch.float32 or (torch.is_grad_enabled() and w.requires_grad):
            return None
        if self.kind == "stem":  # reads its input through the strides: NCHW (the image) or NHWC
            if not _inference(x):
                return None
            key: Tuple[int, ...] = (*x.shape, *x.stride())
        elif _inference_nhwc(x):
            key = x.shape
        else:
            return None
        cache = self._uncapped if uncapped else self._shapes
        plan = cache.get(key, False)
        if plan is False:
            plan = cache[tuple(key)] = self._plan_shape(tuple(x.shape), tuple(x.stride()), uncapped)
        return plan  # type: ignore[return-value]

    def _plan_shape(self, shape: Tuple[int, ...], strides: Tuple[int, ...],
                    uncapped: bool = False) -> Optional[Tuple[Tuple[int, ...], Tensor]]:
        """(output shape, geometry) for an input of ``shape``, or None.  ``uncapped``: no limit on
        the multiply-adds (a 1x1 conv with a folded residual: see :meth:`with_residual`)."""
        conv = self.conv
        if not self.usable or len(shape) != 4 or shape[1] != conv.in_channels:
            return None
        n, c, h, width = shape
        kh, kw = conv.kernel_size
        sy, sx = conv.stride
        py, px = (int(p) for p in conv.padding)
        oh, ow = (h + 2 * py - kh) // sy + 1, (width + 2 * px - kw) // sx + 1
        if self.kind == "stem":
            if min(oh, ow) <= 0 or min(strides) < 0:
                return None
            geometry = [n, h, width, c, oh, ow, conv.out_channels, self.padded_out, kh, kw, sy, sx, py, px,
                        self.act, 0, *strides]
            return (n, conv.out_channels, oh, ow), torch.tensor(geometry, dtype=torch.int64)
        if self.kind == "grouped":  # super-groups of os_ outputs over cs inputs (darkcfg_gconv_nhwc)
            os_ = self.group_block
            cs = conv.in_channels // conv.groups * (os_ // (conv.out_channels // conv.groups))
            if min(oh, ow) <= 0:
                return None
            geometry = [n, h, width, cs, oh, ow, conv.out_channels, os_, kh, kw, sy, sx, py, px, self.act, 0,
                        *nhwc_strides(shape), conv.out_channels // os_, cs, os_]
            return (n, conv.out_channels, oh, ow), torch.tensor(geometry, dtype=torch.int64)
        if self.kind == "depthwise":
            geometry = [n, h, width, c, oh, ow, kh, kw, sy, sx, py, px, self.act, 0]
        else:  # 1x1, stride 1, no padding: oh, ow = h, width
            geometry = [n * h * width, c, conv.out_channels, self.padded_out, self.act, 0]
        macs = n * oh * ow * self.macs_per_output_pixel
        uncapped = uncapped or (self.kind == "pointwise" and self.padded_out >= UNCAPPED_POINTWISE_OUT)
        if min(oh, ow) <= 0 or (not uncapped and macs > (MAX_POINTWISE_MACS if self.kind == "pointwise" else MAX_MACS)):
            return None
        return (n, conv.out_channels, oh, ow), torch.tensor(geometry, dtype=torch.int64)

    def _weights(self) -> Tuple[Tensor, Tensor]:
        """(weights, bias) in the kernel's layout: depthwise [kh][kw][C]; 1x1 [Ci][Co rounded up
        to 8] with zeros beyond Co (the kernel reads whole 16- and 8-channel strips)."""
        params = self.conv._parameters
        weight, b = params["weight"], params.get("bias")
        assert weight is not None  # a conv always has one (mypy: _parameters values are Optional)
        key = (version(weight), None if b is None else version(b))
        if self._packed is None or self._key != key or self._source[0] is not weight or self._source[1] is not b:
            w = weight.detach()
            out_c = w.shape[0]
            bias = torch.zeros(out_c) if b is None else b.detach().float()
            if self.kind == "depthwise":
                packed = w.reshape(out_c, w.shape[2], w.shape[3]).permute(1, 2, 0).contiguous()
                self._packed = (packed, bias.contiguous())
            elif self.kind == "grouped":  # [super-group][kh][kw][its inputs][its outputs], zero across groups
                per_out, os_ = out_c // self.conv.groups, self.group_block
                joined, supers, cg = os_ // per_out, out_c // os_, w.shape[1]
                wv = w.reshape(supers, joined, per_out, cg, w.shape[2], w.shape[3])
                packed = torch.zeros(supers, w.shape[2], w.shape[3], joined, cg, joined, per_out)
                for g in range(joined):
                    packed[:, :, :, g, :, g, :] = wv[:, g].permute(0, 3, 4, 2, 1)
                self._packed = (packed.contiguous(), bias.contiguous())
            elif self.kind == "stem":  # [kh][kw][C][Co rounded up to 8], zeros beyond Co
                packed = torch.zeros(w.shape[2], w.shape[3], w.shape[1], self.padded_out)
                packed[..., :out_c] = w.permute(2, 3, 1, 0)
                padded_bias = torch.zeros(self.padded_out)
                padded_bias[:out_c] = bias
                self._packed = (packed, padded_bias)
            else:
                padded = self.padded_out
                packed = torch.zeros(w.shape[1], padded)
                packed[:, :out_c] = w.reshape(out_c, -1).t()
                padded_bias = torch.zeros(padded)
                padded_bias[:out_c] = bias
                self._packed = (packed, padded_bias)
            self._key, self._source = key, (weight, b)
        return self._packed

    def __call__(self, x: Tensor) -> Optional[Tensor]:
        """``act(conv(x) + b)`` in NHWC, or None where the kernel does not apply to ``x`` or the
        native library is unavailable (the caller then takes oneDNN or the eager conv)."""
        return self._launch(x, None, self.act)

    def with_residual(self, x: Tensor, residual: Tensor, act: int) -> Optional[Tensor]:
        """``act(conv(x) + b + residual)`` for a linear 1x1 layer: a ``[shortcut]`` folded into the
        conv before it (Darknet computes ``act_s(conv_out + from)``: the same float32 sum and the
        same add, so bit-identical).  None where it does not apply.  No cap on the multiply-adds:
        the shortcut's own pass over three maps costs more than oneDNN's edge on big 1x1 convs
        (csresnext50-panet-spp's 128x128 maps: 7-11 ms per shortcut)."""
        if self.kind != "pointwise" or self.act != 0 or act < 0:
            return None
        return self._launch(x, residual, act)

    def on_parts(self, parts: Sequence[Tensor]) -> Optional[Tensor]:
        """This 1x1 conv on ``torch.cat(parts, 1)`` for two parts, each read in place (a ``[route]``
        read only by this conv: the concatenation is never made).  The same sums in the same order
        as on the concatenated map: bit-identical.  None where the plain call would not take the
        kernel, or the parts are not what :func:`_pixel_strides` takes."""
        call = self.bind_parts(parts)
        return None if call is None else call([x.data_ptr() for x in parts])

    def bind_parts(self, parts: Sequence[Tensor]) -> Optional[BoundParts]:
        """:meth:`on_parts` as a bound call (see :meth:`bind`) for parts laid out like ``parts``."""
        if self.kind != "pointwise" or len(parts) != 2:
            return None
        def make(strides: List[int]) -> Optional[Tuple[Tuple[int, ...], Tensor]]:
            a, b = parts
            whole = self._plan_shape((a.shape[0], a.shape[1] + b.shape[1], a.shape[2], a.shape[3]), ())
            return None if whole is None else (
                whole[0], torch.cat([whole[1], torch.tensor([a.shape[1], *strides], dtype=torch.int64)]))

        plan = _parts_plan(self._split, _part_key(parts), parts, make)
        w = self.conv._parameters["weight"]
        if plan is None or w is None or (torch.is_grad_enabled() and w.requires_grad):
            return None
        lib = self._library()
        if lib is None:
            return None
        out_shape, geometry = plan
        weights, bias = self._weights()
        fn, strides = lib.darkcfg_pw_split_nhwc, nhwc_strides(out_shape)
        wp, bp, gp = weights.data_ptr(), bias.data_ptr(), geometry.data_ptr()

        def call(at: Sequence[int], _keep: tuple = (weights, bias, geometry)) -> Tensor:
            y = torch.empty_strided(out_shape, strides)
            fn(at[0], at[1], wp, bp, y.data_ptr(), gp)
            return y
        return call

    def _launch(self, x: Tensor, residual: Optional[Tensor], act: int) -> Optional[Tensor]:
        call = self.bind(x, residual, act)
        return None if call is None else call(x, residual)

    def bind(self, x: Tensor, residual: Optional[Tensor] = None, act: Optional[int] = None) -> Optional[Bound]:
        """This layer's kernel call for inputs laid out like ``x`` (and ``residual``: a folded
        shortcut, see :meth:`with_residual`), every check done and every argument fixed but the
        tensors' addresses: ``call(x, residual) -> y``; None where the kernel does not apply.

        Every call here goes through it; a frame replay (:mod:`darkcfg.replay`) keeps the call
        for the next frames of that shape, so they skip the checks.  It holds the packed weights
        it was made with: valid while the layer's weight and bias are unchanged.
        """
        act = self.act if act is None else act
        plan = self._geometry(x, uncapped=residual is not None)
        if plan is None:
            return None
        out_shape, geometry = plan
        if residual is not None and (tuple(residual.shape) != out_shape or not _inference_nhwc(residual)):
            return None
        lib = self._library()
        if lib is None:
            return None
        w, b = self._weights()
        strides, keep = nhwc_strides(out_shape), (w, b, geometry)
        wp, bp, gp = w.data_ptr(), b.data_ptr(), geometry.data_ptr()
        if residual is not None:
            fused_residual = lib.darkcfg_pw_residual_nhwc

            def call_residual(x: Tensor, residual: Optional[Tensor], _keep: tuple = keep) -> Tensor:
                assert residual is not None
                y = torch.empty_strided(out_shape, strides)
                fused_residual(x.data_ptr(), wp, bp, residual.data_ptr(), y.data_ptr(), gp, act)
                return y
            return call_residual
        kernel = getattr(lib, _KERNELS[self.kind])

        def call(x: Tensor, residual: Optional[Tensor], _keep: tuple = keep) -> Tensor:
            y = torch.empty_strided(out_shape, strides)
            kernel(x.data_ptr(), wp, bp, y.data_ptr(), gp)
            return y
        return call


def fused_block(expand: Optional[DirectConv], depthwise: DirectConv, pointwise: DirectConv, x: Tensor,
                residual: Optional[Tensor], act: int) -> Optional[Tensor]:
    """``pointwise(depthwise(expand(x)))`` (no ``expand``: ``pointwise(depthwise(x))``), plus
    ``residual`` before the activation ``act``, in one kernel call: the expanded rows and each
    depthwise output row live in per-thread buffers (see :mod:`darkcfg.fusion`; bit-identical to
    the separate kernels).  None where any of the kernels refuses this input (the caller then runs
    the layers one by one)."""
    call = bind_block(expand, depthwise, pointwise, x, residual, act)
    return None if call is None else call(x, residual)


def bind_block(expand: Optional[DirectConv], depthwise: DirectConv, pointwise: DirectConv, x: Tensor,
               residual: Optional[Tensor], act: int) -> Optional[Bound]:
    """:func:`fused_block` as a bound call (see :meth:`DirectConv.bind`) for inputs laid out like
    ``x`` and ``residual``."""
    # (Per block and frame: the cheapest checks first, the shape's plan from a cache.)
    key = (x.shape, act, expand is not None)
    fused = pointwise._fused.get(key, False)
    if fused is False:
        fused = None
        if (depthwise.kind == "depthwise" and pointwise.kind == "pointwise"
                and (expand is None or expand.kind == "pointwise")):
            fused = _block_geometry(expand, depthwise, pointwise, tuple(x.shape), act)
        pointwise._fused[key] = fused
    if fused is None or not _inference_nhwc(x):
        return None
    convs = (depthwise, pointwise) if expand is None else (expand, depthwise, pointwise)
    if torch.is_grad_enabled() and any(c.conv.weight.requires_grad for c in convs):
        return None  # autograd wants the eager convs
    out_shape, out_strides, geometry = fused  # type: ignore[misc]
    if residual is not None and (residual.shape != out_shape or not _inference_nhwc(residual)):
        return None
    lib = pointwise._library()
    if lib is None:
        return None
    we, be = expand._weights() if expand is not None else (None, None)
    wd, bd = depthwise._weights()
    wp, bp = pointwise._weights()
    fn = lib.darkcfg_block_nhwc
    wep, bep = (None, None) if we is None or be is None else (we.data_ptr(), be.data_ptr())
    wdp, bdp, wpp, bpp, gp = wd.data_ptr(), bd.data_ptr(), wp.data_ptr(), bp.data_ptr(), geometry.data_ptr()

    def call(x: Tensor, residual: Optional[Tensor], _keep: tuple = (we, be, wd, bd, wp, bp, geometry)) -> Tensor:
        y = torch.empty_strided(out_shape, out_strides)
        fn(x.data_ptr(), wep, bep, wdp, bdp, wpp, bpp, None if residual is None else residual.data_ptr(),
           y.data_ptr(), gp)
        return y
    return call


def _block_geometry(expand: Optional[DirectConv], depthwise: DirectConv, pointwise: DirectConv,
                    shape: Tuple[int, ...], act: int) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...], Tensor]]:
    """(output shape, its NHWC strides, the block kernel's geometry) for an input of ``shape``, or
    None where one of the three kernels would refuse its part (each checks its own limits)."""
    mid = shape
    if expand is not None:
        planned = expand._plan_shape(shape, ())
        if planned is None:
            return None
        mid = planned[0]
    dw = depthwise._plan_shape(mid, ())
    if dw is None:
        return None
    pw = pointwise._plan_shape(dw[0], ())
    if pw is None:
        return None
    tail = [pointwise.conv.out_channels, pointwise.padded_out, act]
    tail += [expand.conv.in_channels, expand.padded_out, expand.act] if expand is not None else [0, 0, 0]
    return pw[0], nhwc_strides(pw[0]), torch.cat([dw[1], torch.tensor(tail, dtype=torch.int64)])


#: Pools reading more than this many taps go to the separable torch path (a window of k x k
#: taps per output loses to k + k strided maxima once k and the map are large: yolov4's 13x13 SPP).
MAX_POOL_TAPS = 8_000_000

def _pixel_strides(parts: Sequence[Tensor]) -> Optional[List[int]]:
    """Each part's pixel stride (floats), or None unless every part is a CPU float32 image of the
    first's N x H x W whose pixels lie at one fixed stride with their channels adjacent: an NHWC map
    or a channel slice of one (a ``[route]``'s parts), outside autograd and tracing."""
    first = parts[0]
    if first.dim() != 4 or not _inference(first):
        return None
    n, _, h, w = first.shape
    strides = []
    for x in parts:
        s = x.stride()
        if (x.dim() != 4 or x.dtype != torch.float32 or not x.is_cpu or (x.shape[0], x.shape[2], x.shape[3]) != (n, h, w)
                or s[1] != 1 or s[3] < x.shape[1] or s[2] != w * s[3] or (n > 1 and s[0] != h * w * s[3])
                or (x.requires_grad and torch.is_grad_enabled())):
            return None
        strides.append(s[3])
    return strides


def _part_key(parts: Sequence[Tensor]) -> tuple:
    return tuple((x.shape, x.stride(), x.dtype, x.device.type) for x in parts)


def _parts_inference(parts: Sequence[Tensor]) -> bool:
    """What a cached plan still checks per call: no tracing, no autograd through any part."""
    return _inference(parts[0]) and not (torch.is_grad_enabled() and any(x.requires_grad for x in parts))


def _parts_plan(cache: Dict[tuple, Any], key: tuple, parts: Sequence[Tensor],
                make: Callable[[List[int]], Any]) -> Any:
    """The plan cached under ``key`` (``make(pixel strides)`` on a miss; None: refused), or None
    where this call may not run natively (:func:`_pixel_strides`, :func:`_parts_inference`)."""
    plan = cache.get(key)
    if plan is None:
        strides = _pixel_strides(parts)
        plan = None if strides is None else make(strides)
        if plan is not None and len(cache) < 1024:
            cache[key] = plan
        return plan
    return plan if _parts_inference(parts) else None


#: (the parts' key, size, strides, padding) -> (output shape, one geometry array per part)
_POOL_GEOMETRY: Dict[tuple, Tuple[Tuple[int, ...], List[Tensor]]] = {}


def maxpool_nhwc(x: Tensor, size: int, stride_x: int, stride_y: int, padding: int) -> Optional[Tensor]:
    """Darknet's ``[maxpool]`` by the native kernel for a CPU float32 NHWC ``x`` (or a channel slice
    of one) at inference (what :func:`darkcfg.layers.functional.darknet_maxpool` computes: total
    ``padding`` split floor/ceil, ``-FLT_MAX`` start; a NaN input never wins, as in Darknet's
    ``val > max``), or None where it does not apply (the torch path runs).  Yolo-Fastest's SPP
    pools on 48x10x10: ~150 us as strided-slice maxima, a few us here."""
    return pool_concat_nhwc([x], size, stride_x, stride_y, padding)


def pool_concat_nhwc(parts: Sequence[Tensor], size: int, stride_x: int, stride_y: int,
                     padding: int) -> Optional[Tensor]:
    """``maxpool(torch.cat(parts, 1))`` as each part pooled straight into its channels of the output
    (a max pool works channel by channel, so the values are the same): a ``[route]`` read only by a
    ``[maxpool]`` (yolov4-tiny's CSP stages) never makes its concatenation.  None where a part is
    not what :func:`_pixel_strides` takes, or the pool exceeds :data:`MAX_POOL_TAPS`."""
    call = bind_pool_concat(parts, size, stride_x, stride_y, padding)
    return None if call is None else call([x.data_ptr() for x in parts])


def bind_pool_concat(parts: Sequence[Tensor], size: int, stride_x: int, stride_y: int,
                     padding: int) -> Optional[BoundParts]:
    """:func:`pool_concat_nhwc` as a bound call (see :meth:`DirectConv.bind`) for parts laid out like ``parts``."""
    def make(strides: List[int]) -> Optional[Tuple[Tuple[int, ...], List[Tensor]]]:
        n, _, h, w = parts[0].shape
        total = sum(x.shape[1] for x in parts)
        left, right, top, bottom = pool_pads_hw(h, w, size, stride_x, stride_y, padding)
        oh, ow = (h + top + bottom - size) // stride_y + 1, (w + left + right - size) // stride_x + 1
        if min(oh, ow) <= 0 or n * oh * ow * total * size * size > MAX_POOL_TAPS:
            return None
        return (n, total, oh, ow), [torch.tensor([n, h, w, x.shape[1], oh, ow, size, stride_y, stride_x, top, left, 0,
                                                  xs, total], dtype=torch.int64) for x, xs in zip(parts, strides)]

    plan = _parts_plan(_POOL_GEOMETRY, (_part_key(parts), size, stride_x, stride_y, padding), parts, make)
    lib = native.library()
    if plan is None or lib is None:
        return None
    out_shape, geometries = plan
    fn, strides = lib.darkcfg_maxpool_nhwc, nhwc_strides(out_shape)
    runs = [(g.data_ptr(), x.shape[1] * 4) for x, g in zip(parts, geometries)]  # (geometry, bytes of channels)

    def call(at: Sequence[int], _keep: list = geometries) -> Tensor:
        y = torch.empty_strided(out_shape, strides)
        to = y.data_ptr()
        for src, (gp, width) in zip(at, runs):
            fn(src, to, gp)
            to += width
        return y
    return call


#: the parts' key -> (output shape, geometry) of :func:`concat_nhwc`.
_CONCAT_GEOMETRY: Dict[tuple, Tuple[Tuple[int, ...], Tensor]] = {}


def concat_nhwc(parts: Sequence[Tensor]) -> Optional[Tensor]:
    """``torch.cat(parts, 1)`` into a new NHWC map by the native kernel, for the parts
    :func:`_pixel_strides` takes (a ``[route]``'s on NHWC maps), or None (the caller's
    ``torch.cat`` runs).  Why: torch.cat ran NHWC maps at a quarter to two thirds of copy speed."""
    call = bind_concat(parts)
    return None if call is None else call([x.data_ptr() for x in parts])


def bind_concat(parts: Sequence[Tensor]) -> Optional[BoundParts]:
    """:func:`concat_nhwc` as a bound call (see :meth:`DirectConv.bind`) for parts laid out like ``parts``."""
    def make(strides: List[int]) -> Tuple[Tuple[int, ...], Tensor]:
        n, _, h, w = parts[0].shape
        total = sum(x.shape[1] for x in parts)
        runs = [v for x, xs in zip(parts, strides) for v in (x.shape[1], xs)]
        return (n, total, h, w), torch.tensor([len(parts), n * h * w, total, 0, *runs], dtype=torch.int64)

    plan = _parts_plan(_CONCAT_GEOMETRY, _part_key(parts), parts, make)
    lib = native.library()
    if plan is None or lib is None:
        return None
    out_shape, geometry = plan
    fn, strides, gp, count = lib.darkcfg_concat_nhwc, nhwc_strides(out_shape), geometry.data_ptr(), len(parts)
    addresses = ctypes.c_int64 * count

    def call(at: Sequence[int], _keep: Tensor = geometry) -> Tensor:
        y = torch.empty_strided(out_shape, strides)
        fn(addresses(*at), y.data_ptr(), gp)
        return y
    return call
