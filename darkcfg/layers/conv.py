"""Modules for layers with learned weights: conv, deconv, connected, local, batchnorm, implicit."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from .. import native
from ..graph import LayerSpec
from . import functional as DF
from .activations import Activation
from .direct_conv import DirectConv, StepCall
from .onednn import FusedConv
from .onednn import available as onednn_available
from .lean import new_conv2d, register_tensors, set_plain
from .registry import BuildContext, WeightedLayer, builder
from .tracing import as_map, static_hw, traced_sizes, untraced
from .winograd import WinogradConv
from .winograd import enabled as winograd_enabled
from .winograd import qualifies as winograd_qualifies


class DarknetBatchNorm(nn.Module):
    """Inference batch norm with either fork's formula.

    AlexeyAB: ``(x - mean) / sqrt(var + 1e-5) * scale + bias`` (= ``BatchNorm2d(eps=1e-5)``).
    pjreddie: ``(x - mean) / (sqrt(var) + 1e-6) * scale + bias`` (the legacy ResNet cfgs).
    Unloaded statistics: scale 1, mean 0, variance 0 (Darknet's calloc; see
    :func:`darkcfg.train.init.darknet_init`, which sets variance 1 so eval outputs stay finite).

    In train mode it normalises with the batch statistics, updates the rolling ones and
    back-propagates with Darknet's formula (:mod:`darkcfg.train.bn`); ``exact_backward``
    switches to autograd's exact gradient, ``momentum`` is the rolling-update weight.
    """

    pjreddie: bool
    exact_backward: bool
    momentum: float
    if TYPE_CHECKING:  # (registered directly in __init__; for the type checker only, not TorchScript)
        weight: nn.Parameter
        bias: nn.Parameter
        running_mean: Tensor
        running_var: Tensor

    def __init__(self, channels: int, formula: str = "alexeyab"):
        super().__init__()
        register_tensors(self, {"weight": torch.ones(channels), "bias": torch.zeros(channels)},
                         {"running_mean": torch.zeros(channels), "running_var": torch.zeros(channels)})
        set_plain(self, pjreddie=formula == "pjreddie", exact_backward=False, momentum=0.1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.train_forward(x, self.bias)
        k, shift = self.gain_shift(self.running_var.dtype)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * k.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)

    @torch.jit.unused
    def train_forward(self, x: Tensor, bias: Optional[Tensor]) -> Tensor:
        """Darknet's training batch norm (batch statistics, rolling update, Darknet backward)."""
        from ..train.bn import batch_norm_train

        return batch_norm_train(x, self.weight, bias, self.running_mean, self.running_var, self.momentum,
                                self.exact_backward, self.pjreddie)

    def gain_shift(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """Per-channel (k, b) with ``BN(x) = k*x + b``, computed in ``dtype`` (float64 is Darknet's
        fuse_conv_batchnorm; :func:`~darkcfg.layers.functional.bn_denominator` is the one formula)."""
        return self.gain_shift_of(self.weight, self.bias, self.running_mean, self.running_var, self.pjreddie, dtype)

    @staticmethod
    def gain_shift_of(scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, pjreddie: bool,
                      dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """:meth:`gain_shift` of the given BN tensors (one BN's, or several concatenated)."""
        k = scale.to(dtype) / DF.bn_denominator(var.to(dtype), pjreddie)
        return k, bias.to(dtype) - mean.to(dtype) * k

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        """The BN trio's file blocks (with ``biases`` first, as conv/deconv/batchnorm store them)."""
        return bn_weight_tensors(self)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, {'pjreddie' if self.pjreddie else 'alexeyab'}"


class ConvLayer(WeightedLayer):
    """``[convolutional]``: conv -> (BN | bias) -> activation [-> antialiasing blur].

    >>> m = ConvLayer(3, 8, 3, (1, 1), 1, 1, 1, bn=True, activation="leaky")
    >>> m([torch.zeros(1, 3, 5, 5)]).shape
    torch.Size([1, 8, 5, 5])
    """

    xnor: bool
    xnor_linear: bool
    xnor_padding: int
    xnor_gpu_index_quirk: bool
    antialiasing: int
    stride_x: int
    stride_y: int
    if TYPE_CHECKING:  # (registered directly in __init__; for the type checker only, not TorchScript)
        conv: nn.Conv2d
        bn: Optional[DarknetBatchNorm]
        act: Activation
        onednn: Optional[FusedConv]  # set by enable_onednn (Darknet.optimize): layers/onednn.py
        direct: Optional[DirectConv]  # small NHWC layers: see layers/direct_conv.py
        winograd: Optional[WinogradConv]  # dense 3x3 stride 1: see layers/winograd.py

    def __init__(self, c: int, filters: int, size: int, stride: tuple[int, int], padding: int, dilation: int,
                 groups: int, bn: bool, activation: str, bn_formula: str = "alexeyab", xnor: bool = False,
                 antialiasing: int = 0, flipped: bool = False, bin_output: bool = False):
        super().__init__()
        sy, sx = stride
        conv_stride = (1, 1) if antialiasing else (sy, sx)
        # (lean: the modules built as their constructors would, minus the per-attribute checks)
        conv = new_conv2d(c, filters, size, conv_stride, padding * dilation, dilation, groups, bias=not bn)
        if not bn and conv.bias is not None:
            with torch.no_grad():
                conv.bias.zero_()
        self._modules.update(conv=conv, act=Activation(activation))
        if bn:
            self._modules["bn"] = DarknetBatchNorm(filters, bn_formula)
        else:
            self.bn = None
        set_plain(
            self, xnor=xnor,
            # Darknet's bit-packed xnor path ignores dilation and pads by ``padding`` pixels.
            xnor_padding=padding,
            # ``bin_output`` (already cleared by the builder for outputs that a route/shortcut/
            # sam/scale_channels reads) makes calculate_binary_weights force a linear activation.
            xnor_linear=bool(xnor and bin_output),
            # libdarknet with its global gpu_index left at 0 (see :func:`xnor_conv2d` ``inverted``).
            xnor_gpu_index_quirk=True,
            antialiasing=antialiasing, stride_x=sx, stride_y=sy, flipped=flipped, onednn_ready=False,
            onednn=None, direct=None, winograd=None)

    def enable_onednn(self) -> bool:
        """Run conv + bias + activation as one primitive at inference (after :meth:`fuse`): the
        direct NHWC kernel for small depthwise/1x1 calls (:mod:`.direct_conv`), Winograd for
        dense 3x3 stride-1 ones where it is cheaper (:mod:`.winograd`), else oneDNN's fused conv
        (:mod:`.onednn`).

        Not for xnor (its own arithmetic), antialiased (a blur follows the activation) or
        unfused BN layers; per-pixel activations stay separate.  Returns whether it was enabled.
        """
        if self.xnor or self.antialiasing or self.bn is not None:
            return False
        conv, kind = self._modules["conv"], self._modules["act"].kind
        direct = DirectConv(conv, kind)
        plans = dict(direct=direct if direct.usable else None,
                     winograd=WinogradConv(conv, kind) if winograd_enabled() and winograd_qualifies(conv)
                     else self.winograd,
                     onednn=FusedConv(conv, kind) if onednn_available() else self.onednn)
        ready = any(plan is not None for plan in plans.values())
        set_plain(self, onednn_ready=ready, **plans)  # (plain objects, not modules: set directly)
        return ready

    @torch.jit.unused
    def bind(self, xs: List[Tensor]) -> Optional[StepCall]:
        """This layer's direct-kernel call for inputs laid out like ``xs``, bound once (a frame
        replay's step, :mod:`darkcfg.replay`), or None where :meth:`forward` would not take it."""
        direct = self.direct
        if not self.onednn_ready or self.xnor or direct is None:
            return None
        call = direct.bind(xs[0])
        if call is None:
            return None
        return lambda xs, outs: call(xs[0], None)

    @torch.jit.unused
    def _onednn_forward(self, x: Tensor) -> Optional[Tensor]:
        if self.direct is not None:
            y = self.direct(x)
            if y is not None:
                return y
        if self.winograd is not None:
            y = self.winograd(x)
            if y is not None:
                return y if self.winograd.fused_activation else self._activate(y)
        plan = self.onednn
        if plan is None or not plan.applies(x):
            return None
        y = plan(x)
        if y is None or plan.fused_activation:
            return y
        return self._activate(y)

    @torch.jit.unused
    def _activate(self, y: Tensor) -> Tensor:
        """The layer's activation after a conv that did not fuse it (mish by the native kernel)."""
        if self.act.kind == "mish":
            kernel = native.mish_kernel()
            if kernel is not None and native.applies(y):
                return kernel(y)
        return self.act.fn(y)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        if self.xnor:
            return self._xnor(x)
        if (self.onednn_ready and not torch.jit.is_scripting() and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling()):
            fused = self._onednn_forward(x)
            if fused is not None:
                return fused
        conv = self.conv
        # Direct functional calls: per-layer module-call overhead is a third of a small net's time.
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.bn is not None:
            y = self.bn(y)
        y = self.act.fn(y)
        if self.antialiasing:
            y = DF.antialias_blur(y, self.antialiasing, self.stride_x, self.stride_y)
        return y

    def _xnor(self, x: Tensor) -> Tensor:
        """``xnor=1``: Darknet's CPU inference after ``load_weights`` + ``calculate_binary_weights``
        WITHOUT ``fuse_conv_batchnorm`` (what the conformance fixtures ran).

        With ``stride_x == stride_y`` ``forward_convolutional_layer`` takes the bit-packed branch:
        ``out_f = conv(sgn(x), sgn(W_f)) * mean|W_f| + biases_f`` (:func:`xnor_conv2d`, padding
        counting as -1, dilation ignored) on the RAW (unfused) weights, then returns early: batch
        norm is skipped entirely (only ``biases``, i.e. BN's beta, is added) and so is the
        antialiasing blur.  Activation: the cfg's, or linear for an effective ``bin_output=1``.
        For ``c % 32 == 0`` inputs the fixtures' libdarknet (global ``gpu_index`` left at 0) had
        its packed weight bits inverted by ``binary_align_weights``: ``xnor_conv2d(inverted=True)``
        reproduces that; set ``xnor_gpu_index_quirk = False`` for the darknet CLI (gpu_index -1).
        With ``stride_x != stride_y`` that branch is not taken and, since ``align_bit_weights`` is
        set, nothing is binarised: an ordinary float conv + BN + activation (linear if
        ``bin_output``).
        """
        if self.stride_x != self.stride_y:
            y = self.conv(x)
            y = self.bn(y) if self.bn is not None else y
            return y if self.xnor_linear else self.act(y)
        w = self.conv.weight
        b = self.bn.bias if self.bn is not None else self.conv.bias
        inverted = self.xnor_gpu_index_quirk and self.conv.in_channels % 32 == 0
        y = DF.xnor_conv2d(x, w.to(x.dtype), b.to(x.dtype), list(self.conv.stride), self.xnor_padding, 1,
                           inverted)
        return y if self.xnor_linear else self.act(y)

    def fused_weight_bias(self) -> tuple[Tensor, Tensor]:
        """Weights and bias with BN folded in, computed in float64 like Darknet."""
        if self.bn is None:
            return self.conv.weight.double().float(), self.conv.bias.float()
        k, b = self.bn.gain_shift()
        return _scale_rows_f64(self.conv.weight.detach(), k.detach()), b.float()

    def fuse(self, gain_shift: Optional[tuple[Tensor, Tensor]] = None) -> None:
        """Fold BN into the conv in place (what Darknet's detector does before inference).

        xnor layers are left alone: their forward never applies BN (see :meth:`_xnor`), so folding
        would change their numbers.  (Darknet's ``detector test``, which fuses BEFORE
        ``calculate_binary_weights``, binarises the fused weights and adds the fused bias instead.)
        ``gain_shift``: this BN's ``gain_shift()``, computed by the caller (:func:`fuse_convs`).
        """
        if self.bn is None or self.xnor:
            return
        k, shift = self.bn.gain_shift() if gain_shift is None else gain_shift
        weight = self.conv.weight
        # Folded into the weight's own storage (the unfused values are gone with the BN anyway):
        # no model-sized allocation, which is most of optimize()'s time on big nets.
        w = _scale_rows_f64(weight.detach(), k.detach(), in_place=True).to(weight.dtype)
        self._take_fused(w, shift.to(weight.dtype))

    def _take_fused(self, w: Tensor, bias: Tensor) -> None:
        """The folded weight ``w`` (the conv's own tensor, scaled in place, or a new one) and the
        shift ``bias`` become the conv's parameters; the BN goes.  Registered directly, without
        ``nn.Module``'s attribute machinery (:func:`fuse_convs` does this for every conv)."""
        params = self._modules["conv"]._parameters
        weight = params["weight"]
        assert weight is not None
        if w.data_ptr() != weight.data_ptr() or w.shape != weight.shape:
            params["weight"] = nn.Parameter(w, requires_grad=weight.requires_grad)
        elif not weight.is_inference():  # written in place by C: tell caches keyed on the version
            increment_version(weight)
        params["bias"] = nn.Parameter(bias, requires_grad=weight.requires_grad)
        self._modules["bn"] = None  # (what ``self.bn = None`` does, without its checks)

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return _conv_tensors(self.conv, self.bn)


def fuse_convs(layers: List[nn.Module]) -> None:
    """``layer.fuse()`` for each layer that has one, the convs' BN gains and shifts computed
    for all of them at once.

    Why: each BN's float64 ``gain_shift`` is eight small tensor ops, ~140 us a layer of
    dispatch (15 ms of yolov4's ``optimize()``).  Natively (:func:`darkcfg.native.bn_fold_many`)
    the gains and shifts of all convs are one loop over their rows and the weights are scaled in
    one pass at memory speed (yolov4: 246 MB read and written in ~10 ms on 2 cores); without
    the library, the BN tensors are concatenated and the gains are eight ops in all, the same
    values element by element (each is computed from its own channel only).  Each layer's
    ``fuse`` then only swaps parameters.
    """
    groups: dict[bool, list[tuple[ConvLayer, DarknetBatchNorm, Tensor]]] = {False: [], True: []}  # by BN formula
    for layer in layers:  # (modules and tensors straight from their dicts: this runs for every conv)
        bn = layer._modules.get("bn") if isinstance(layer, ConvLayer) and not layer.xnor else None
        if isinstance(bn, DarknetBatchNorm):
            groups[bn.pjreddie].append((layer, bn, layer._modules["conv"]._parameters["weight"]))
    for pjreddie, group in groups.items():
        if not group:
            continue
        weights = [weight for _, _, weight in group]
        with torch.no_grad():
            biases = [torch.empty(weight.shape[0], dtype=torch.float32) for weight in weights]
            bn_tensors = [(bn._parameters["weight"], bn._parameters["bias"], bn._buffers["running_mean"],
                           bn._buffers["running_var"]) for _, bn, _ in group]
            if native.bn_fold_many(weights, bn_tensors, biases, pjreddie):  # (float32 CPU tensors only)
                for (layer, _, weight), bias in zip(group, biases):
                    layer._take_fused(weight, bias)
                continue
            k, shift = DarknetBatchNorm.gain_shift_of(*(torch.cat(list(t)) for t in zip(*bn_tensors)),
                                                      pjreddie=pjreddie)
            sizes = [weight.shape[0] for weight in weights]
            for (layer, _, _), layer_k, layer_shift in zip(group, k.split(sizes), shift.split(sizes)):
                layer.fuse((layer_k, layer_shift))
    for layer in layers:  # every other layer that folds (the convs above have no BN left: no-ops); looked up
        fuse = getattr(type(layer), "fuse", None)  # on the class: nn.Module answers a missing one by an exception
        if fuse is not None:
            fuse(layer)


class SharedConvLayer(nn.Module):
    """A conv with ``share_index``: the source's weights and BN with this layer's geometry."""

    def __init__(self, source: ConvLayer, stride: tuple[int, int], padding: int, dilation: int, activation: str):
        super().__init__()
        self.source = source
        self.stride = stride
        self.padding = padding * dilation
        self.dilation = dilation
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        src = self.source
        y = F.conv2d(xs[0], src.conv.weight, src.conv.bias, self.stride, self.padding, self.dilation,
                     src.conv.groups)
        if src.bn is not None:
            y = src.bn(y)
        return self.act(y)


def _scale_rows_f64(w: Tensor, k: Tensor, in_place: bool = False) -> Tensor:
    """``float32(double(w[i]) * k[i])`` per output channel ``i``: Darknet's float64 fold.

    In place on CPU: the native kernel (:func:`darkcfg.native.scale_rows_f64`: one vectorised
    pass, rows over torch's threads; 3x faster than numpy on yolov4) where it is built, else
    numpy's buffered pass; both bit-identical to ``(w.double() * k).float()``, which torch's
    mixed-dtype loop computes ~10x slower (this fold is the bulk of ``optimize()``).
    ``in_place``: write the result over ``w`` (when it is a contiguous CPU float32 tensor).
    """
    if w.device.type != "cpu" or w.dtype != torch.float32 or k.device.type != "cpu":
        return (w.double() * k.view(-1, 1, 1, 1)).float()
    if in_place and w.is_contiguous():
        if native.scale_rows_f64(w, k.to(torch.float64).contiguous()):
            return w
    src = w.contiguous().numpy()
    out = src if in_place and w.is_contiguous() else np.empty(src.shape, dtype=np.float32)
    np.multiply(src, k.reshape(-1, *([1] * (w.dim() - 1))).numpy(), out=out, casting="same_kind")
    return w if out is src and w.is_contiguous() else torch.from_numpy(out)


def bn_weight_tensors(bn: nn.Module) -> list[tuple[str, Tensor]]:
    """The one description of a batch norm's file blocks: beta, gamma, rolling mean and variance.

    It reads the attributes every torch batch norm has, so it also describes a
    ``torch.nn.SyncBatchNorm`` swapped in for distributed training (``train.distributed``).
    """
    return [("biases", bn.bias), ("scales", bn.weight), ("rolling_mean", bn.running_mean),
            ("rolling_variance", bn.running_var)]


def _conv_tensors(conv: nn.Module, bn: "nn.Module | None") -> list[tuple[str, Tensor]]:
    """A conv's file blocks: (BN trio | biases), then weights."""
    head = bn_weight_tensors(bn) if bn is not None else [("biases", conv.bias)]
    return head + [("weights", conv.weight)]


@builder("convolutional")
def build_conv(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    if a.share_index is not None:
        source = ctx.modules[a.share_index]
        assert isinstance(source, ConvLayer)
        return SharedConvLayer(source, (a.stride_y, a.stride_x), a.padding, a.dilation, a.activation)
    return ConvLayer(spec.in_shape[0], a.filters, a.size, (a.stride_y, a.stride_x), a.padding, a.dilation,
                     a.groups, a.batch_normalize, a.activation, ctx.bn_formula, a.xnor, a.antialiasing, a.flipped,
                     a.xnor and a.bin_output and spec.index not in _bin_output_cleared(ctx))


def _bin_output_cleared(ctx: BuildContext) -> frozenset[int]:
    """Layers whose ``use_bin_output`` Darknet's parser clears: every layer a ``[route]`` reads and,
    for ``[shortcut]``/``[scale_channels]``/``[sam]``, the layer before it and its (first) ``from``.

    One pass over the graph, computed once per build (a per-layer scan was quadratic: 16k
    ``bin_output`` layers took 34 s to build).
    """
    cleared = ctx.cache.get("bin_output_cleared")
    if cleared is None:
        found: set[int] = set()
        for other in ctx.graph.layers:
            if other.kind == "route":
                found.update(other.inputs)
            elif other.kind in ("shortcut", "scale_channels", "sam"):
                found.update((other.index - 1,) + tuple(other.inputs[1:2]))
        cleared = ctx.cache["bin_output_cleared"] = frozenset(found)
    return cleared


class DeconvLayer(WeightedLayer):
    """pjreddie's ``[deconvolutional]``: transposed conv -> (BN | bias) -> activation."""

    def __init__(self, c: int, filters: int, size: int, stride: int, padding: int, bn: bool, activation: str,
                 bn_formula: str):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c, filters, size, stride, padding, bias=not bn)
        self.bn = DarknetBatchNorm(filters, bn_formula) if bn else None
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        y = self.conv(xs[0])
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return _conv_tensors(self.conv, self.bn)


@builder("deconvolutional")
def build_deconv(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return DeconvLayer(spec.in_shape[0], a.filters, a.size, a.stride, a.padding, a.batch_normalize, a.activation,
                       ctx.bn_formula)


class ConnectedLayer(WeightedLayer):
    """``[connected]``: y = act(BN(W x) + b) on the flat C,H,W input; BN blocks come after W."""

    def __init__(self, n_in: int, n_out: int, bn: bool, activation: str, bn_formula: str):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=True)
        nn.init.zeros_(self.linear.bias)
        self.bn = DarknetBatchNorm(n_out, bn_formula) if bn else None
        if self.bn is not None:
            self.bn.momentum = 0.05  # forward_connected_layer: rolling = .95*rolling + .05*batch
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0].flatten(1)
        if self.bn is None:
            y = self.linear(x)
        else:
            # Darknet: normalise W x, scale, then add the bias (the bias is not BN's beta here).
            y = F.linear(x, self.linear.weight)
            bn = self.bn
            if bn.training:
                return as_map(self.act(bn.train_forward(y, None) + self.linear.bias))
            y = (y - bn.running_mean) / DF.bn_denominator(bn.running_var, bn.pjreddie) * bn.weight + self.linear.bias
        return as_map(self.act(y))

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        out = [("biases", self.linear.bias), ("weights", self.linear.weight)]
        if self.bn is not None:
            out += bn_weight_tensors(self.bn)[1:]  # the connected layer's own biases replace BN's beta
        return out


@builder("connected")
def build_connected(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return ConnectedLayer(a.inputs, a.output, a.batch_normalize, a.activation, ctx.bn_formula)


class LocalLayer(WeightedLayer):
    """``[local]``: an unshared convolution (one filter bank per output location)."""

    def __init__(self, c: int, out_shape: tuple[int, int, int], size: int, stride: int, pad: int, activation: str):
        super().__init__()
        filters, oh, ow = out_shape
        self.size, self.stride, self.pad = size, stride, pad
        self.out_hw = (oh, ow)
        # Darknet layout: weights[location][filter][c*size*size]; biases[filter][location].
        self.weight = nn.Parameter(torch.zeros(oh * ow, filters, c * size * size))
        self.bias = nn.Parameter(torch.zeros(filters, oh, ow))
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        if torch.jit.is_tracing():
            return self.act(self._traced_forward(x))
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # N x (c*k*k) x L
        y = torch.einsum("lfk,nkl->nfl", self.weight, cols)
        y = y.reshape(x.shape[0], -1, self.out_hw[0], self.out_hw[1]) + self.bias
        return self.act(y)

    def _traced_forward(self, x: Tensor) -> Tensor:
        """The same sums with constant shapes and ops every ONNX importer knows (OpenCV included).

        im2col is a grouped convolution with one-hot kernels (output channel ``ci*k*k + ky*k + kx``,
        unfold's order), then a broadcast multiply by the per-location weights and a sum over taps;
        ``F.unfold``/``einsum`` would export shape arithmetic OpenCV cannot run."""
        k = self.size
        with untraced():
            c = int(x.shape[1])
            taps = torch.eye(k * k, dtype=x.dtype, device=x.device).reshape(k * k, 1, k, k).repeat(c, 1, 1, 1)
        cols = F.conv2d(x, taps, None, self.stride, self.pad, 1, c)  # N x (c*k*k) x OH x OW
        oh, ow = self.out_hw
        cols = cols.reshape(-1, 1, c * k * k, oh * ow)
        y = (cols * self.weight.permute(1, 2, 0)).sum(2)  # N x filters x L
        return y.reshape(-1, self.bias.shape[0], oh, ow) + self.bias

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return [("biases", self.bias), ("weights", self.weight)]


@builder("local")
def build_local(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return LocalLayer(spec.in_shape[0], spec.out_shape, a.size, a.stride, a.pad, a.activation)


class BatchnormLayer(WeightedLayer):
    """``[batchnorm]``: a stand-alone inference batch norm."""

    def __init__(self, channels: int, bn_formula: str):
        super().__init__()
        self.bn = DarknetBatchNorm(channels, bn_formula)

    def forward(self, xs: List[Tensor]) -> Tensor:
        return self.bn(xs[0])

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return bn_weight_tensors(self.bn)


@builder("batchnorm")
def build_batchnorm(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return BatchnormLayer(spec.attrs.channels, ctx.bn_formula)


class ImplicitLayer(WeightedLayer):
    """``[implicit]``: a learned constant (filters x atoms x 1), broadcast over the batch."""

    def __init__(self, filters: int, atoms: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(filters, atoms, 1))

    def forward(self, xs: List[Tensor]) -> Tensor:
        n = xs[0].shape[0] if len(xs) > 0 else 1
        return self.weight.unsqueeze(0).expand(n, -1, -1, -1)

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return [("implicit_weights", self.weight)]


@builder("implicit")
def build_implicit(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return ImplicitLayer(spec.attrs.filters, spec.attrs.atoms)


class CrnnLayer(WeightedLayer):
    """``[crnn]`` for one time step from a zero state: ``output(input(x) + self(0))``.

    Darknet keeps the state between calls (a video tracker feature); darkcfg's module
    is stateless and always starts from the zero state, which is what one call of a
    freshly loaded Darknet network computes.  ``shortcut=1`` adds the old (zero) state.
    """

    def __init__(self, c: int, hidden: int, output: int, size: int, stride: int, padding: int, dilation: int,
                 groups: int, bn: bool, activation: str, bn_formula: str):
        super().__init__()

        def conv(cin: int, cout: int) -> ConvLayer:
            return ConvLayer(cin, cout, size, (stride, stride), padding, dilation, groups, bn, activation, bn_formula)

        self.input_layer = conv(c, hidden)
        self.self_layer = conv(hidden, hidden)
        self.output_layer = conv(hidden, output)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = self.input_layer(xs)
        if torch.jit.is_tracing() and not traced_sizes():
            with untraced():  # self(0) does not depend on the input: one constant, not a Conv of constants
                h, w = static_hw(x)
                zero = torch.zeros((1, x.shape[1], h, w), dtype=x.dtype, device=x.device)
                old = self.self_layer([zero])
        else:
            old = self.self_layer([torch.zeros_like(x)])
        state = x + old
        return self.output_layer([state])

    def weight_tensors(self) -> list[tuple[str, Tensor]]:
        return (self.input_layer.weight_tensors() + self.self_layer.weight_tensors()
                + self.output_layer.weight_tensors())


@builder("crnn")
def build_crnn(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return CrnnLayer(spec.in_shape[0], a.hidden, a.output, a.size, a.stride, a.padding, a.dilation, a.groups,
                     a.batch_normalize, a.activation, ctx.bn_formula)
