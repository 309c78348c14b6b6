"""Classification front-end: ``darknet classifier predict`` as a function.

Preprocessing is Darknet's (``resize_min`` to the network width, then a centre crop,
edges repeated), the network output is the last layer's (the [softmax]), and the top-k
ranking keeps Darknet's tie rule (``top_k``: the earlier class wins a tie).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from .batching import image_items
from .detect_api import resolve_names, run_streamed
from .errors import DarkcfgError
from .graph import HEAD_KINDS
from .image import classifier_preprocess

if TYPE_CHECKING:
    from .model import Darknet


@dataclass(frozen=True)
class Classification:
    class_id: int
    name: str
    prob: float


class Classifier:
    """Reusable classification front-end for one model (names and output settled once)."""

    def __init__(self, model: "Darknet", names: Optional[Sequence[str]] = None,
                 names_file: "str | os.PathLike | None" = None):
        graph = model.graph
        if any(s.kind in HEAD_KINDS for s in graph.layers):
            raise DarkcfgError(f"{graph.path}: this network is a detector; use detect / `darkcfg run` detection")
        self.model = model
        self.output_index = graph.output_indices[-1]
        self.classes = graph.layers[self.output_index].outputs
        self.names = list(names) if names is not None else resolve_names(graph.path, self.classes, names_file)

    def __call__(self, images: Sequence[np.ndarray], top: int = 5) -> list[list[Classification]]:
        return self.infer(torch.cat([self.prepare(img) for img in images]), top)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """One RGB uint8 image -> its ``1x3xHxW`` input (``resize_min`` + centre crop)."""
        net = self.model.graph.net
        return classifier_preprocess(image, net.width, net.height)

    def infer(self, batch: torch.Tensor, top: int = 5) -> list[list[Classification]]:
        """Top classes for a prepared batch."""
        param = next(self.model.parameters(), torch.zeros(()))
        with torch.no_grad():
            out = self.model(batch.to(param.device, param.dtype))[-1]
        scores = out.reshape(out.shape[0], -1).float().cpu().numpy()
        k = max(1, min(top, scores.shape[1]))
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]  # stable: ties keep the lower index first
            results.append([Classification(int(i), self.names[i], float(row[i])) for i in order])
        return results


def classify_images(model: "Darknet", images: Any, top: int = 5, names: Optional[Sequence[str]] = None,
                    batch_size: int = 8, on_error: str = "raise",
                    max_pixels: Optional[int] = None) -> list[Optional[list[Classification]]]:
    """``Darknet.classify``: the top-``top`` classes of each image (paths, arrays or tensors),
    streamed ``batch_size`` at a time; failed images are reported as in
    :func:`darkcfg.detect_api.detect_images` (``on_error``)."""
    classifier = Classifier(model, names=names)
    return run_streamed(image_items(images), classifier.prepare, lambda batch, sizes: classifier.infer(batch, top),
                        batch_size, on_error, max_pixels)
