"""Reduced-precision inference (``Darknet.optimize(dtype=torch.bfloat16)``): which layers convert.

Policy, chosen so detections move as little as possible for almost all of the speed:

* the bulk of the network (convs, pools, routes, shortcuts, activations) runs in ``dtype``,
  its weights converted ONCE here (not re-cast every call as autocast does), NHWC;
* the detection heads and everything that decodes probabilities ([yolo], [Gaussian_yolo],
  [region], [detection], [softmax], [cost], [logistic]) run in float32, and so do the layers
  whose outputs feed them directly (usually the final 1x1 conv of each head: a few per cent of
  the FLOPs, but it is where rounding would reach the box coordinates and class logits);
* every tensor ``forward`` returns is float32;
* layers that share weights (``share_index``) take one precision: float32 if either wants it;
* on the CPU, bf16 is not applied at all to a net built mostly of small depthwise convs whose
  convs darkcfg's float32 direct kernels run (:func:`keeps_float32`): those kernels (with their
  fused blocks and frame replays) exist only in float32, and oneDNN's bf16 convs, each with ~50 us
  of fixed cost a call, are slower there -- Yolo-Fastest-1.1 @320 on 2 AVX512-BF16 cores: 7.4 ms
  a frame in bf16 against 3.0 ms in float32.  The model then says why in ``precision_note``.

The forward loop casts each layer's inputs to that layer's dtype, so a layer that happens to
produce float32 (or a float32 head read back by a [route]) never meets bf16 weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import torch

from .graph import HEAD_KINDS, Graph

if TYPE_CHECKING:
    from .model import Darknet

#: Layer kinds that always run in float32 under a reduced dtype.
FP32_KINDS = frozenset(HEAD_KINDS) | {"softmax", "cost", "logistic"}


def layer_dtypes(graph: Graph, dtype: torch.dtype) -> List[torch.dtype]:
    """Per layer, the dtype it runs in under :data:`FP32_KINDS`' policy (see module docstring)."""
    feeds_fp32 = {j for s in graph.layers if s.kind in FP32_KINDS for j in s.inputs if j >= 0}
    return [torch.float32 if s.kind in FP32_KINDS or s.index in feeds_fp32 else dtype for s in graph.layers]


#: A depthwise-heavy net stays float32 under bf16 on the CPU while its convs average fewer FLOPs
#: than this (:func:`keeps_float32`).  Measured on 2 AVX512-BF16 cores (real weights, each net at
#: its cfg size): at 0.1-10 MFLOPs a conv (yoloface-500k, Yolo-Fastest-1.1(-xl), yolo-fastest-xl-voc,
#: MobileNetV2-YOLOv3-Nano) float32 took 2.4/9.0/8.6/4.8 ms against bf16's 6.9/11.7/10.0/7.8 ms;
#: at 34 MFLOPs a conv (yolo-mobilenetv2-tiny-voc) bf16 won, 9.3 against 10.7 ms.
KEEP_FP32_BELOW_MFLOPS = 20.0


#: CPU flags of bf16 hardware (without either, torch emulates bf16, slower than float32).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bf16() -> Optional[bool]:
    """Whether this CPU computes bf16 in hardware (:data:`BF16_FLAGS`); None where ``/proc/cpuinfo``
    cannot tell (not Linux)."""
    from .native import proc_cpu_flags

    flags = proc_cpu_flags()
    return None if flags is None else bool(BF16_FLAGS & set(flags.split()))


def keeps_float32(model: "Darknet", dtype: torch.dtype) -> Optional[str]:
    """Why ``optimize(dtype=dtype)`` keeps ``model`` in float32 (see the module docstring), or None
    when the policy converts it.  Call after the kernel plans are made (``enable_onednn``)."""
    if dtype != torch.bfloat16 or not model.prefers_channels_last():
        return None
    if any(p.device.type != "cpu" for p in model.parameters()):
        return None
    convs = [(s, m) for s, m in zip(model.graph.layers, model.layers) if s.kind == "convolutional"]
    direct = sum(getattr(m, "direct", None) is not None for _, m in convs)
    mflops = 1e3 * sum(s.bflops for s, _ in convs) / max(1, len(convs))
    if not convs or direct * 2 < len(convs) or mflops >= KEEP_FP32_BELOW_MFLOPS:
        return None
    return (f"kept float32: {direct} of its {len(convs)} convs (averaging {mflops:.1f} MFLOPs) run on darkcfg's "
            "float32 direct kernels, faster on the CPU than oneDNN's bf16 convs at that size")


def convert(model: "Darknet", dtype: torch.dtype) -> "Darknet":
    """Convert ``model``'s layers to the policy's dtypes in place (weights converted once)."""
    dtypes = layer_dtypes(model.graph, dtype)
    modules = list(model.layers)
    for i, layer in enumerate(modules):  # shared weights: one precision for the pair
        source = getattr(layer, "source", None)
        if source is not None:
            j = next(k for k, m in enumerate(modules) if m is source)
            if dtypes[i] != dtypes[j]:
                dtypes[i] = dtypes[j] = torch.float32
    for layer, d in zip(modules, dtypes):
        if d != torch.float32:
            layer.to(d)
    for layer, d in zip(modules, dtypes):  # a shared source converted through its user is put back
        if d == torch.float32:
            layer.float()
    model.layer_dtypes = dtypes
    return model
