"""The detection data pipeline: Darknet's image list + ``labels/`` layout on a torch DataLoader.

Darknet draws every image of a batch at random (with replacement) and picks a new
network size every 10 iterations when the head has ``random=1``.  Both decisions are made
here in the main process by :class:`BatchPlan` (a batch sampler), which hands each
worker ``(index, width, height, seed)`` items, so any number of workers (and every DDP
rank) see the same sizes and a run is reproducible from ``--seed``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datafile import label_path_for
from ..datafile import read_labels as _read_labels
from ..errors import DarkcfgError, ImageError
from ..image import load_image
from .augment import Boxes, augment_image, mosaic
from .settings import TrainSettings

Item = Tuple[int, int, int, int]  # (image index, width, height, seed)


def read_labels(path: "str | os.PathLike") -> Boxes:
    """A Darknet label file as (N, 5) ``x, y, w, h, class`` (the layout ``Darknet.loss`` takes).

    Read by :func:`darkcfg.datafile.read_labels`: a missing file means "no objects" (Darknet
    trains on it as background); a malformed line is an error naming the file and line.
    """
    labels = _read_labels(path)
    return np.concatenate([labels.boxes, labels.classes[:, None].astype(np.float32)], axis=1).astype(np.float32)


class DetectionDataset(Dataset):
    """Images of a Darknet list with their labels, augmented per :class:`TrainSettings`.

    ``dataset[(index, w, h, seed)]`` -> ``(3 x h x w float tensor in [0, 1], (N, 5) boxes)``.
    A mosaic image (``mosaic=1``, half of the images) takes three more random images.
    An unreadable image is replaced by another one (with a warning), as Darknet skips it.
    """

    def __init__(self, images: Sequence["str | os.PathLike"], settings: TrainSettings, augment: bool = True):
        if not images:
            raise DarkcfgError("no training images")
        self.images = [Path(p) for p in images]
        self.settings = settings
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Tuple[np.ndarray, Boxes]:
        path = self.images[index]
        return load_image(path), read_labels(label_path_for(path))

    def _load_any(self, index: int, rng: np.random.Generator) -> Tuple[np.ndarray, Boxes]:
        for _ in range(10):
            try:
                return self.load(index)
            except ImageError as exc:
                warnings.warn(f"skipping unreadable training image: {exc}", stacklevel=2)
                index = int(rng.integers(len(self.images)))
        raise DarkcfgError("10 unreadable training images in a row; check the image list")

    def __getitem__(self, item: Item) -> Tuple[torch.Tensor, torch.Tensor]:
        index, w, h, seed = item
        rng = np.random.default_rng(seed)
        s = self.settings
        if not self.augment:  # the same pipeline with every random knob at its identity (letter_box kept)
            plain = replace(s, jitter=0.0, resize=1.0, flip=0, hue=0.0, saturation=1.0, exposure=1.0, blur=0,
                            mosaic=0)
            img, boxes, _ = augment_image(*self._load_any(index, rng), w, h, plain, rng)
        elif s.mosaic and rng.integers(2) == 0:
            others = [index] + [int(i) for i in rng.integers(len(self.images), size=3)]
            img, boxes = mosaic(lambda i: self._load_any(i, rng), others, w, h, s, rng)
        else:
            img, boxes, _ = augment_image(*self._load_any(index, rng), w, h, s, rng)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        return x, torch.from_numpy(boxes)


def collate(batch: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Stack the images (one size per mini-batch); targets stay a list of (N_i, 5) tensors."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def random_size(settings: TrainSettings, init_w: int, init_h: int, rng: np.random.Generator,
                largest: bool) -> Tuple[int, int]:
    """Darknet's ``random=`` multi-scale choice (``train_detector``), a multiple of ``resize_step``.

    ``largest``: the biggest size (Darknet uses it for the first window and the last 100
    iterations, so memory problems show at once).
    """
    coef = 1.4 if settings.random == 1.0 else settings.random
    step = settings.resize_step
    lo, hi = (1.0, coef) if coef >= 1.0 else (coef, 1.0)
    val = lo + (hi - lo) * rng.random()
    val = val if rng.integers(2) else 1.0 / val
    dim_w = int(round(val * init_w / step + 1)) * step
    dim_h = int(round(val * init_h / step + 1)) * step
    if val < 1 and (dim_w > init_w or dim_h > init_h):
        dim_w, dim_h = init_w, init_h
    if largest:
        dim_w = int(round(coef * init_w / step + 1)) * step
        dim_h = int(round(coef * init_h / step + 1)) * step
    return max(dim_w, step), max(dim_h, step)


@dataclass
class BatchPlan(Sampler):
    """Mini-batches of ``(index, w, h, seed)`` for iterations ``start_iteration..max_batches``.

    Every rank builds the same plan from ``seed`` and keeps its slice of each mini-batch
    (``rank::world`` is not used: contiguous shards keep per-rank batches equal in size).
    """

    n_images: int
    settings: TrainSettings
    width: int
    height: int
    start_iteration: int = 0
    seed: int = 0
    rank: int = 0
    world: int = 1
    sampling: str = "random"  # "random": Darknet's draw with replacement; "epoch": every image once per pass

    def __post_init__(self) -> None:
        if self.sampling not in ("random", "epoch"):
            raise DarkcfgError(f"sampling must be 'random' or 'epoch', got {self.sampling!r}")
        mb = self.settings.mini_batch
        if mb % self.world:
            raise DarkcfgError(f"mini-batch {mb} (batch/subdivisions) does not split over {self.world} processes")

    def __len__(self) -> int:
        return max(0, self.settings.max_batches - self.start_iteration) * self.settings.subdivisions

    def __iter__(self) -> Iterator[List[Item]]:
        s = self.settings
        rng = np.random.default_rng([self.seed, self.start_iteration])
        per_rank = s.mini_batch // self.world
        w, h = self.width, self.height
        for k, iteration in enumerate(range(self.start_iteration, s.max_batches)):
            if s.random and k % 10 == 0:
                largest = k == 0 or iteration > s.max_batches - 100
                w, h = random_size(s, self.width, self.height, rng, largest)
            for _ in range(s.subdivisions):
                idx = self._draw(rng, s.mini_batch)
                seeds = rng.integers(2**62, size=s.mini_batch)
                lo = self.rank * per_rank
                yield [(int(idx[i]), w, h, int(seeds[i])) for i in range(lo, lo + per_rank)]

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.sampling == "random":
            return rng.integers(self.n_images, size=n)
        out: List[int] = []
        while len(out) < n:
            if not getattr(self, "_queue", None):
                self._queue = list(rng.permutation(self.n_images))
            out.append(self._queue.pop(0))
        return np.asarray(out)
