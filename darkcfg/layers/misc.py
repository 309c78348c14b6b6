"""Modules for shape-preserving layers: dropout/empty (identity), activation, lrn."""

from __future__ import annotations

from typing import List

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


@builder("dropout", "empty")
def build_identity(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
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
