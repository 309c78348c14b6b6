"""Darknet's initialisation of a network built without weights (``make_*_layer``).

Conv / local: ``sqrt(2 / (size*size*c/groups)) * U(-1, 1)``; connected: ``sqrt(2/inputs) * U(-1, 1)``;
deconv: ``N(0, 1) / sqrt(size*size*c)``; biases 0; BN scales 1, rolling mean 0; shortcut weights 1;
implicit ``mean + std * N(0, 1)`` (cfg keys mean=, std=).

One deliberate difference: Darknet leaves the rolling variance at 0 (calloc), which makes an
untrained network's eval-mode output overflow (BN gain 1/sqrt(1e-5) per layer); here it is 1, so
``load(cfg)`` gives finite outputs.  Training uses batch statistics, so gradients are unaffected;
the rolling variance after k steps differs from Darknet's by 0.9^k.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Optional

import torch

if TYPE_CHECKING:
    from ..model import Darknet


@torch.no_grad()
def darknet_init(model: "Darknet", generator: Optional[torch.Generator] = None,
                 layers: Optional[Iterable[int]] = None) -> "Darknet":
    """Initialise every learned tensor of ``model`` as Darknet does (in place); returns the model.

    ``layers``: only these layer indices (those a ``.weights`` file does not cover, see
    :mod:`darkcfg.fast_build`); default all.
    """
    from ..layers.conv import (ConnectedLayer, ConvLayer, DarknetBatchNorm, DeconvLayer, ImplicitLayer,
                               LocalLayer)
    from ..layers.merge import Shortcut

    def uniform_(t: torch.Tensor, scale: float) -> None:
        t.copy_((torch.rand(t.shape, generator=generator, dtype=torch.float32) * 2 - 1) * scale)

    chosen = None if layers is None else set(layers)
    for spec, module in zip(model.graph.layers, model.layers):
        if chosen is not None and spec.index not in chosen:
            continue
        for m in module.modules():
            if isinstance(m, ConvLayer):
                w = m.conv.weight
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]  # size*size*c/groups
                uniform_(w, math.sqrt(2.0 / fan_in))
                if m.conv.bias is not None:
                    m.conv.bias.zero_()
            elif isinstance(m, DeconvLayer):
                w = m.conv.weight
                scale = 1.0 / math.sqrt(w.shape[2] * w.shape[3] * w.shape[0])
                w.copy_(torch.randn(w.shape, generator=generator) * scale)
                if m.conv.bias is not None:
                    m.conv.bias.zero_()
            elif isinstance(m, ConnectedLayer):
                uniform_(m.linear.weight, math.sqrt(2.0 / m.linear.weight.shape[1]))
                m.linear.bias.zero_()
            elif isinstance(m, LocalLayer):
                uniform_(m.weight, math.sqrt(2.0 / m.weight.shape[2]))
                m.bias.zero_()
            elif isinstance(m, Shortcut) and m.weight is not None:
                m.weight.fill_(1.0)
            elif isinstance(m, ImplicitLayer):
                mean = spec.section.get_float("mean", 0.0)
                std = spec.section.get_float("std", 0.2)
                m.weight.copy_(mean + std * torch.randn(m.weight.shape, generator=generator))
            if isinstance(m, DarknetBatchNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return model
