"""Build a :class:`~darkcfg.model.Darknet` whose weights a ``.weights`` file is about to fill.

``nn.Conv2d`` / ``nn.Linear`` draw Kaiming-uniform weights when constructed; for a model
whose every weight is then overwritten by the file that is pure waste (0.7 s of a 1.2 s
``load`` for yolov4's 258 MB).  :func:`build_for_weights` builds the modules with those
random draws skipped (the tensors keep torch.empty's contents), then gives every tensor
the file will NOT write -- ``dontload`` layers, ``dontloadscales`` batch norms, anything a
future layer adds outside its weight blocks -- the initialisation ``load(cfg)`` gives
(torch's default, then :func:`darkcfg.train.init.darknet_init`, whole layers, before the
file overwrites what it covers of them).  The
caller loads the file next; if that fails the half-built model is simply discarded.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .graph import Graph
from .layers.lean import weights_follow
from .weights import DEFAULT_HEADER, iter_slots

if TYPE_CHECKING:
    from .model import Darknet

#: The random fills torch's ``reset_parameters`` use; the ``fill_``-style ones (zeros, ones) are cheap and kept.
_RANDOM_FILLS: Set[Callable[..., Any]] = {
    nn.init.kaiming_uniform_, nn.init.kaiming_normal_, nn.init.uniform_, nn.init.normal_,
    nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.trunc_normal_, nn.init.orthogonal_,
}


#: Section types whose modules draw no random values when built (``[convolutional]``'s lean conv
#: skips its draws within ``weights_follow``); any other type builds under :class:`_SkipRandomFills`.
_NO_RANDOM_DRAWS = frozenset({"convolutional", "route", "shortcut", "maxpool", "local_avgpool", "avgpool",
                              "upsample", "yolo", "Gaussian_yolo", "region", "softmax", "dropout", "empty",
                              "reorg", "reorg3d", "scale_channels", "sam", "activation"})


class _SkipRandomFills(TorchFunctionMode):
    """Turns the ``torch.nn.init`` random fills into no-ops and records the tensors they skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: List[Tensor] = []

    def __torch_function__(self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        if func in _RANDOM_FILLS:
            tensor = args[0] if args else (kwargs or {})["tensor"]
            self.skipped.append(tensor)
            return tensor
        return func(*args, **(kwargs or {}))


def build_for_weights(graph: Graph, bn_formula: str = "auto") -> "Darknet":
    """A :class:`Darknet` for ``graph`` whose file-covered tensors are left uninitialised.

    Every tensor a complete ``.weights`` file does not cover is initialised as in
    ``load(cfg)``; the covered ones hold arbitrary values until the file is loaded.
    """
    from .model import Darknet
    from .train.init import darknet_init

    mode = _SkipRandomFills()
    # (the mode intercepts every torch call of the build, ~3 ms for yolov4: left out where every
    # layer's module is known to draw nothing at random)
    drawn = any(spec.kind not in _NO_RANDOM_DRAWS for spec in graph.layers)
    with mode if drawn else contextlib.nullcontext(), torch.no_grad(), weights_follow():
        model = Darknet(graph, bn_formula=bn_formula)
    covered = {id(slot.tensor) for slot in iter_slots(model, DEFAULT_HEADER)}
    uncovered = {id(t) for t in mode.skipped if id(t) not in covered}
    uncovered.update(id(p) for p in model.parameters() if id(p) not in covered)  # e.g. a dontloadscales BN
    owners = [i for i, layer in enumerate(model.layers)
              if any(id(p) in uncovered for p in layer.parameters())] if uncovered else []
    if owners:
        for i in owners:  # torch's default first (for any tensor darknet_init does not know), then Darknet's
            for m in model.layers[i].modules():
                reset = getattr(m, "reset_parameters", None)
                if reset is not None and any(id(p) in uncovered for p in m.parameters(recurse=False)):
                    reset()
        darknet_init(model, layers=owners)
    return model

