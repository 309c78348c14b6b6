"""Streaming images into network batches, one bad image never costing the others.

``Darknet.detect(list_of_10k_paths)`` and ``darkcfg run`` both go through :func:`prepared_batches`:
inputs are decoded and preprocessed lazily, ``batch_size`` at a time, so memory holds one batch
(not every decoded image); a file that cannot be read, decoded or preprocessed is reported as an
:class:`ImageError` naming it, through ``on_fail``, and the stream carries on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from .errors import ImageError


@dataclass
class Prepared:
    """One input ready for the network: its position, its label, the RGB image and the network tensor."""

    index: int
    source: Any
    image: np.ndarray
    tensor: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def image_items(images: Any) -> Iterable[Any]:
    """One image or many (list, tuple, generator, NCHW tensor) as an iterable of single images,
    without decoding anything."""
    if isinstance(images, (str, os.PathLike, np.ndarray)) or (
            isinstance(images, torch.Tensor) and images.dim() == 3):
        return [images]
    if isinstance(images, torch.Tensor):
        return iter(images)  # NCHW: one CHW image at a time
    return images


def describe(item: Any, index: int) -> str:
    """How an error names an input: its path, else its position."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image {index}"


def prepare_one(item: Any, index: int, prepare: Callable[[np.ndarray], torch.Tensor],
                max_pixels: Optional[int] = None) -> Prepared:
    """Decode and preprocess one input; any failure becomes an :class:`ImageError` naming it."""
    from .detect_api import to_rgb_image

    name = describe(item, index)
    try:
        rgb = to_rgb_image(item, max_pixels=max_pixels)
        tensor = prepare(rgb)
    except ImageError as exc:
        text = str(exc)
        raise ImageError(text if text.startswith(name) else f"{name}: {text}") from exc
    except (ValueError, MemoryError, RuntimeError, OSError) as exc:  # numpy/OpenCV/torch on odd data
        raise ImageError(f"{name}: cannot preprocess image ({type(exc).__name__}: {exc})") from exc
    return Prepared(index, item, rgb, tensor)


def prepared_batches(items: Iterable[Any], prepare: Callable[[np.ndarray], torch.Tensor], batch_size: int,
                     on_fail: Callable[[int, ImageError], None],
                     max_pixels: Optional[int] = None) -> Iterator[list[Prepared]]:
    """Batches of up to ``batch_size`` prepared inputs, in input order; failures go to ``on_fail``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[Prepared] = []
    for index, item in enumerate(items):
        try:
            batch.append(prepare_one(item, index, prepare, max_pixels))
        except ImageError as exc:
            on_fail(index, exc)
            continue
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def stack(batch: list[Prepared]) -> torch.Tensor:
    return torch.cat([p.tensor for p in batch])
