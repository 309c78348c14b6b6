"""Darknet's SGD (``update_convolutional_layer`` and friends) as a ``torch.optim.Optimizer``.

Darknet keeps one buffer per tensor, ``*_updates``, which the backward fills with
``-dLoss/dW`` summed over every image of the batch (all subdivisions).  The update is::

    updates -= decay * batch * W          (weights only: biases and BN scales get no decay)
    W       += lr / batch * updates
    updates *= momentum                   (the buffer IS the momentum)

so decay is scaled by the batch and the rate divided by it.  Here the buffer is kept
with Darknet's sign and meaning (``state["updates"]``), and ``p.grad`` is expected to
hold ``dLoss/dW`` summed over the batch - what ``Darknet.loss(...).backward()``
leaves, accumulated over subdivisions.  ``lr`` and ``batch`` are per step arguments,
because Darknet's rate changes every iteration and its ``batch`` is the full batch.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn


class DarknetSGD(torch.optim.Optimizer):
    """SGD with Darknet's momentum buffer, batch-scaled decay and ``lr / batch`` step.

    Param groups carry ``decay`` (0 for biases/scales); ``momentum`` is shared.  Call
    ``step(lr=..., batch=...)``; the group's ``lr`` is updated so schedulers/loggers see it.
    """

    def __init__(self, groups: Iterable[dict], momentum: float = 0.9, decay: float = 0.0005, batch: int = 1):
        super().__init__(list(groups), dict(lr=0.0, momentum=momentum, decay=decay, batch=batch))

    @torch.no_grad()
    def step(self, closure=None, *, lr: Optional[float] = None, batch: Optional[int] = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if lr is not None:
                group["lr"] = lr
            if batch is not None:
                group["batch"] = batch
            rate, b, decay, momentum = group["lr"], group["batch"], group["decay"], group["momentum"]
            params: List[Tensor] = []
            grads: List[Tensor] = []
            bufs: List[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "updates" not in state:
                    state["updates"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad.to(p.dtype))
                bufs.append(state["updates"])
            if not params:
                continue
            torch._foreach_sub_(bufs, grads)                       # updates += -dL/dW
            if decay:
                torch._foreach_add_(bufs, params, alpha=-decay * b)  # updates -= decay*batch*W
            torch._foreach_add_(params, bufs, alpha=rate / b)      # W += lr/batch * updates
            torch._foreach_mul_(bufs, momentum)                    # updates *= momentum
        return loss


def darknet_param_groups(model: nn.Module) -> list[dict]:
    """Split the model's trainable tensors as Darknet decays them.

    Darknet decays the ``weights`` block of conv/connected/deconv/shortcut layers and
    nothing else; every layer's ``weight_tensors()`` names its blocks by role, so the
    split follows the same description the ``.weights`` reader uses.  Parameters no
    layer describes (there should be none) go to the undecayed group.
    """
    decayed: List[nn.Parameter] = []
    plain: List[nn.Parameter] = []
    seen: set = set()
    layers = getattr(model, "layers", [])
    for layer in layers:
        tensors = getattr(layer, "weight_tensors", None)
        if tensors is None:
            continue
        for role, t in tensors():
            if not isinstance(t, nn.Parameter) or not t.requires_grad or id(t) in seen:
                continue
            seen.add(id(t))
            (decayed if role.split(".")[-1] == "weights" else plain).append(t)
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            plain.append(p)
    groups: List[Dict[str, Any]] = []
    if decayed:
        groups.append({"params": decayed, "name": "weights"})
    if plain:
        groups.append({"params": plain, "name": "biases_scales", "decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, momentum: float, decay: float, batch: int) -> DarknetSGD:
    """A :class:`DarknetSGD` over ``model`` with Darknet's decay split."""
    return DarknetSGD(darknet_param_groups(model), momentum=momentum, decay=decay, batch=batch)
