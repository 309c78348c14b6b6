"""``Darknet.loss``: one training forward with Darknet's loss layers, Darknet's gradients.

Each loss layer's delta (``l.delta`` = minus the gradient of the loss w.r.t. what the layer
passes back) is computed exactly as Darknet computes it and attached to the loss layer's INPUT
by :class:`_InjectDelta`, whose forward returns the layer's cost and whose backward hands back
``-delta``.  Autograd then carries it down: where a layer feeds several consumers ([route],
[shortcut]) the contributions add up, as in Darknet's cuDNN training path.  So after
``loss.backward()`` every parameter's ``.grad`` is minus what Darknet accumulates in its
``*_updates`` for the batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import DarkcfgError

if TYPE_CHECKING:
    from ..model import Darknet

#: Section types whose training forward produces a delta and a cost.
LOSS_KINDS = ("yolo", "Gaussian_yolo", "region", "detection")


@dataclass
class LossResult:
    """What one :meth:`Darknet.loss` call returns.

    ``loss``: scalar tensor, the sum of the loss layers' costs; its gradient is Darknet's delta,
    so ``loss.backward()`` leaves minus Darknet's weight updates in ``.grad``.
    ``costs``: loss-layer index -> Darknet's ``*(l.cost)``.  ``cost``: Darknet's network cost
    (``get_network_cost``: the mean of ``costs``), what Darknet prints as the batch loss.
    ``deltas``: loss-layer index -> Darknet's ``l.delta`` (input layout), for inspection.
    """

    loss: Tensor
    costs: Dict[int, float]
    cost: float
    deltas: Dict[int, Tensor] = field(default_factory=dict, repr=False)


class _InjectDelta(torch.autograd.Function):
    """Forward: the layer's cost (a constant); backward: ``-delta * scale`` into the layer's input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, delta: Tensor, cost: float, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(delta)
        ctx.scale = scale
        return torch.tensor(cost, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tuple[Any, ...]:  # type: ignore[override]
        (delta,) = ctx.saved_tensors
        return -delta * (g * ctx.scale), None, None, None


def normalize_targets(targets: Any, batch: int, max_boxes: int = 200) -> List[np.ndarray]:
    """Per image a K x 5 float32 array (x, y, w, h, class), cut as Darknet's truth list is.

    Accepts a list (one entry per image) of lists of 5-sequences, K x 5 arrays or tensors, or one
    B x K x 5 array.  Darknet's list ends at the first box whose x is 0 (``if (!truth.x) break``),
    and holds at most ``max`` boxes: both are applied here.
    """
    if isinstance(targets, Tensor):
        targets = targets.detach().cpu().numpy()
    if isinstance(targets, np.ndarray) and targets.ndim == 3:
        targets = list(targets)
    if not isinstance(targets, (list, tuple)):
        raise DarkcfgError(f"targets must be a list with one entry per image, got {type(targets).__name__}")
    if len(targets) != batch:
        raise DarkcfgError(f"targets has {len(targets)} entries for a batch of {batch} images")
    out: List[np.ndarray] = []
    for b, t in enumerate(targets):
        if isinstance(t, Tensor):
            t = t.detach().cpu().numpy()
        arr = np.asarray(t if len(t) else np.zeros((0, 5)), dtype=np.float32)
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.reshape(0, 5)
        if arr.ndim != 2 or arr.shape[1] < 5:
            raise DarkcfgError(f"targets[{b}]: expected K x 5 (x_center, y_center, w, h, class_id), "
                               f"got shape {arr.shape}")
        arr = arr[:, :5]
        if not np.isfinite(arr).all():
            raise DarkcfgError(f"targets[{b}]: boxes must be finite numbers")
        zero = np.nonzero(arr[:, 0] == 0)[0]
        if len(zero):
            arr = arr[:zero[0]]
        out.append(arr[:max_boxes])
    return out


def _loss_specs(model: "Darknet") -> list:
    return [s for s in model.graph.layers if s.kind in LOSS_KINDS]


def darknet_loss(model: "Darknet", x: Tensor, targets: Any) -> LossResult:
    """One Darknet training forward (``train_network_datum`` without the update).

    In train mode ``model.seen`` grows by the batch size first (the [region] prior term reads it).
    The first call applies the cfg's ``stopbackward`` / ``train_only_bn`` (:mod:`.freeze`).
    Batch norm uses batch statistics only in train mode; in eval mode this is a validation loss.
    """
    from .detection_loss import DetectionLossConfig, detection_delta
    from .gaussian_loss import gaussian_yolo_delta
    from .region_loss import RegionLossConfig, region_delta
    from .yolo_loss import YoloLossConfig, yolo_delta

    specs = _loss_specs(model)
    if not specs:
        raise DarkcfgError(f"{model.graph.path}: the network has no loss layer ([yolo], [Gaussian_yolo], "
                           "[region] or [detection]) to train with")
    if not model.__dict__.get("_cfg_freezing_applied"):
        from .freeze import apply_cfg_freezing

        apply_cfg_freezing(model)  # stopbackward= / train_only_bn= of the cfg, once
        model.__dict__["_cfg_freezing_applied"] = True
    batch = int(x.shape[0])
    if model.training:
        model.seen += batch
    net_h, net_w = int(x.shape[2]), int(x.shape[3])
    outs = model.layer_outputs(x)  # every layer: the heads and what feeds them
    costs: Dict[int, float] = {}
    deltas: Dict[int, Tensor] = {}
    total: Tensor | None = None
    for spec in specs:
        head_in = outs[spec.inputs[0]] if spec.inputs else x
        out_np = outs[spec.index].detach().float().cpu().numpy()
        scale = 1.0
        if spec.kind in ("yolo", "Gaussian_yolo"):  # one config, two delta functions
            cfg = YoloLossConfig.from_spec(spec)
            truths = normalize_targets(targets, batch, cfg.max_boxes)
            _check_classes(truths, cfg.classes, spec)
            delta_fn = yolo_delta if spec.kind == "yolo" else gaussian_yolo_delta
            delta_np, cost = delta_fn(out_np, truths, cfg, net_w, net_h)
            scale = cfg.delta_normalizer
        elif spec.kind == "region":
            rcfg = RegionLossConfig.from_spec(spec)
            truths = normalize_targets(targets, batch, rcfg.max_boxes)
            _check_classes(truths, rcfg.classes, spec)
            delta_np, cost = region_delta(out_np, truths, rcfg, model.seen)
        else:
            dcfg = DetectionLossConfig.from_spec(spec)
            truths = normalize_targets(targets, batch, spec.section.get_int("max", 200))
            _check_classes(truths, dcfg.classes, spec)
            delta_np, cost = detection_delta(out_np, truths, dcfg, model.seen)
        delta = torch.from_numpy(delta_np).to(head_in.device, head_in.dtype).reshape(head_in.shape)
        term = _InjectDelta.apply(head_in, delta, cost, scale)
        total = term if total is None else total + term
        costs[spec.index] = cost
        deltas[spec.index] = delta
    assert total is not None
    return LossResult(total, costs, float(np.mean(list(costs.values()))), deltas)


def _check_classes(truths: Sequence[np.ndarray], classes: int, spec: Any) -> None:
    """Darknet skips (and warns about) labels whose class is outside the cfg's classes."""
    bad = [int(c) for t in truths for c in t[:, 4] if not 0 <= int(c) < classes]
    if bad:
        warnings.warn(f"{spec.where}: {len(bad)} target box(es) have class ids outside 0..{classes - 1} "
                      f"(e.g. {bad[0]}); Darknet skips them, and so does darkcfg", stacklevel=3)
