"""Frames replayed as a list of prepared kernel calls (CPU inference after ``optimize()``).

Why: for the small nets the native kernels serve (Yolo-Fastest, the MobileNet and face YOLOs) a
frame is 20-40 layer calls of a few microseconds of arithmetic each, and the Python around each
call -- finding the layer's fast path, checking dtype, layout and autograd, looking up the
shape's plan, checking the packed weights are current -- cost more than the arithmetic:
yoloface-50k @56 spent ~0.5 ms a frame of which its kernels took ~0.12 ms.  None of those answers
change between frames of one input layout, so the first frame of a layout binds each step once
(:meth:`darkcfg.layers.direct_conv.DirectConv.bind` and its siblings: the kernel, its packed
weights and geometry, the output's shape), and later frames only allocate outputs and call the
kernels, with the same arguments: the outputs are bit-identical to the layer-by-layer path's.

A step without a bound form (oneDNN and Winograd convs, heads, upsampling, ...) calls its layer
as ``forward`` would.  A replay is used only where every answer it fixed still holds, checked
each frame: no autograd, the same layers and fusion plan, no hooks on the bound layers (or global
ones), and the bound convs' weight and bias tensors unchanged (the same tensors, not edited in
place: their version counters).  Anything else takes the ordinary path (and a changed model
records a new replay).  ``DARKCFG_REPLAY=0`` turns replays off.
"""

from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from . import fusion
from .layers.direct_conv import StepCall

if TYPE_CHECKING:
    from .model import Darknet

_VERSION = operator.attrgetter("_version")  # a tensor's in-place edit counter
_HOOKS, _PRE_HOOKS = operator.attrgetter("_forward_hooks"), operator.attrgetter("_forward_pre_hooks")

#: Input layouts a model keeps replays for (a video stream has one; a size sweep many).
MAX_REPLAYS = 8


class _Refused(Exception):
    """A step's fused call refused during a replay (the frame is then run the ordinary way)."""


#: A replay step: (the layers it reads, -1 the network input; its call; the layer whose output it
#: makes -- the last of a fused chain --; the outputs no later step reads, dropped after it).
_Step = Tuple[Tuple[int, ...], StepCall, int, Tuple[int, ...]]


class Replay:
    """One input layout's frame as bound steps (see the module docstring)."""

    def __init__(self, steps: List[_Step], layers: List[nn.Module], fusions: fusion.Fusions,
                 bound_layers: List[nn.Module], chained: List[nn.Module]):
        """``bound_layers``: the layers bound one by one (``forward`` would call them as modules, so
        hooks added to them later end the replay); ``chained``: the layers inside bound fused calls."""
        self.steps, self.layers, self.fusions, self.bound_layers = steps, layers, fusions, bound_layers
        # the bound convs' weights and biases: the same tensors (in their convs), unedited
        params = [(conv._parameters, name, t) for conv in _convs(bound_layers + chained)
                  for name, t in conv._parameters.items() if t is not None]
        self.owners, self.names = [owner for owner, _, _ in params], [name for _, name, _ in params]
        self.tensors = [t for _, _, t in params]
        self.versioned = [t for t in self.tensors if not t.is_inference()]  # (inference tensors have no counter)
        self.versions = list(map(_VERSION, self.versioned))

    def holds(self, model: "Darknet", layers: Sequence[nn.Module]) -> bool:
        """Whether everything this replay fixed is still so (checked every frame; C-level loops:
        Yolo-Fastest's 168 tensors and 131 layers in ~26 us)."""
        return (model.fusions is self.fusions and len(layers) == len(self.layers)
                and all(map(operator.is_, layers, self.layers))
                and all(map(operator.is_, map(dict.get, self.owners, self.names), self.tensors))
                and list(map(_VERSION, self.versioned)) == self.versions
                and not hooked(self.bound_layers))

    def run(self, x: Tensor, count: int) -> List[Tensor]:
        """Every layer's output slot for input ``x`` (released ones empty, as ``forward`` leaves them)."""
        empty = x.new_empty(0)
        outs = [empty] * count
        for inputs, call, last, release in self.steps:
            outs[last] = call([outs[j] if j >= 0 else x for j in inputs], outs)
            for j in release:
                outs[j] = empty
        return outs


def _convs(layers: List[nn.Module]) -> List[nn.Module]:
    return [conv for layer in layers for conv in [getattr(layer, "conv", None)] if isinstance(conv, nn.Conv2d)]


class Replays(dict):
    """A model's replays by input layout.  Copies and pickles start empty (the bound calls hold
    native function pointers; a copy records its own on its first frame)."""

    def __reduce__(self) -> tuple:
        return (Replays, ())


def forward_frame(model: "Darknet", x: Tensor, layers: List[nn.Module], fusions: fusion.Fusions) -> Optional[List[Tensor]]:
    """``model``'s outputs for ``x`` by its replay for ``x``'s layout -- recorded on this frame if
    there is none yet -- or None where a replay may not run (the caller runs the frame)."""
    if torch.is_grad_enabled() or not fusions or global_hooks() or os.environ.get("DARKCFG_REPLAY") == "0":
        return None
    replays = model.replays
    key = (tuple(x.shape), x.stride(), x.dtype, x.device)
    replay = replays.get(key)
    if replay is not None:
        if replay.holds(model, layers):
            try:
                return replay.run(x, len(layers))
            except _Refused:
                pass
        replays.pop(key, None)
    if len(replays) >= MAX_REPLAYS:
        try:  # the oldest goes (another thread may be changing the dict: then it stays a while)
            replays.pop(next(iter(replays)), None)
        except (RuntimeError, StopIteration):
            pass
    replay, outs = _record(model, x, layers, fusions)
    replays[key] = replay
    return outs


def _record(model: "Darknet", x: Tensor, layers: List[nn.Module],
            fusions: fusion.Fusions) -> Tuple[Replay, List[Tensor]]:
    """Run the frame as ``forward`` does, binding each step on the way; the outputs come from the
    bound calls themselves, so the replay is exercised on the frame that records it."""
    outs: List[Tensor] = []
    empty = x.new_empty(0)
    steps: List[_Step] = []
    bound_layers: List[nn.Module] = []
    chained: List[nn.Module] = []
    release_after, layer_inputs = model.release_after, model.layer_inputs
    done = -1
    for i, layer in enumerate(layers):
        if i > done:
            inputs = tuple(layer_inputs[i])
            xs = [outs[j] if j >= 0 else x for j in inputs]
            chain = fusions.get(i)
            last, call, y = i, None, None
            if chain is not None:
                call = fusion.bind(layers, chain, xs, outs)
                if call is None:
                    y = fusion.run(layers, chain, xs, outs)
                    call = None if y is None else _fused_step(layers, chain)  # (a Winograd conv + shortcut)
                if call is not None:  # else: the chain's layers one by one, as forward does
                    last = chain.last
                    chained += layers[i:last + 1]
            if call is None:
                bind = getattr(layer, "bind", None)
                hooked = layer._forward_hooks or layer._forward_pre_hooks  # (called as a module: hooks run)
                call = bind(xs) if bind is not None and not hooked else None
                if call is not None:
                    bound_layers.append(layer)
                else:
                    call = _layer_step(layer)
            outs.extend([empty] * (last - i))
            outs.append(call(xs, outs) if y is None else y)
            steps.append((inputs, call, last, tuple(j for k in range(i, last + 1) for j in release_after[k])))
            done = last
        for j in release_after[i]:
            outs[j] = empty
    return Replay(steps, list(layers), fusions, bound_layers, chained), outs


def _fused_step(layers: List[nn.Module], chain: Any) -> StepCall:
    def call(xs: List[Tensor], outs: List[Tensor]) -> Tensor:
        y = fusion.run(layers, chain, xs, outs)
        if y is None:
            raise _Refused
        return y
    return call


def _layer_step(layer: nn.Module) -> StepCall:
    return lambda xs, outs: layer(xs)


def hooked(modules: Sequence[nn.Module]) -> bool:
    """Whether any of ``modules`` has forward (pre-)hooks, which a replayed call would skip
    (C-level loops: a model's worth in microseconds)."""
    return any(map(_HOOKS, modules)) or any(map(_PRE_HOOKS, modules))


def global_hooks() -> bool:
    """Whether module hooks are registered for every module (the bound steps would skip them)."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)
