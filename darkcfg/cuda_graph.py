"""CUDA graphs for ``Darknet.forward``: ``optimize(cuda_graph=True)`` on a CUDA model.

Why: a Darknet forward is one kernel launch (or several) per layer, and for the small nets
(Yolo-Fastest, yolov4-tiny, the face YOLOs) a GPU finishes each kernel faster than Python and
the CUDA driver launch the next, so the frame is launch-bound.  A CUDA graph records every
launch of one forward once and replays them as a single submission.  It is the GPU's analogue
of the CPU frame replays (:mod:`darkcfg.replay`), and, unlike ``torch.compile``'s
"reduce-overhead" mode (which also uses CUDA graphs), it costs no compilation.

How: one graph per input signature (shape, strides, dtype, device), captured on the first call
with that signature after ``WARMUP`` eager calls on a side stream (cuDNN picks its algorithms
and the caching allocator fills there, not inside the capture, as PyTorch's CUDA graph notes
require).  The graph reads a static input tensor and writes static outputs: each call copies
its input in, replays, and returns clones of the outputs, so what a caller holds is never
overwritten by the next frame.  All graphs of a model share one memory pool (they never run
at the same time: replays are serialised on the current stream).

A captured graph reads the parameters at the addresses they had during capture.  So it is
used only while the model's parameters and buffers are the same tensors as then (in-place
edits are seen by the replay, as they would be by an eager forward; replaced tensors, as
``to()``, ``half()`` or ``load_state_dict(assign=True)`` make, drop the graphs and the next
call captures anew), without autograd, hooks, tracing, scripting or compiling: anything else
runs the ordinary eager forward; so does a model in training mode (its batch norms would
update their statistics inside the graph).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .replay import global_hooks, hooked

#: Eager calls on a side stream before a capture (cuDNN's algorithm choice, allocator warm-up).
WARMUP = 3
#: Input signatures a model keeps graphs for; the oldest goes beyond this (a size sweep).
MAX_GRAPHS = 8

_Key = Tuple[Tuple[int, ...], Tuple[int, ...], torch.dtype, torch.device]


class _Captured:
    """One signature's graph with its static input and outputs."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", static_in: Tensor, static_outs: List[Tensor]):
        self.graph, self.static_in, self.static_outs = graph, static_in, static_outs

    def run(self, x: Tensor) -> List[Tensor]:
        self.static_in.copy_(x)
        self.graph.replay()
        return [out.clone() for out in self.static_outs]


class GraphedForward:
    """The callable ``optimize(cuda_graph=True)`` puts in place of a model's ``forward``.

    ``capture``: how a graph is recorded -- :func:`capture_cuda_graph`, or a stand-in that the
    CPU tests give to check the bookkeeping around it (signatures, clones, invalidation).
    Copies and pickles of the model get a fresh one of their own, with no graphs.
    """

    def __init__(self, model: nn.Module, capture: Optional[Callable[..., _Captured]] = None):
        self.model = model
        self.eager: Callable[[Tensor], List[Tensor]] = functools.partial(type(model).forward, model)
        self.capture = capture or capture_cuda_graph
        self.graphs: Dict[_Key, _Captured] = {}
        self.captures = 0  # how many graphs were recorded (a test and a curious user read it)
        self._pool: Any = None
        self._tensors: List[Tensor] = []
        self._addresses: List[int] = []
        self._owners: List[dict] = []
        self._names: List[str] = []
        self._modules: List[nn.Module] = []

    def __reduce__(self) -> tuple:
        return (GraphedForward, (self.model, None if self.capture is capture_cuda_graph else self.capture))

    def clear(self) -> None:
        """Forget every graph (the model's tensors moved or were replaced); the next capture
        remembers the tensors anew."""
        self.graphs.clear()

    def _usable(self, x: Tensor) -> bool:
        if self.model.training or torch.is_grad_enabled() or torch.jit.is_scripting() or torch.jit.is_tracing():
            return False
        if torch.compiler.is_compiling() or global_hooks() or hooked(self._modules):
            return False
        return x.device.type == "cuda" or self.capture is not capture_cuda_graph

    def _tensors_unchanged(self) -> bool:
        """The same tensors at the same addresses (``module.half()`` keeps a Parameter and gives
        it new data: the identity alone would not see that)."""
        return (all(map(operator.is_, map(dict.get, self._owners, self._names), self._tensors))
                and list(map(Tensor.data_ptr, self._tensors)) == self._addresses)

    def _remember_tensors(self) -> None:
        entries = [(owner, name, t) for module in self.model.modules()
                   for owner in (module._parameters, module._buffers) for name, t in owner.items() if t is not None]
        self._owners = [owner for owner, _, _ in entries]
        self._names = [name for _, name, _ in entries]
        self._tensors = [t for _, _, t in entries]
        self._addresses = [t.data_ptr() for t in self._tensors]

    def __call__(self, x: Tensor) -> List[Tensor]:
        if not self._modules:  # (not in __init__: an unpickled model builds this before its modules)
            self._modules = list(self.model.modules())
        if not self._usable(x):
            return self.eager(x)
        if self.graphs and not self._tensors_unchanged():
            self.clear()
        # (outside inference mode: a static input made under it could not be written under no_grad)
        with torch.inference_mode(False), torch.no_grad():
            return self._replay(x)

    def _replay(self, x: Tensor) -> List[Tensor]:
        key: _Key = (tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        captured = self.graphs.get(key)
        if captured is None:
            if not self.graphs:
                self._remember_tensors()
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.pop(next(iter(self.graphs)))
            if self._pool is None and self.capture is capture_cuda_graph:
                self._pool = torch.cuda.graph_pool_handle()
            captured = self.capture(self.eager, x, self._pool)
            self.graphs[key] = captured
            self.captures += 1
        return captured.run(x)


def capture_cuda_graph(eager: Callable[[Tensor], List[Tensor]], x: Tensor, pool: Any) -> _Captured:
    """Record one forward for ``x``'s signature (see the module docstring for the protocol)."""
    static_in = x.clone()
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            eager(static_in)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_outs = eager(static_in)
    return _Captured(graph, static_in, list(static_outs))


def enable(model: nn.Module) -> GraphedForward:
    """Put a :class:`GraphedForward` in place of ``model.forward`` (``optimize`` checked that
    the model is on a CUDA device, after its other steps)."""
    graphed = GraphedForward(model)
    model.forward = graphed  # type: ignore[method-assign]
    return graphed
