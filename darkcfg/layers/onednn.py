"""Fused CPU convolution for inference: conv + bias + activation as ONE oneDNN primitive.

Why: after :meth:`Darknet.fuse` a Darknet conv layer is ``act(conv(x) + b)``.  Eager PyTorch
runs that as a convolution and then a separate pass over the whole output for the activation
(a leaky pass costs a fifth of a depthwise conv on Yolo-Fastest), and re-lays the weights out
for oneDNN on every call.  ``torch.ops.mkldnn._convolution_pointwise`` -- the op PyTorch's own
compiler emits for the same pattern -- applies the activation as a oneDNN post-op while the
output is still in cache, and takes weights packed once (:func:`pack`).

Only activations oneDNN computes exactly as Darknet does are fused (:data:`POST_OPS`); others
(mish, ...) run the fused conv with no post-op followed by darkcfg's own activation.  The path
is used only for CPU float tensors outside autograd, tracing and scripting; anything oneDNN
refuses at the first call turns the path off for that layer (the eager path takes over), so
enabling it can never make a model fail.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

#: Darknet activation -> (oneDNN post-op, its scalars, algorithm).  leaky is ``x > 0 ? x : 0.1x``
#: in both; relu6/hardtan are clamps; logistic/tanh/swish agree to float rounding.
POST_OPS: Dict[str, Tuple[str, List[float], str]] = {
    "linear": ("none", [], ""),
    "relu": ("relu", [], ""),
    "leaky": ("leaky_relu", [0.1], ""),
    "logistic": ("sigmoid", [], ""),
    "tanh": ("tanh", [], ""),
    "swish": ("swish", [], ""),
    "relu6": ("hardtanh", [0.0, 6.0], ""),
    "hardtan": ("hardtanh", [-1.0, 1.0], ""),
}


#: Below this many input values the fused op's fixed cost (~50 us a call, against ~10 us for
#: ``F.conv2d``) outweighs what it saves: tiny feature maps take the eager path ...
MIN_INPUT_ELEMENTS = 16384
#: ... unless the layer has at least this many weights: ``F.conv2d`` reorders them into
#: oneDNN's layout on every call, which the fused path does once.
MIN_WEIGHT_ELEMENTS = 32768


def version(t: Tensor) -> int:
    """``t``'s in-place edit counter, which the packed-weight caches key on; -1 for an inference
    tensor (made under ``torch.inference_mode``), which has none: such weights are packed once
    and an in-place edit made inside inference mode is not seen."""
    return -1 if t.is_inference() else t._version


def available() -> bool:
    """True when this torch build has oneDNN and the fused-conv op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv:
    """One conv layer's oneDNN plan: geometry, post-op and (lazily) packed weights.

    Plain object, not a module: the packed weight is an opaque oneDNN tensor that must never
    reach a ``state_dict``.  It is re-packed when the layer's weight changes (a new tensor or
    an in-place edit, seen through ``_version``).
    """

    def __init__(self, conv: torch.nn.Conv2d, activation: str):
        self.conv = conv
        self.post_op = POST_OPS.get(activation, POST_OPS["linear"])
        self.fused_activation = activation in POST_OPS
        self.padding: List[int] = [int(p) for p in conv.padding]  # an int tuple: Darknet pads numerically
        self.stride: List[int] = list(conv.stride)
        self.dilation: List[int] = list(conv.dilation)
        self.groups = conv.groups
        self.enabled = True
        self._packed: Optional[Tensor] = None
        self._packed_key: Optional[Tuple[int, int, torch.dtype]] = None

    def __getstate__(self) -> dict:
        """Copies and pickles (``copy.deepcopy``, ``torch.save(model)``) leave the packed weight
        behind: an opaque oneDNN tensor has no storage to copy; the copy re-packs on first use."""
        return {**self.__dict__, "_packed": None, "_packed_key": None}

    def applies(self, x: Tensor) -> bool:
        """Whether this call can take the fused path (inference on CPU, matching float dtype)."""
        w = self.conv.weight
        return (self.enabled and (x.numel() >= MIN_INPUT_ELEMENTS or w.numel() >= MIN_WEIGHT_ELEMENTS)
                and x.device.type == "cpu" and x.dtype == w.dtype and x.dim() == 4
                and x.dtype in (torch.float32, torch.bfloat16) and not torch.jit.is_tracing()
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))

    def weight(self, x: Tensor) -> Tensor:
        """The weight in oneDNN's blocked layout, packed at the first call (and after any change)."""
        w = self.conv.weight
        key = (w.data_ptr(), version(w), w.dtype)
        if self._packed is None or key != self._packed_key:
            self._packed = pack(w.detach(), self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed_key = key
        return self._packed

    def __call__(self, x: Tensor) -> Optional[Tensor]:
        """``act(conv(x) + b)`` fused, or None if oneDNN refused (the path is then off for good)."""
        attr, scalars, algorithm = self.post_op
        bias = self.conv.bias
        try:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight(x), None if bias is None else bias.detach(), self.padding, self.stride,
                self.dilation, self.groups, attr, scalars, algorithm)
        except RuntimeError:
            self.enabled = False
            self._packed = None
            return None


def pack(weight: Tensor, padding: List[int], stride: List[int], dilation: List[int], groups: int,
         input_size: List[int]) -> Tensor:
    """``weight`` reordered once into the blocked layout oneDNN's conv wants for ``input_size``.

    Other input sizes still work with it (oneDNN only picks its algorithm from the size).
    Falls back to the plain weight where this torch lacks the reorder op.
    """
    reorder = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)
    if reorder is None:
        return weight
    try:
        return reorder(weight.contiguous(), padding, stride, dilation, groups, input_size)
    except RuntimeError:
        return weight
