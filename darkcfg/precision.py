"""Reduced-precision inference (``Darknet.optimize(dtype=torch.bfloat16)``): which layers convert.

Policy, chosen so detections move as little as possible for almost all of the speed:

* the bulk of the network (convs, pools, routes, shortcuts, activations) runs in ``dtype``,
  its weights converted ONCE here (not re-cast every call as autocast does), NHWC;
* the detection heads and everything that decodes probabilities ([yolo], [Gaussian_yolo],
  [region], [detection], [softmax], [cost], [logistic]) run in float32, and so do the layers
  whose outputs feed them directly (usually the final 1x1 conv of each head: a few per cent of
  the FLOPs, but it is where rounding would reach the box coordinates and class logits);
* every tensor ``forward`` returns is float32;
* layers that share weights (``share_index``) take one precision: float32 if either wants it.

The forward loop casts each layer's inputs to that layer's dtype, so a layer that happens to
produce float32 (or a float32 head read back by a [route]) never meets bf16 weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

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
