"""The cfg's own freezing keys, as Darknet's training applies them.

``stopbackward=1`` on layer s: ``backward_network`` stops there, so layers 0..s get no weight
updates at all.  ``train_only_bn=1`` on layer t: layers 0..t update only their batch-norm
scales and biases (Darknet's GPU backward skips their weight gradients).  Here both become
``requires_grad = False`` on the tensors Darknet leaves alone, so autograd neither computes nor
reports a gradient for them (``.grad`` stays None and optimisers skip them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:
    from ..model import Darknet


def apply_cfg_freezing(model: "Darknet") -> Dict[str, List[int]]:
    """Freeze what ``stopbackward`` / ``train_only_bn`` freeze; returns the affected layer indices."""
    specs = model.graph.layers
    stop = max((s.index for s in specs if s.section.get_int("stopbackward", 0) == 1), default=-1)
    only_bn = max((s.index for s in specs if s.section.get_int("train_only_bn", 0) != 0), default=-1)
    frozen: List[int] = []
    bn_only: List[int] = []
    for spec, module in zip(specs, model.layers):
        if spec.index <= stop:
            touched = False
            for p in module.parameters():
                p.requires_grad_(False)
                touched = True
            if touched:
                frozen.append(spec.index)
        elif spec.index <= only_bn:
            bn = getattr(module, "bn", None)
            bn_params = {id(p) for p in bn.parameters()} if bn is not None else set()
            touched = False
            for p in module.parameters():
                if id(p) not in bn_params:
                    p.requires_grad_(False)
                    touched = True
            if touched:
                bn_only.append(spec.index)
    return {"stopbackward": frozen, "train_only_bn": bn_only}
