"""Export a Darknet model: torch.export (``.pt2``), TorchScript, ONNX, or re-saved ``.weights``.

The exported graph is the fused inference model (BN folded into convs, as Darknet
runs it) taking N x C x H x W floats in [0, 1] and returning the output layers'
tensors (Darknet's ``l.output`` layout).  ``pt2`` and ``onnx`` keep the batch dimension
dynamic; TorchScript (deprecated by PyTorch, kept for older runtimes) is traced.  Exports
are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .errors import DarkcfgError
from .model import Darknet, load


class _TupleOutputs(nn.Module):
    """Wrap :class:`Darknet` so tracing sees a tuple (exporters dislike lists)."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(x))


def _atomic_target(out: Path) -> tuple[int, str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)


def export(cfg: "str | os.PathLike", weights: "str | os.PathLike | None", to: str, out: Optional[Path] = None,
           size: Optional[tuple[int, int]] = None, fuse: bool = True, batch: int = 1) -> Path:
    """Write ``cfg`` (+ ``weights``) as ``to`` in {"torchscript", "onnx", "weights"}; returns the path."""
    cfg = Path(cfg)
    suffix = {"pt2": ".pt2", "torchscript": ".torchscript.pt", "onnx": ".onnx", "weights": ".weights"}.get(to)
    if suffix is None:
        raise DarkcfgError(f"unknown export format {to!r} (pt2, torchscript, onnx or weights)")
    out = Path(out) if out else cfg.with_name(cfg.stem + suffix)
    model = load(cfg, weights, size=size)
    if to == "weights":
        model.save_weights(out)
        return out
    if fuse:
        model.fuse()
    example = torch.rand(batch, model.channels, model.height, model.width)
    wrapped = _TupleOutputs(model).eval()
    fd, tmp = _atomic_target(out)
    os.close(fd)
    try:
        with torch.no_grad():
            if to == "pt2":
                # An example batch of 1 would be specialised (size-1 dims are special to export).
                sample = example.repeat(2, 1, 1, 1) if batch == 1 else example
                batch_dim = torch.export.Dim("batch", min=1, max=1024)
                program = torch.export.export(wrapped, (sample,), dynamic_shapes=({0: batch_dim},))
                torch.export.save(program, tmp)
            elif to == "torchscript":
                traced = torch.jit.trace(wrapped, example, check_trace=False)
                traced.save(tmp)
            else:
                _export_onnx(wrapped, example, tmp, len(model.output_layers))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _export_onnx(model: nn.Module, example: Tensor, path: str, n_outputs: int) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise DarkcfgError("ONNX export needs the 'onnx' package: pip install onnx") from exc
    names = [f"output_{i}" for i in range(n_outputs)]
    torch.onnx.export(model, (example,), path, input_names=["images"], output_names=names,
                      dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                      opset_version=17, dynamo=False)
