"""Modules for shape-preserving layers: dropout/empty (identity), activation, lrn."""

from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CfgError
from ..graph import LayerSpec
from . import functional as DF
from .activations import Activation
from .registry import BuildContext, builder


class Identity(nn.Module):
    """``[dropout]``, ``[empty]``/``[silence]``: identity at inference."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        return xs[0]


class Dropout(nn.Module):
    """``[dropout]``: identity at inference; in train mode zero with ``probability`` and scale the
    rest by ``1/(1 - probability)`` (``forward_dropout_layer``; what ``F.dropout`` computes)."""

    def __init__(self, probability: float):
        super().__init__()
        self.probability = probability

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.training and self.probability > 0:
            return F.dropout(xs[0], self.probability, True)
        return xs[0]

    def extra_repr(self) -> str:
        return f"probability={self.probability}"


@builder("dropout", "empty")
def build_identity(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    if spec.kind == "dropout":
        p = spec.section.get_float("probability", 0.5)
        if not 0.0 <= p < 1.0:
            raise CfgError(f"{spec.section.where('probability')}: probability must be in [0, 1), got {p}")
        return Dropout(p)
    return Identity()


class ActivationLayer(nn.Module):
    """``[activation]``: a stand-alone activation."""

    def __init__(self, activation: str):
        super().__init__()
        self.act = Activation(activation)

    def forward(self, xs: List[Tensor]) -> Tensor:
        return self.act(xs[0])


@builder("activation")
def build_activation(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    return ActivationLayer(spec.attrs.activation)


class DarknetLRN(nn.Module):
    """``[lrn]``: Darknet's own local response normalisation recurrence."""

    def __init__(self, size: int, alpha: float, beta: float, kappa: float):
        super().__init__()
        self.size, self.alpha, self.beta, self.kappa = size, alpha, beta, kappa

    def forward(self, xs: List[Tensor]) -> Tensor:
        return DF.darknet_lrn(xs[0], self.size, self.alpha, self.beta, self.kappa)


@builder("lrn")
def build_lrn(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    a = spec.attrs
    return DarknetLRN(a.size, a.alpha, a.beta, a.kappa)


@builder("rnn", "gru", "lstm", "conv_lstm", "history")
def build_recurrent(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    raise CfgError(f"{spec.where}: recurrent layers ([{spec.section.raw_type}]) are not supported by darkcfg "
                   "at inference (they need a sequence input); `darkcfg info` still reads their shapes")
