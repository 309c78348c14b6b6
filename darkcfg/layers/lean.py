"""Building the layer modules without ``nn.Module``'s per-attribute bookkeeping.

Why: a ``load`` is mostly building modules once the read is fast.  yolov4's 514 modules took
40-70 ms to construct, as much as reading its 246 MB of weights: ``nn.Module.__setattr__``
runs a chain of ``isinstance`` checks for every attribute (~4,700 calls), and each
``nn.Conv2d`` re-validates its arguments and draws Kaiming-uniform values that the weights
file overwrites next (~110 us a conv).  The helpers here do the same construction directly:

* :func:`set_plain` stores plain attributes (numbers, strings, ``None``, functions) straight
  into the instance ``__dict__`` -- where ``nn.Module.__setattr__`` itself puts a value that
  is neither a tensor nor a module;
* :func:`new_conv2d` makes an ``nn.Conv2d`` whose ``vars()`` equal the constructor's
  (``tests/test_lean_build.py`` compares them attribute by attribute, so a torch release that
  changes ``Conv2d``'s fields fails there, not in a user's model), and skips the random
  initialisation while :func:`weights_follow` says a weights file is about to fill it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, TypeVar

import torch
from torch import Tensor, nn

_WEIGHTS_FOLLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("darkcfg_weights_follow", default=False)
_module_init = nn.Module.__init__
M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Within: the convs built are left uninitialised (a ``.weights`` file fills them next;
    :func:`darkcfg.fast_build.build_for_weights` initialises whatever the file does not cover)."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def set_plain(module: nn.Module, **attrs: Any) -> None:
    """``setattr(module, name, value)`` for values that are neither tensors nor modules.

    ``nn.Module.__setattr__`` stores such a value in ``__dict__`` after its checks; this
    stores it there directly (4-5 us less per attribute).  Only for names the module has not
    registered as a parameter, buffer or submodule (true in a constructor).
    """
    for name, value in attrs.items():
        if isinstance(value, (Tensor, nn.Module)):
            raise TypeError(f"set_plain({name}=...): tensors and modules need nn.Module's registration")
    module.__dict__.update(attrs)


def new_module(cls: "type[M]", **attrs: Any) -> M:
    """An instance of the ``nn.Module`` subclass ``cls`` initialised as ``nn.Module()`` plus ``attrs``
    (plain values, see :func:`set_plain`), without running ``cls.__init__``."""
    module: M = object.__new__(cls)
    _module_init(module)
    set_plain(module, **attrs)
    return module


def new_conv2d(in_channels: int, out_channels: int, size: int, stride: "tuple[int, int]", padding: int,
               dilation: int, groups: int, bias: bool) -> nn.Conv2d:
    """``nn.Conv2d(in_channels, out_channels, size, stride, padding, dilation, groups, bias=bias)``
    built directly (square kernel, zero padding), initialised by ``reset_parameters`` unless
    within :func:`weights_follow`."""
    conv = new_module(
        nn.Conv2d, in_channels=in_channels, out_channels=out_channels, kernel_size=(size, size),
        stride=tuple(stride), padding=(padding, padding), dilation=(dilation, dilation), transposed=False,
        output_padding=(0, 0), groups=groups, padding_mode="zeros",
        _reversed_padding_repeated_twice=(padding,) * 4)
    conv._parameters["weight"] = nn.Parameter(torch.empty(out_channels, in_channels // groups, size, size))
    conv._parameters["bias"] = nn.Parameter(torch.empty(out_channels)) if bias else None
    if not _WEIGHTS_FOLLOW.get():
        conv.reset_parameters()
    return conv


def register_tensors(module: nn.Module, parameters: "dict[str, Tensor | None] | None" = None,
                     buffers: "dict[str, Tensor] | None" = None) -> None:
    """``register_parameter``/``register_buffer`` for fresh names, without their per-call checks."""
    for name, value in (parameters or {}).items():
        module._parameters[name] = value if value is None or isinstance(value, nn.Parameter) else nn.Parameter(value)
    for name, buf in (buffers or {}).items():
        module._buffers[name] = buf
