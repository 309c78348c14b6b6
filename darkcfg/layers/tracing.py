"""Reading a tensor's height and width as constants while an exporter traces the model.

The exported graphs have a fixed height and width (the model is built for one size), so
pooling geometry computed from them is a constant.  Reading ``x.shape`` while tracing would
record Shape/Gather arithmetic and warn (TracerWarning) when turned into a Python int; pausing
the tracer for the read gives the plain ints.  (No ``from __future__ import annotations`` here:
TorchScript must read this signature when scripting a caller.)
"""

from typing import List, Tuple

import torch
from torch import Tensor

_set_tracing_state = getattr(torch._C, "_set_tracing_state")  # private, not in torch's type stubs


@torch.jit.ignore
def static_hw(x: Tensor) -> Tuple[int, int]:
    """(H, W) of an N x C x H x W tensor as Python ints, without recording them in a trace."""
    if not torch.jit.is_tracing():
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

    Channels and, in an exported graph, height and width are constants; the batch stays traced."""
    if not torch.jit.is_tracing():
        return [int(v) for v in x.shape[1:]]
    state = torch._C._get_tracing_state()
    _set_tracing_state(None)
    try:
        return [int(v) for v in x.shape[1:]]
    finally:
        _set_tracing_state(state)
