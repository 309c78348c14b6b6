"""Reading a tensor's height and width as constants while an exporter traces the model.

The exported graphs have a fixed height and width (the model is built for one size), so
pooling geometry computed from them is a constant.  Reading ``x.shape`` while tracing would
record Shape/Gather arithmetic and warn (TracerWarning) when turned into a Python int; pausing
the tracer for the read gives the plain ints.  (No ``from __future__ import annotations`` here:
TorchScript must read this signature when scripting a caller.)
"""

from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

_set_tracing_state = getattr(torch._C, "_set_tracing_state")  # private, not in torch's type stubs

# Set (by ``dynamic_hw``) while an exporter traces with a dynamic height and width: then the few
# layers whose traced form bakes in the height/width switch to forms computed from the input.
_DYNAMIC_HW: List[bool] = [False]


@torch.jit.ignore
def traced_sizes() -> bool:
    """True while tracing a dynamic height/width export (``convert --dynamic-size``).

    The default export keeps height and width as trace-time constants (a lean graph OpenCV
    imports); a dynamic-size export must compute them from the input instead."""
    return _DYNAMIC_HW[0] and (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _hint(n: Any) -> int:
    """The example value of a size while ``torch.export`` traces with symbolic sizes, read without
    installing a guard (which would specialise the size): only for what the size rule keeps constant."""
    node = getattr(n, "node", None)
    return int(node.hint) if node is not None and getattr(node, "hint", None) is not None else int(n)


class dynamic_hw:
    """Context manager: trace with height and width read from the input (see :func:`traced_sizes`)."""

    def __enter__(self) -> None:
        self.old = _DYNAMIC_HW[0]
        _DYNAMIC_HW[0] = True

    def __exit__(self, *exc: object) -> None:
        _DYNAMIC_HW[0] = self.old


@torch.jit.ignore
def static_hw(x: Tensor) -> Tuple[int, int]:
    """(H, W) of an N x C x H x W tensor as Python ints, without recording them in a trace."""
    if not torch.jit.is_tracing():
        if _DYNAMIC_HW[0] and torch.compiler.is_compiling():  # torch.export of a dynamic-size model
            return _hint(x.shape[2]), _hint(x.shape[3])
        return int(x.shape[2]), int(x.shape[3])
    state = torch._C._get_tracing_state()
    _set_tracing_state(None)
    try:
        return int(x.shape[2]), int(x.shape[3])
    finally:
        _set_tracing_state(state)


class untraced:
    """Context manager pausing the tracer (for eager stand-ins whose trace is replaced by a symbolic op)."""

    def __enter__(self) -> None:
        self.state = torch._C._get_tracing_state()
        _set_tracing_state(None)

    def __exit__(self, *exc: object) -> None:
        _set_tracing_state(self.state)


@torch.jit.ignore
def static_dims(x: Tensor) -> List[int]:
    """``x.shape[1:]`` (everything but the batch) as Python ints, without recording them in a trace.

    Channels and, in an exported graph, height and width are constants; the batch stays traced.
    In a dynamic-size export (:func:`traced_sizes`) height and width stay traced too."""
    if not torch.jit.is_tracing():
        if _DYNAMIC_HW[0] and torch.compiler.is_compiling() and x.dim() == 4:
            symbolic: List[Any] = [_hint(x.shape[1]), x.shape[2], x.shape[3]]
            return symbolic
        return [int(v) for v in x.shape[1:]]
    state = torch._C._get_tracing_state()
    _set_tracing_state(None)
    try:
        dims = [int(v) for v in x.shape[1:]]
    finally:
        _set_tracing_state(state)
    if _DYNAMIC_HW[0] and x.dim() == 4:
        traced: List[Any] = [dims[0], x.shape[2], x.shape[3]]
        return traced
    return dims


@torch.jit.ignore
def as_map(y: Tensor) -> Tensor:
    """N x C -> N x C x 1 x 1 (flat layers' Darknet layout).

    Traced as one Reshape to a constant shape: ``y[:, :, None, None]`` becomes two Unsqueezes
    that an ONNX optimizer merges into a two-axis Unsqueeze, which OpenCV's importer refuses."""
    if not torch.jit.is_tracing():
        return y[:, :, None, None]
    return y.reshape(-1, static_dims(y)[0], 1, 1)


@torch.jit.ignore
def in_bounds_fraction(x: Tensor, pads: List[int], k: List[int], s: List[int]) -> Tensor:
    """In-bounds share of each ``[local_avgpool]`` window (1 x 1 x OH x OW) for an exported graph.

    It depends on the geometry only, so it is computed with the tracer paused and the graph
    carries one constant: OpenCV's importer cannot run a Pad of a constant tensor."""
    if _DYNAMIC_HW[0]:  # the same fraction, computed from the input's (traced) size
        ones = x[:1, :1] * 0.0 + 1.0  # ones_like could be exported with the trace-time size
        return F.avg_pool2d(F.pad(ones, pads, mode="constant", value=0.0), k, s, 0, False, True)
    with untraced():
        h, w = static_hw(x)
        ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
        return F.avg_pool2d(F.pad(ones, pads, mode="constant", value=0.0), k, s, 0, False, True)
