"""Every Darknet activation, computed the way Darknet computes it.

Reference: AlexeyAB/darknet ``src/activations.h`` / ``activations.c`` (``get_activation``,
``activate``, ``activate_array_swish``/``_mish``/``_hard_mish``/``_normalize_channels*``),
summarised in ``darknet-format.md`` §4.

Each function takes a tensor and returns a new tensor of the same shape and dtype.  Only
standard element-wise torch ops are used so that every function works on any device, under
``torch.jit.script`` and through ``torch.onnx.export``.

Deliberate deviations from Darknet's *CPU* build (documented, not bugs here):

* ``relu6`` is ``min(max(x, 0), 6)`` (the intended / CUDA semantics).  The CPU ``activate()``
  has no relu6 case and returns 0.
* ``elu``/``selu`` are computed with ``where`` instead of Darknet's ``(x<0)*(expf(x)-1)``
  products, so very large positive inputs (x > ~88, where ``expf`` overflows and Darknet gets
  ``0*inf = NaN``) give ``x`` / ``1.0507*x`` rather than NaN.

Unknown names: Darknet prints a message and uses relu.  :func:`get_activation` does the same
(with :func:`warnings.warn`); use :func:`is_known` to reject unknown names up front.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lean import set_plain

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "PER_PIXEL_ACTIVATIONS",
    "get_activation",
    "is_known",
]

# float32 constants exactly as Darknet's C expressions produce them.
# (TorchScript cannot read module-level floats, so the constants are written inline:
#  selu 1.0507 and 1.7580311298370361 = float32(1.0507f * 1.6732f), the product Darknet's
#  ``1.0507f*1.6732f`` evaluates to in float; mish threshold 20; normalize_channels eps 0.0001.)


def linear(x: Tensor) -> Tensor:
    """``x``."""
    return x


def leaky(x: Tensor) -> Tensor:
    """``x if x > 0 else 0.1*x`` (``F.leaky_relu``: the same products, one fused kernel)."""
    return F.leaky_relu(x, 0.1)


def logistic(x: Tensor) -> Tensor:
    """``1/(1+expf(-x))``; ``torch.sigmoid`` computes it to the last bit or one ulp off, much faster."""
    return torch.sigmoid(x)


def relu(x: Tensor) -> Tensor:
    """``x*(x>0)``; Darknet's gives ``-0.0`` for negative x, ``F.relu`` ``0.0`` (equal values)."""
    return F.relu(x)


def relu6(x: Tensor) -> Tensor:
    """``min(max(x, 0), 6)`` -- intended semantics (Darknet CPU returns 0, a bug)."""
    return torch.clamp(x, 0.0, 6.0)


def elu(x: Tensor) -> Tensor:
    """``x if x >= 0 else expf(x) - 1``."""
    return torch.where(x >= 0, x, torch.exp(x) - 1.0)


def selu(x: Tensor) -> Tensor:
    """``1.0507*x if x >= 0 else 1.0507*1.6732*(expf(x) - 1)`` (truncated constants)."""
    return torch.where(x >= 0, x * 1.0507, (torch.exp(x) - 1.0) * 1.7580311298370361)


def gelu(x: Tensor) -> Tensor:
    """``0.5*x*(1 + tanhf(0.797885*x + 0.035677*x^3))`` (tanh approximation)."""
    return 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * (x * x * x)))


def swish(x: Tensor) -> Tensor:
    """``x*logistic(x)`` (``F.silu``)."""
    return F.silu(x)


def tanh(x: Tensor) -> Tensor:
    """Darknet's ``2/(1+expf(-2x)) - 1``; ``torch.tanh`` is the same function within an ulp."""
    return torch.tanh(x)


def mish(x: Tensor) -> Tensor:
    """``x*tanh(softplus(x))``, Darknet's CPU mish, computed through one sigmoid.

    With ``q = sigmoid(-x)**2``, ``tanh(softplus(x)) = (1 - q) / (1 + q)`` exactly (since
    ``1 + e^x = 1/sigmoid(-x)``).  On CPU this is ~1.8x faster than ``F.mish`` (whose kernel
    is not vectorised) and agrees with it to 1e-6 absolute; below x ~ -15, where mish is
    under 1e-5, the cancellation in ``1 - q`` costs relative but no absolute accuracy.
    """
    if x.requires_grad:  # training: the in-place fast path below cannot be differentiated
        return F.mish(x)
    q = torch.sigmoid(-x).square_()
    return torch.sub(1.0, q).mul_(x).div_(q.add_(1.0))


def hard_mish(x: Tensor) -> Tensor:
    """``x if x > 0; x*x/2 + x if x > -2; else 0``."""
    return torch.where(
        x > 0, x, torch.where(x > -2.0, x * x / 2.0 + x, torch.zeros_like(x))
    )


def loggy(x: Tensor) -> Tensor:
    """``2/(1+expf(-x)) - 1``."""
    return 2.0 / (1.0 + torch.exp(-x)) - 1.0


def relie(x: Tensor) -> Tensor:
    """``x if x > 0 else 0.01*x``."""
    return torch.where(x > 0, x, x * 0.01)


def ramp(x: Tensor) -> Tensor:
    """``x*(x>0) + 0.1*x``."""
    return F.relu(x) + x * 0.1


def revleaky(x: Tensor) -> Tensor:
    """Identical to :func:`leaky` in Darknet's ``activate()``."""
    return leaky(x)


def plse(x: Tensor) -> Tensor:
    """``0.01*(x+4) if x < -4; 0.01*(x-4)+1 if x > 4; else 0.125*x + 0.5``."""
    return torch.where(
        x < -4.0,
        (x + 4.0) * 0.01,
        torch.where(x > 4.0, (x - 4.0) * 0.01 + 1.0, x * 0.125 + 0.5),
    )


def hardtan(x: Tensor) -> Tensor:
    """``clamp(x, -1, 1)``."""
    return torch.clamp(x, -1.0, 1.0)


def lhtan(x: Tensor) -> Tensor:
    """``0.001*x if x < 0; 0.001*(x-1)+1 if x > 1; else x``."""
    return torch.where(
        x < 0, x * 0.001, torch.where(x > 1.0, (x - 1.0) * 0.001 + 1.0, x)
    )


def stair(x: Tensor) -> Tensor:
    """``n=floor(x)``: ``floor(x/2)`` if n even else ``(x-n) + floor(x/2)``."""
    n = torch.floor(x)
    half = torch.floor(x / 2.0)
    even = torch.remainder(n, 2.0) == 0
    return torch.where(even, half, (x - n) + half)


def _channel_dim(x: Tensor) -> int:
    return 1 if x.dim() >= 2 else 0


def normalize_channels(x: Tensor) -> Tensor:
    """Per pixel over channels (dim 1): ``x/(0.0001 + sum of positive x_k)`` for x > 0, else 0."""
    d = _channel_dim(x)
    pos = x > 0
    zero = torch.zeros_like(x)
    s = torch.sum(torch.where(pos, x, zero), dim=d, keepdim=True) + 0.0001
    return torch.where(pos, x / s, zero)


def normalize_channels_softmax(x: Tensor) -> Tensor:
    """Per pixel over channels (dim 1): ``exp(x)/(0.0001 + sum exp(x_k))`` (no max shift)."""
    d = _channel_dim(x)
    e = torch.exp(x)
    return e / (torch.sum(e, dim=d, keepdim=True) + 0.0001)


def normalize_channels_softmax_maxval(x: Tensor) -> Tensor:
    """Per pixel over channels (dim 1): as the softmax variant with ``x - max_k x_k`` inside exp."""
    d = _channel_dim(x)
    m = torch.amax(x, dim=d, keepdim=True)
    e = torch.exp(x - m)
    return e / (torch.sum(e, dim=d, keepdim=True) + 0.0001)


ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "linear": linear,
    "leaky": leaky,
    "logistic": logistic,
    "relu": relu,
    "relu6": relu6,
    "elu": elu,
    "selu": selu,
    "gelu": gelu,
    "swish": swish,
    "mish": mish,
    "hard_mish": hard_mish,
    "tanh": tanh,
    "loggy": loggy,
    "relie": relie,
    "ramp": ramp,
    "revleaky": revleaky,
    "plse": plse,
    "hardtan": hardtan,
    "lhtan": lhtan,
    "stair": stair,
    "normalize_channels": normalize_channels,
    "normalize_channels_softmax": normalize_channels_softmax,
    "normalize_channels_softmax_maxval": normalize_channels_softmax_maxval,
}

#: Activations that mix channels (per pixel over dim 1) instead of being element-wise.
PER_PIXEL_ACTIVATIONS = frozenset(
    ["normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"]
)


def is_known(name: str) -> bool:
    """True if Darknet's ``get_activation`` recognises ``name`` (exact, case-sensitive)."""
    return name in ACTIVATIONS


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function for ``name``.

    Like Darknet, an unknown name falls back to relu; a :class:`UserWarning` names it.
    """
    fn = ACTIVATIONS.get(name)
    if fn is None:
        warnings.warn(
            f"unknown activation {name!r}: Darknet falls back to relu", stacklevel=2
        )
        return relu
    return fn


class Activation(nn.Module):
    """A Darknet activation as a module, selected by name.

    ``Activation("mish")`` prints as ``Activation(mish)``.  An unknown name resolves to relu
    (with a warning), as in Darknet; ``name`` keeps what was asked for and ``kind`` what runs.
    Works under ``torch.jit.script`` and ``torch.onnx.export``.
    """

    if TYPE_CHECKING:  # (set in __init__ by set_plain; for the type checker only, not TorchScript)
        name: str
        kind: str
        fn: Callable[[Tensor], Tensor]

    def __init__(self, name: str) -> None:
        super().__init__()
        if not is_known(name):
            warnings.warn(
                f"unknown activation {name!r}: Darknet falls back to relu", stacklevel=2
            )
            kind = "relu"
        else:
            kind = name
        # fn, the resolved function: the one dispatch (ACTIVATIONS); hot paths call it directly.
        set_plain(self, name=name, kind=kind, fn=ACTIVATIONS[kind])

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript cannot call a function stored in an attribute: script a module whose
        ``forward`` calls this one's function by name (a closure TorchScript resolves)."""
        return _fixed_activation(self.fn)

    def extra_repr(self) -> str:
        return self.name if self.name == self.kind else f"{self.name} -> {self.kind}"

    def __repr__(self) -> str:
        return f"Activation({self.extra_repr()})"


def _fixed_activation(fn: Callable[[Tensor], Tensor]) -> nn.Module:
    """A module that applies ``fn`` (scriptable: ``fn`` is a closure variable, not an attribute)."""

    class FixedActivation(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return fn(x)

    return FixedActivation()
