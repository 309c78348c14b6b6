"""Section type -> torch module builder.

Adding a layer type is one ``@builder("kind")`` function next to its module; an
unknown kind is one clear error here (never a silent identity, a trap several
ports fell into).

Every layer module shares one calling convention so the network can run them in
a plain loop (and TorchScript can compile that loop): ``forward(xs)`` takes the
list of tensors named by ``spec.inputs`` (the previous layer first, when the layer
reads it) and returns one N x C x H x W tensor -- flat layers return N x K x 1 x 1.

Modules with learned values also implement ``weight_tensors()``: the tensors that
hold the spec's float blocks, in ``.weights`` file order.  Load and save both walk
that one list (see :mod:`darkcfg.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from ..errors import CfgError
from ..graph import Graph, LayerSpec


@dataclass
class BuildContext:
    """What a builder may need besides its own spec."""

    graph: Graph
    modules: list[nn.Module]  # modules built so far (for share_index)
    bn_formula: str  # "alexeyab" or "pjreddie"
    cache: dict[str, Any] = field(default_factory=dict)  # whole-graph facts builders compute once


Builder = Callable[[LayerSpec, BuildContext], nn.Module]
BUILDERS: dict[str, Builder] = {}


def builder(*kinds: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for kind in kinds:
            if kind in BUILDERS:
                raise RuntimeError(f"duplicate builder for [{kind}]")
            BUILDERS[kind] = fn
        return fn

    return deco


def build_layer(spec: LayerSpec, ctx: BuildContext) -> nn.Module:
    from . import conv, heads, merge, misc, pool  # noqa: F401  (register the builders)

    fn = BUILDERS.get(spec.kind)
    if fn is None:
        raise CfgError(f"{spec.where}: darkcfg cannot run [{spec.section.raw_type}] layers at inference")
    return fn(spec, ctx)


class WeightedLayer(nn.Module):
    """Base of modules that own float blocks of the ``.weights`` file."""

    def weight_tensors(self) -> list[tuple[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError
