"""The :class:`Darknet` module: a layer graph turned into torch modules, run in Darknet's order.

Layers run in a plain loop over an ``nn.ModuleList``; each reads the outputs named
by its spec's ``inputs`` (Darknet's raw layer indices) and every output is kept, as
Darknet keeps ``l.output`` for every layer, so ``layer_outputs`` is free and
``[route]``/``[shortcut]`` references need no bookkeeping beyond indices.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

from . import fusion
from .cfg import read_cfg
from . import cuda_graph as cuda_graphs
from .errors import DarkcfgError
from .graph import Graph, build_graph
from .layers.registry import BuildContext, build_layer
from .layers.tracing import traced_sizes
from .replay import Replays, forward_frame

if TYPE_CHECKING:
    from .train.loss import LossResult


def _bn_formula(graph: Graph, requested: str) -> str:
    """``auto``: pjreddie's BN formula for the legacy cfgs only pjreddie's Darknet runs."""
    if requested != "auto":
        if requested not in ("alexeyab", "pjreddie"):
            raise ValueError(f"bn_formula must be 'auto', 'alexeyab' or 'pjreddie', got {requested!r}")
        return requested
    legacy = any(s.kind == "shortcut" and s.attrs.legacy for s in graph.layers)
    return "pjreddie" if legacy else "alexeyab"


class Darknet(nn.Module):
    """A Darknet network as a ``torch.nn.Module``.

    ``forward(x)`` takes N x C x H x W floats in [0, 1] (RGB) and returns the output
    layers' tensors (detection heads, else the last layer), each laid out as Darknet's
    ``l.output``.  Flat layers ([softmax], [connected], [cost]...) give N x K x 1 x 1.
    """

    def __init__(self, graph: Graph, bn_formula: str = "auto"):
        super().__init__()
        self.graph = graph
        self.bn_formula = _bn_formula(graph, bn_formula)
        ctx = BuildContext(graph=graph, modules=[], bn_formula=self.bn_formula)
        for spec in graph.layers:
            ctx.modules.append(build_layer(spec, ctx))
        self.layers = nn.ModuleList(ctx.modules)
        self.layer_inputs: List[List[int]] = [list(s.inputs) for s in graph.layers]
        self.output_layers: List[int] = graph.output_indices
        self.release_after: List[List[int]] = _release_schedule(self.layer_inputs, self.output_layers)
        self.fused = False
        self.channels_last = False
        self.layer_dtypes: Optional[List[torch.dtype]] = None  # set by optimize(dtype=...): see precision.py
        self.precision_note: Optional[str] = None  # why optimize(dtype=...) kept float32, if it did
        self.fusions: fusion.Fusions = {}  # set by optimize(): see fusion.py
        self.replays = Replays()  # frames as bound kernel calls, by input layout: see replay.py
        self.header: Optional[bytes] = None  # the header of the last loaded .weights (kept for save)
        self.seen = 0  # images trained on (the header's ``seen``); Darknet.loss adds the batch in train mode

    # ------------------------------------------------------------------ info
    @property
    def width(self) -> int:
        return self.graph.net.width

    @property
    def height(self) -> int:
        return self.graph.net.height

    @property
    def channels(self) -> int:
        return self.graph.net.channels

    # --------------------------------------------------------------- forward
    def _run(self, x: Tensor, keep_all: bool = True) -> List[Tensor]:
        net = self.graph.net
        # (a dynamic-size torch.export must not compare the symbolic size with the cfg's: that would fix it)
        if not torch.jit.is_tracing() and not traced_sizes() and (
                x.dim() != 4 or x.shape[1] != net.channels or x.shape[2] != net.height or x.shape[3] != net.width):
            from .train.resize import check_input_size

            check_input_size(self, x)  # another size the graph takes (as resize_network), or DarkcfgError
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs: List[Tensor] = []
        empty = x.new_empty(0)
        casts: Sequence[Optional[torch.dtype]] = self.layer_dtypes or [None] * len(self.layers)
        fusions = self.fusions if (not keep_all and not self.training and self.layer_dtypes is None
                                   and not torch.jit.is_tracing() and not torch.compiler.is_compiling()) else {}
        layers = list(self.layers) if fusions else []  # (for fusion.run: quicker to index than the ModuleList)
        if fusions and self.layer_dtypes is None:
            replayed = forward_frame(self, x, layers, fusions)  # later frames of a layout: replay.py
            if replayed is not None:
                return replayed
        done = -1  # layers up to this index were computed by a fused call (fusion.py)
        for i, (layer, inputs, release, cast) in enumerate(zip(self.layers, self.layer_inputs, self.release_after,
                                                               casts)):
            if i > done:
                xs = [outs[j] if j >= 0 else x for j in inputs]
                if cast is not None:
                    xs = [t.to(cast) for t in xs]
                chain = fusions.get(i)
                fused = None if chain is None else fusion.run(layers, chain, xs, outs)
                if fused is None:
                    outs.append(layer(xs))
                else:  # several layers as one kernel call; nobody reads the skipped outputs
                    done = chain.last
                    outs.extend([empty] * (done - i))
                    outs.append(fused)
                del xs
            if not keep_all:
                for j in release:  # no later layer reads it: let its memory go now
                    outs[j] = empty
        return outs

    def _apply(self, fn: Any, recurse: bool = True) -> "Darknet":
        """(``to``, ``half``, ``cuda``, ...: parameters may get new data in place, which a replay's
        bound calls would not see: they are dropped.)"""
        self.replays.clear()
        graphed = self.__dict__.get("forward")
        if isinstance(graphed, cuda_graphs.GraphedForward):  # (captured graphs read the old addresses)
            graphed.clear()
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = self._run(x, keep_all=False)
        if self.layer_dtypes is not None:
            return [outs[i].contiguous().float() for i in self.output_layers]
        return [outs[i].contiguous() for i in self.output_layers]

    def layer_outputs(self, x: Tensor) -> List[Tensor]:
        """Every layer's output, indexed like Darknet's layers (section order after ``[net]``)."""
        outs = self._run(x)
        if self.layer_dtypes is not None:
            return [o.contiguous().float() for o in outs]
        return [o.contiguous() for o in outs]

    # --------------------------------------------------------------- weights
    def load_weights(self, path: "str | os.PathLike | bytes | bytearray", upto: Optional[int] = None,
                     strict: bool = True, *, fresh: bool = False) -> "Darknet":
        """Load a Darknet ``.weights`` file (see :func:`darkcfg.weights.load_weights`)."""
        from .weights import load_weights

        header = load_weights(self, path, upto=upto, strict=strict, fresh=fresh)
        self.seen = header.seen
        return self

    def save_weights(self, path: "str | os.PathLike", upto: Optional[int] = None) -> None:
        """Write a Darknet ``.weights`` file (see :func:`darkcfg.weights.save_weights`)."""
        from .weights import save_weights

        save_weights(self, path, upto=upto)

    def loss(self, x: Tensor, targets: Any) -> LossResult:
        """Darknet's training loss for one batch: a :class:`darkcfg.train.LossResult`.

        ``targets``: per image a list or K x 5 array of normalised (x_center, y_center, w, h,
        class_id).  ``result.loss.backward()`` leaves minus Darknet's weight updates in every
        ``.grad``; in train mode ``seen`` grows by the batch size.  See :mod:`darkcfg.train.loss`.
        """
        from .train.loss import darknet_loss

        return darknet_loss(self, x, targets)

    def fuse(self) -> "Darknet":
        """Fold every conv's batch norm into its weights (float64, like Darknet's detector).

        Faster inference; numbers move by float rounding only.  A fused model cannot be
        saved back to ``.weights`` (the BN blocks are gone).
        """
        from .layers.conv import fuse_convs

        fuse_convs(list(self.layers))
        self.fused = True
        return self

    def prefers_channels_last(self) -> bool:
        """True for nets built mostly of depthwise convs (MobileNet-style, Yolo-Fastest).

        oneDNN runs depthwise convolutions much faster on NHWC tensors (Yolo-Fastest 1.1:
        19 -> 12 ms on 2 cores) while dense nets gain nothing or lose a little (bench/speed.py).
        """
        convs = [s for s in self.graph.layers if s.kind == "convolutional"]
        depthwise = [s for s in convs if s.attrs.groups > 1 and s.attrs.groups == s.in_shape[0]]
        return bool(convs) and len(depthwise) * 4 >= len(convs)

    def optimize(self, dtype: Optional[torch.dtype] = None, compile: bool = False,
                 cuda_graph: bool = False) -> "Darknet":
        """Inference set-up: :meth:`fuse`, and NHWC memory layout where it is faster.

        Outputs are unchanged up to float rounding (and returned contiguous, NCHW).
        ``dtype=torch.bfloat16`` (CPUs with AVX512-BF16/AMX) or ``torch.float16`` (CUDA; what
        ``darkcfg run --half`` uses): weights converted once, NHWC, heads kept in float32 (the
        policy in :mod:`darkcfg.precision`); outputs float32, agreeing with fp32 to that rounding.
        On the CPU a depthwise-heavy net whose convs the float32 direct kernels run stays float32
        (faster there; ``precision_note`` says so).
        ``compile=True``: the whole ``forward`` captured as ONE graph by ``torch.compile``
        (``fullgraph``, static shapes: one compile per input shape, none per layer), compiled
        here on a batch of 1 at the net's size; ``compile_seconds`` records how long that took.
        ``cuda_graph=True`` (a CUDA model): each input shape's forward captured once as a CUDA
        graph and replayed (one submission instead of a launch per layer; no compilation; see
        :mod:`darkcfg.cuda_graph`); ``forward.captures`` counts the captures.

        Without ``compile``, CPU inference runs each conv + bias + activation as one primitive:
        a direct NHWC kernel for the small depthwise and 1x1 convs of depthwise-heavy nets
        (:mod:`darkcfg.layers.direct_conv`), Winograd for dense 3x3 stride-1 convs where its
        cost model says it is cheaper (:mod:`darkcfg.layers.winograd`; fp32 only), else oneDNN's
        fused conv with weights packed once (:mod:`darkcfg.layers.onednn`); mish runs as one native
        pass where a C compiler is available (:mod:`darkcfg.native`), and glibc is told to keep
        freed tensor memory for reuse (:mod:`darkcfg.allocator`; ``DARKCFG_MALLOC_TUNING=0``
        turns that off).  Autograd, tracing, scripting and other devices take the eager path.
        """
        from .allocator import keep_freed_memory

        if cuda_graph:
            if compile:
                raise DarkcfgError("optimize(compile=True, cuda_graph=True): choose one (torch.compile makes "
                                   "its own CUDA graphs with mode='reduce-overhead')")
            if next(iter(self.parameters()), torch.empty(0)).device.type != "cuda":
                raise DarkcfgError("optimize(cuda_graph=True) needs the model on a CUDA device: "
                                   "load(..., device='cuda')")
        self.replays.clear()
        if isinstance(self.__dict__.get("forward"), cuda_graphs.GraphedForward):
            del self.forward  # (an earlier optimize(cuda_graph=True)'s: this call says anew)
        with _collector_paused():  # (hundreds of small objects made: no full collection meanwhile)
            self.fuse()
            keep_freed_memory()
            if not compile:  # a captured graph gets its fusions from the compiler instead
                for layer in self.layers:
                    enable = getattr(layer, "enable_onednn", None)
                    if enable is not None:
                        enable()
                self.fusions = fusion.plan(self)
        from .precision import convert, keeps_float32

        self.precision_note = None if dtype is None or dtype == torch.float32 else keeps_float32(self, dtype)
        if dtype is not None and dtype != torch.float32 and self.precision_note is None:
            convert(self, dtype)
            self.to(memory_format=torch.channels_last)
            self.channels_last = True
        elif self.prefers_channels_last():
            self.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            import time

            self.forward = torch.compile(self.forward, fullgraph=True, dynamic=False)  # type: ignore[method-assign]
            start = time.perf_counter()
            with torch.no_grad():
                self(torch.rand(1, self.channels, self.height, self.width, device=next(self.parameters()).device))
            self.compile_seconds = time.perf_counter() - start
        if cuda_graph:
            cuda_graphs.enable(self)
        return self

    # ---------------------------------------------------------------- detect
    def detect(self, images: Any, thresh: float = 0.25, nms: float = 0.45, **kwargs: Any) -> list:
        """Detect objects; see :func:`darkcfg.detect_api.detect_images`."""
        from .detect_api import detect_images

        return detect_images(self, images, thresh=thresh, nms=nms, **kwargs)

    def classify(self, images: Any, top: int = 5, **kwargs: Any) -> list:
        """Top-``top`` classes per image; see :func:`darkcfg.classify.classify_images`."""
        from .classify import classify_images

        return classify_images(self, images, top=top, **kwargs)

    def extra_repr(self) -> str:
        net = self.graph.net
        return f"cfg={self.graph.path!r}, input={net.channels}x{net.height}x{net.width}, layers={len(self.layers)}"


def _release_schedule(layer_inputs: Sequence[Sequence[int]], keep: Sequence[int]) -> List[List[int]]:
    """For each layer i, the earlier outputs nobody reads after layer i (reference counts of the
    graph): ``forward`` drops them then, so peak memory follows the widest cut of the graph
    instead of its depth.  Outputs in ``keep`` (the returned ones) are never released."""
    last_read = {j: j for j in range(len(layer_inputs))}  # an unread output goes right after it is made
    for i, inputs in enumerate(layer_inputs):
        for j in inputs:
            if j >= 0:
                last_read[j] = max(last_read[j], i)
    schedule: List[List[int]] = [[] for _ in layer_inputs]
    kept = set(keep)
    for j, i in last_read.items():
        if j not in kept:
            schedule[i].append(j)
    return schedule


def load(cfg: "str | os.PathLike", weights: "str | os.PathLike | bytes | bytearray | memoryview | None" = None, *,
         size: Optional[Sequence[int]] = None, device: "str | torch.device" = "cpu",
         bn_formula: str = "auto", strict: bool = True) -> Darknet:
    """Build a :class:`Darknet` from a cfg file and optionally load its ``.weights``.

    ``size=(width, height)`` overrides the cfg's ``[net]`` size.  The model is returned
    in eval mode on ``device``.
    """
    device = _check_device(device)
    with _collector_paused():
        graph = build_graph(read_cfg(cfg), size=tuple(size) if size is not None else None)  # type: ignore[arg-type]
        if weights is not None:
            from .fast_build import build_for_weights

            model = build_for_weights(graph, bn_formula=bn_formula)  # no random init the file overwrites
            model.load_weights(weights, strict=strict, fresh=True)
        else:
            from .train.init import darknet_init

            model = darknet_init(Darknet(graph, bn_formula=bn_formula))
    # (built on the CPU: moving there would still walk every tensor, 7-14 ms of a yolov4 load)
    return (model if device.type == "cpu" else model.to(device)).eval()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a model is built (and back as it was after).

    Why: building creates tens of thousands of container objects (each module's dicts), enough to
    trigger full collections, each of which walks every object the process holds (torch's
    included): 10-16 ms of a yolov4 ``load``.  Nothing built here needs collecting meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_device(device: "str | torch.device") -> torch.device:
    """A usable torch device, or a :class:`DarkcfgError` saying why not (before any work)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DarkcfgError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DarkcfgError(f"device {device!r} requested but CUDA is not available "
                           f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None})")
    return dev
