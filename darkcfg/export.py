"""Export a Darknet model: torch.export (``.pt2``), TorchScript, ONNX, or re-saved ``.weights``.

The exported graph is the fused inference model (BN folded into convs, as Darknet
runs it) taking N x C x H x W floats in [0, 1] and returning the output layers'
tensors (Darknet's ``l.output`` layout); with ``decode`` it ends in decoded boxes and with
``nms`` (ONNX) in a padded detections tensor plus a count (:mod:`darkcfg.export_heads`).
``pt2`` and ``onnx`` keep the batch dimension dynamic (``dynamic=False`` fixes it);
TorchScript (deprecated by PyTorch, kept for older runtimes) is traced.  The input size is
fixed (height and width are trace-time constants: a lean graph every importer reads) unless
``dynamic_size`` (ONNX, pt2): then height and width are dynamic axes, exact at the sizes
:mod:`darkcfg.dynamic_size` computes from the graph (stored in the metadata).  Every artefact
carries darkcfg's metadata (:mod:`darkcfg.export_meta`).  Exports are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor, nn

from .errors import DarkcfgError
from .export_meta import EXTRA_FILE, add_onnx_metadata, build_metadata
from .fileio import atomic_write
from .layers.tracing import dynamic_hw
from .model import Darknet, load

if TYPE_CHECKING:
    from .dynamic_size import SizeRule


class _TupleOutputs(nn.Module):
    """Wrap :class:`Darknet` so tracing sees a tuple (exporters dislike lists)."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(x))


def export(cfg: "str | os.PathLike", weights: "str | os.PathLike | None", to: str, out: Optional[Path] = None,
           size: Optional[tuple[int, int]] = None, fuse: bool = True, batch: int = 1, decode: bool = False,
           nms: bool = False, dynamic: bool = True, thresh: float = 0.25, nms_thresh: float = 0.45,
           max_det: int = 100, names: Optional[Sequence[str]] = None, optimize: Optional[bool] = None,
           dynamic_size: bool = False) -> Path:
    """Write ``cfg`` (+ ``weights``) as ``to`` in {"pt2", "torchscript", "onnx", "weights"}; returns the path.

    ``decode``: end in boxes (N, K, 4+1+C); ``nms`` (implies decode; ONNX: standard NonMaxSuppression,
    TorchScript: Darknet's NMS kind exactly, as a scripted loop; not pt2): end in
    ``detections`` (N, max_det, 6) and ``count`` (N,), keeping probabilities > ``thresh`` and
    suppressing IoU > ``nms_thresh`` per class.  ``dynamic``: dynamic batch axis.  ``optimize``
    (ONNX): fold the remaining shape arithmetic and constants with onnxscript's optimizer
    (None: when onnxscript is installed); this is what lets OpenCV import the exotic layers.
    ``dynamic_size`` (ONNX and pt2): dynamic height and width, for the sizes the metadata's
    ``dynamic_size`` entry names (:func:`darkcfg.dynamic_size.size_rule`; a model whose layers
    cannot follow the input size is refused, naming the layer).
    """
    cfg = Path(cfg)
    suffix = {"pt2": ".pt2", "torchscript": ".torchscript.pt", "onnx": ".onnx", "weights": ".weights"}.get(to)
    if suffix is None:
        raise DarkcfgError(f"unknown export format {to!r} (pt2, torchscript, onnx or weights)")
    out = Path(out) if out else cfg.with_name(cfg.stem + suffix)
    if nms and to == "pt2":
        raise DarkcfgError("--nms is available for ONNX (standard NonMaxSuppression) and TorchScript (Darknet's "
                           "NMS as a scripted loop); for pt2 export with --decode and run darkcfg.detect.nms or "
                           "torchvision.ops.batched_nms on it")
    if not 0 <= thresh <= 1 or not 0 <= nms_thresh <= 1 or max_det < 1 or batch < 1:
        raise DarkcfgError("thresh and nms thresh must be in [0, 1], max_det and batch at least 1")
    if dynamic_size and to not in ("onnx", "pt2"):
        raise DarkcfgError(f"--dynamic-size is available for ONNX and pt2 only: {to} exports are traced at one size "
                           "(use --size W H to choose it)")
    model = load(cfg, weights, size=size)
    rule = None
    if dynamic_size:
        from .dynamic_size import size_rule

        rule = size_rule(model)  # before any writing: a model that cannot follow the size is refused
    if to == "weights":
        model.save_weights(out)
        return out
    decode = decode or nms
    if fuse:
        model.fuse()
    model.eval()
    wrapped, output_names, post = _wrap(model, decode, nms, thresh, nms_thresh, max_det, to == "torchscript")
    meta = build_metadata(model, _names(model, names), output_names, post)
    axes = _onnx_axes(model, output_names, decode, nms, dynamic, rule) if to == "onnx" else None
    if rule is not None:
        meta["dynamic_size"] = rule.as_metadata()
    example = torch.rand(batch, model.channels, model.height, model.width)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {EXTRA_FILE: json.dumps(meta)}

    def write(tmp: str) -> None:
        with torch.no_grad():
            if to == "pt2":
                # An example batch of 1 would be specialised (size-1 dims are special to export).
                sample = example.repeat(2, 1, 1, 1) if batch == 1 and dynamic else example
                shapes = _pt2_shapes(dynamic, rule)
                with dynamic_hw() if rule is not None else contextlib.nullcontext():
                    program = torch.export.export(wrapped, (sample,), dynamic_shapes=shapes)
                torch.export.save(program, tmp, extra_files=extra)
            elif to == "torchscript":
                traced = torch.jit.trace(wrapped, example, check_trace=False)
                traced.save(tmp, _extra_files=extra)
            else:
                # Traced at batch 2 when dynamic: nothing can silently bake in a batch of 1.
                sample = example.repeat(2, 1, 1, 1) if batch == 1 and dynamic else example
                _export_onnx(wrapped, sample, tmp, output_names, axes, rule is not None)
                _optimize_onnx(tmp, optimize)
                add_onnx_metadata(tmp, meta)

    atomic_write(out, write)  # umask permissions for a new file, the old mode for a replaced one
    return out


def _wrap(model: Darknet, decode: bool, nms: bool, thresh: float, nms_thresh: float,
          max_det: int, scripted_nms: bool = False) -> tuple[nn.Module, list[str], Optional[dict]]:
    """The module to export, its output names and the metadata's ``postprocess`` entry."""
    if not decode:
        return _TupleOutputs(model).eval(), [f"output_{i}" for i in range(len(model.output_layers))], None
    from .detect_api import heads_from_graph
    from .export_heads import DecodeModel

    indices, heads = heads_from_graph(model.graph)
    specs = [model.graph.layers[i] for i in indices]
    net = model.graph.net
    wrapped = DecodeModel(model, heads, specs, net.width, net.height, nms, thresh, nms_thresh, max_det,
                          scripted_nms).eval()
    post: dict = {"boxes": "N x K x (4+1+C): x1, y1, x2, y2 (network-input pixels), objectness, class probabilities",
                  "nms_kind": wrapped.nms_kind}
    if nms:
        post.update({"thresh": thresh, "nms_thresh": nms_thresh, "max_det": max_det,
                     "detections": "N x max_det x 6: x1, y1, x2, y2, prob, class (zero-padded, best first)",
                     "count": "N: valid rows of detections",
                     "nms": (f"Darknet's {wrapped.nms_kind} NMS per class, as a scripted loop (exact)"
                             if scripted_nms else "ONNX NonMaxSuppression (IoU, per class)" + (
                                 f"; the cfg asks for {wrapped.nms_kind}, which ONNX cannot express: IoU NMS is used"
                                 if wrapped.nms_kind in ("diounms", "greedynms") else ""))})
        return wrapped, ["detections", "count"], post
    return wrapped, ["boxes"], post


def _names(model: Darknet, names: Optional[Sequence[str]]) -> list[str]:
    """Class names for the metadata: given, else found like ``run`` finds them (detectors) or indices."""
    if names is not None:
        return list(names)
    from .detect_api import resolve_names
    from .graph import HEAD_KINDS

    heads = [s for s in model.graph.layers if s.kind in HEAD_KINDS]
    classes = heads[0].attrs.classes if heads else model.graph.layers[model.output_layers[-1]].outputs
    try:
        return resolve_names(model.graph.path, classes)
    except DarkcfgError:
        return [str(k) for k in range(classes)]


def _pt2_shapes(dynamic: bool, rule: "Optional[SizeRule]") -> Optional[tuple[dict[int, Any], ...]]:
    """``torch.export`` dynamic shapes: the batch and, with a size rule, height and width as
    ``offset + step * k`` (k >= 1, and above the rule's minimum) up to 16384 pixels."""
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1024)} if dynamic else {}
    if rule is not None:
        for axis, n0, low, name in ((2, rule.height, rule.min_height, "h"), (3, rule.width, rule.min_width, "w")):
            offset = n0 % rule.step
            k = torch.export.Dim(f"{name}_steps", min=max(1, -(-(low - offset) // rule.step)),
                                 max=(16384 - offset) // rule.step)
            axes[axis] = rule.step * k + offset if offset else rule.step * k
    return (axes,) if axes else None


def _onnx_axes(model: Darknet, names: Sequence[str], decode: bool, nms: bool, dynamic: bool,
               rule: "Optional[SizeRule]") -> Optional[dict[str, dict[int, str]]]:
    """ONNX ``dynamic_axes``: the batch (``dynamic``) and, with a size rule, height and width of the
    input and of every output that follows them (``boxes``' count of candidates with ``--decode``)."""
    batch = {0: "batch"} if dynamic else {}
    if rule is None:
        return {"images": dict(batch), **{n: dict(batch) for n in names}} if dynamic else None
    from .dynamic_size import spatial_axes

    axes: dict[str, dict[int, str]] = {"images": {**batch, 2: "height", 3: "width"}}
    if nms:
        axes.update({n: dict(batch) for n in names})
    elif decode:
        axes[names[0]] = {**batch, 1: "candidates"}
    else:
        for name, (dyn_h, dyn_w) in zip(names, spatial_axes(model, rule)):
            axes[name] = dict(batch)
            if dyn_h:
                axes[name][2] = f"{name}_height"
            if dyn_w:
                axes[name][3] = f"{name}_width"
    return axes


def _export_onnx(model: nn.Module, example: Tensor, path: str, names: Sequence[str],
                 axes: Optional[dict[str, dict[int, str]]], dynamic_size: bool = False) -> None:
    """Legacy (TorchScript-based) exporter: fast, constant-folded, no onnxscript needed; its
    deprecation notice is silenced, every other warning (TracerWarnings included) stays.
    ``dynamic_size``: trace with height and width read from the input (:func:`dynamic_hw`)."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise DarkcfgError("ONNX export needs the 'onnx' package: pip install onnx") from exc
    with warnings.catch_warnings(), (dynamic_hw() if dynamic_size else contextlib.nullcontext()):
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*", category=DeprecationWarning)
        # Benign here: strided slices (separable max-pool) stay unfolded Slice nodes, and the NMS
        # gathers index with non-negative NonMaxSuppression output only.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1.*")
        warnings.filterwarnings("ignore", message=".*advanced indexing.*negative values.*")
        torch.onnx.export(model, (example,), path, input_names=["images"], output_names=list(names),
                          dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True)


def _optimize_onnx(path: str, optimize: Optional[bool]) -> None:
    """onnxscript's optimizer: constant folding, shape-op folding, dead-node removal (in place)."""
    if optimize is False:
        return
    try:
        import onnx
        import onnxscript.optimizer
    except ImportError as exc:
        if optimize:
            raise DarkcfgError("--optimize needs the 'onnxscript' package: pip install onnxscript") from exc
        return
    onnx.save(onnxscript.optimizer.optimize(onnx.load(path)), path)
