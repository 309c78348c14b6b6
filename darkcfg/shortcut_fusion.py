"""Fold a ``[shortcut]`` into the 1x1 linear conv before it, for CPU inference (``optimize()``).

Why: the inverted-residual blocks of Yolo-Fastest and the MobileNet YOLOs end in
``[convolutional] 1x1 linear -> [dropout] -> [shortcut] from=-N``: the conv writes its output, the
dropout (an identity at inference) passes it on, and the shortcut reads it back with the ``from``
map to write a third tensor.  The direct 1x1 kernel can add the residual while its sums are
still in registers (:meth:`darkcfg.layers.direct_conv.DirectConv.with_residual`), so the block's
conv, dropout and shortcut become one pass: Darknet's ``act_s(conv + from)``, rounding aside.

Only where nothing else can tell: the conv's (and dropouts') outputs are read by the chain alone
and are not network outputs, the shortcut has no weights, two inputs of equal shapes and an
activation the kernel applies; and only in ``forward`` (``layer_outputs`` returns every layer as
Darknet computes it), outside training, autograd and tracing.  A call the kernel refuses runs the
layers one by one as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from torch import Tensor

from .layers.conv import ConvLayer
from .layers.direct_conv import ACTIVATIONS
from .layers.merge import Shortcut
from .layers.misc import Dropout

if TYPE_CHECKING:
    from .model import Darknet

#: conv index -> (shortcut index, ``from`` index, the shortcut's activation code for the kernel)
Fusions = Dict[int, Tuple[int, int, int]]


def plan(model: "Darknet") -> Fusions:
    """The foldable conv -> dropout* -> shortcut chains of ``model`` (after ``enable_onednn``)."""
    readers: Dict[int, List[int]] = {}
    for i, inputs in enumerate(model.layer_inputs):
        for j in inputs:
            readers.setdefault(j, []).append(i)
    outputs = set(model.output_layers)
    fusions: Fusions = {}
    for s, layer in enumerate(model.layers):
        if not isinstance(layer, Shortcut) or layer.legacy or layer.weight is not None or not layer.equal_shapes:
            continue
        inputs = model.layer_inputs[s]
        act = ACTIVATIONS.get(layer.act.kind, -1)
        if len(inputs) != 2 or act < 0:
            continue
        prev, src = inputs
        if prev != s - 1:
            continue  # the chain is the layers right before the shortcut
        conv_index = prev
        while isinstance(model.layers[conv_index], Dropout) and model.layer_inputs[conv_index] == [conv_index - 1]:
            conv_index -= 1
        conv = model.layers[conv_index]
        direct = conv.direct if isinstance(conv, ConvLayer) else None
        if direct is None or direct.kind != "pointwise" or direct.act != 0 or not 0 <= src < conv_index:
            continue  # a linear 1x1 with a kernel, and a residual computed before it
        if any(readers.get(k, []) != [k + 1] or k in outputs for k in range(conv_index, s)):
            continue  # someone else reads the conv or a dropout: its own output must exist
        fusions[conv_index] = (s, src, act)
    return fusions


def run(model: "Darknet", conv: int, x: Tensor, outs: List[Tensor]) -> Optional[Tensor]:
    """Layers ``conv..shortcut`` of ``model.shortcut_fusions[conv]`` as one kernel call on the
    conv's input ``x`` and the residual in ``outs``, or None (the kernel refused this call:
    the caller runs the layers one by one)."""
    _, source, act = model.shortcut_fusions[conv]
    layer = model.layers[conv]
    direct = layer.direct if isinstance(layer, ConvLayer) else None
    return None if direct is None else direct.with_residual(x, outs[source], act)
