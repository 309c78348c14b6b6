"""The detection front-end: images in, Darknet's detections out.

This is ``darknet detector test`` as a function: preprocess exactly as Darknet
(:mod:`darkcfg.image`), run the network, decode every head and apply NMS the way
the last head asks (:mod:`darkcfg.detect`), then report boxes in original-image
pixels.  It glues the graph's head specs to the decoder's head descriptions, and
finds class names the way users expect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from .detect import (DetectionHead, Detection, Head, RegionHead, decode, head_classes, nms, nms_params,
                     to_pixel_list)
from .batching import image_items, prepared_batches, stack
from .errors import DarkcfgError, ImageBatchError, ImageError
from .graph import HEAD_KINDS, Graph
from .image import image_from_array, load_image, preprocess
from .names import BUILTIN
from .datafiles import DarknetTree, find_data_file, read_class_map, read_tree

if TYPE_CHECKING:
    from .model import Darknet


def heads_from_graph(graph: Graph, apply_map: bool = False) -> tuple[list[int], list[Head]]:
    """(layer indices, decoder heads) for every detection head of the network.

    A ``[region]`` with ``tree=`` (YOLO9000) gets the tree, read like Darknet's ``read_tree``
    (the file is looked up as given, beside the cfg, or one level up). Its ``map=`` is loaded into
    the head only with ``apply_map``: Darknet keeps the layer's map for training
    (``forward_region_layer``) and ``darknet detector test`` decodes with ``map = 0``, reporting
    tree nodes; ``apply_map=True`` decodes like ``darknet detector valid`` given that map (one class
    per map line, e.g. COCO's 80 for ``coco9k.map``).
    """
    indices: list[int] = []
    heads: list[Head] = []
    for spec in graph.layers:
        if spec.kind in ("yolo", "Gaussian_yolo"):
            heads.append(spec.attrs)  # the spec attrs are the decoder head (detect.YoloHead)
        elif spec.kind == "region":
            heads.append(_region_head(graph, spec, apply_map))
        elif spec.kind == "detection":
            heads.append(DetectionHead.from_attrs(spec.attrs))
        else:
            continue
        indices.append(spec.index)
    if not heads:
        raise DarkcfgError(f"{graph.path}: this network has no detection head ({', '.join(f'[{k}]' for k in HEAD_KINDS)}); "
                           "it is not a detector")
    return indices, heads


def _region_head(graph: Graph, spec: Any, apply_map: bool) -> RegionHead:
    a = spec.attrs
    tree: Optional[DarknetTree] = None
    class_map: Optional[tuple[int, ...]] = None
    if a.tree:
        tree = read_tree(find_data_file(a.tree, graph.path, spec, "tree"))
        if apply_map and a.map:
            class_map = read_class_map(find_data_file(a.map, graph.path, spec, "map"))
    try:
        return RegionHead.from_attrs(a, tree, class_map)
    except ValueError as exc:
        raise DarkcfgError(f"{spec.where}: {exc}") from exc


def _read_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _names_from_data(data_file: Path) -> Optional[Path]:
    """The ``names = ...`` entry of a Darknet ``.data`` file, resolved beside it or one level up."""
    for line in data_file.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "names" and value.strip():
            value_path = Path(value.strip())
            for cand in (value_path, data_file.parent / value_path, data_file.parent / value_path.name,
                         data_file.parent.parent / value_path):
                if cand.is_file():
                    return cand
    return None


def resolve_names(cfg_path: "str | os.PathLike", classes: int, names_file: "str | os.PathLike | None" = None,
                  fallback: Optional[Sequence[str]] = None) -> list[str]:
    """Class names: ``names_file``; else a ``.names``/``.data`` beside the cfg; else ``fallback``
    (e.g. a YOLO9000 tree's node names); else COCO (80) / VOC (20); else the class indices."""
    if names_file is not None:
        path = Path(names_file)
        if not path.is_file():
            raise DarkcfgError(f"{path}: class names file not found")
        names = _read_names(path)
    else:
        names = (_names_beside_cfg(Path(cfg_path), classes) or (list(fallback) if fallback else None)
                 or _builtin_names(classes))
    if len(names) < classes:
        names = names + [str(k) for k in range(len(names), classes)]
    return names


def _tree_node_names(heads: Sequence[Head], classes: int) -> Optional[list[str]]:
    """The node names (WordNet ids for 9k.tree) of an unmapped tree [region] head: what Darknet's
    ``9k.names`` lists in readable form; used when no names file is found."""
    for head in heads:
        if isinstance(head, RegionHead) and head.tree is not None and head.map is None:
            return list(head.tree.names[:classes])
    return None


def _names_beside_cfg(cfg: Path, classes: int) -> Optional[list[str]]:
    """The class names in the cfg's folder: ``<cfg stem>.names``, the ``names=`` of a ``.data``
    there, any other ``*.names``; the first with exactly ``classes`` lines wins.

    A longer file is taken where it is tied to this model -- ``<cfg stem>.names``, or a ``.data``
    whose ``classes=`` equals the model's -- since Darknet only indexes its first ``classes``
    lines: its ``imagenet1k.data`` names the 21,842-line ``imagenet.shortnames.list`` for
    1000-class models (the first 1000 lines are those classes, in Darknet's index order).
    """
    folder = cfg.resolve().parent
    stem_names = folder / (cfg.stem + ".names")
    candidates: list[tuple[Path, bool]] = [(stem_names, True)]  # (path, longer file allowed)
    position = 1
    for data in [folder / (cfg.stem + ".data")] + sorted(folder.glob("*.data")):
        if data.is_file():
            found = _names_from_data(data)
            if found is not None:
                candidates.insert(position, (found, _data_classes(data) == classes))
                position += 1
    candidates += [(path, False) for path in sorted(folder.glob("*.names")) if path != stem_names]
    longer_ones: list[list[str]] = []
    for path, longer in candidates:
        if path.is_file():
            names = _read_names(path)
            if len(names) == classes:
                return names
            if longer and len(names) > classes:
                longer_ones.append(names[:classes])
    return longer_ones[0] if longer_ones else None


def _data_classes(data_file: Path) -> Optional[int]:
    """The ``classes = N`` entry of a Darknet ``.data`` file (None when absent or not a number)."""
    for line in data_file.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "classes":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _builtin_names(classes: int) -> list[str]:
    table = BUILTIN.get(classes)
    return list(table) if table is not None else [str(k) for k in range(classes)]


def to_rgb_image(image: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """A path, a numpy array (BGR, as OpenCV gives it) or a CHW/HWC tensor -> HxWx3 uint8 RGB.

    ``max_pixels`` caps image files (see :func:`darkcfg.image.max_image_pixels`)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels=max_pixels)
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.dim() == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            arr = arr.permute(1, 2, 0)
        return image_from_array(arr.numpy(), bgr=False)  # tensors are RGB (torch convention)
    if isinstance(image, np.ndarray):
        return image_from_array(image, bgr=True)
    raise ImageError(f"cannot use an object of type {type(image).__name__} as an image "
                     "(give a path, a numpy array or a tensor)")


def rgb_images(images: Any) -> list[np.ndarray]:
    """One image or a list of them (paths, BGR arrays, CHW tensors, or an NCHW batch) as RGB uint8."""
    return [to_rgb_image(img) for img in image_items(images)]


class Detector:
    """Reusable detection front-end for one model (heads, names and NMS settled once)."""

    def __init__(self, model: "Darknet", names: Optional[Sequence[str]] = None,
                 names_file: "str | os.PathLike | None" = None, letterbox: Optional[bool] = None):
        self.model = model
        self.layer_indices, self.heads = heads_from_graph(model.graph)
        # Darknet.forward returns exactly the heads, in layer order (graph.output_indices).
        assert model.output_layers == self.layer_indices
        self.classes = head_classes(self.heads[0])
        if names is not None:
            self.names = list(names)
        else:
            self.names = resolve_names(model.graph.path, self.classes, names_file,
                                       fallback=_tree_node_names(self.heads, self.classes))
        self.letterbox = model.graph.net.letter_box if letterbox is None else letterbox
        self.nms_kind, self.beta_nms = nms_params(self.heads)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def __call__(self, images: Sequence[np.ndarray], thresh: float = 0.25, nms_thresh: float = 0.45,
                 hier_thresh: float = 0.5, max_det: Optional[int] = None) -> list[list[Detection]]:
        """Detections for a batch of RGB uint8 images (each list sorted like Darknet's printout)."""
        if not images:
            return []
        batch = torch.cat([self.prepare(img) for img in images])
        return self.infer(batch, [(img.shape[1], img.shape[0]) for img in images], thresh, nms_thresh, hier_thresh,
                          max_det)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """One RGB uint8 image -> its ``1x3xHxW`` network input (stretched or letterboxed)."""
        net = self.model.graph.net
        return preprocess(image, net.width, net.height, self.letterbox)

    def infer(self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], thresh: float = 0.25,
              nms_thresh: float = 0.45, hier_thresh: float = 0.5,
              max_det: Optional[int] = None) -> list[list[Detection]]:
        """Detections for a prepared batch; ``sizes`` are the original (width, height) of each image."""
        net = self.model.graph.net
        dtype = next(self.model.parameters(), torch.zeros(())).dtype
        with torch.no_grad():
            outs = self.model(batch.to(self.device, dtype))  # the heads, in layer order
        head_outs = [o.float() for o in outs]
        sizes = list(sizes)
        per_image = decode(head_outs, self.heads, net.width, net.height, sizes, thresh=thresh,
                           hier_thresh=hier_thresh, letterbox=self.letterbox)
        return [to_pixel_list(nms(d, nms_thresh, self.nms_kind, self.beta_nms), size, self.names, thresh,
                              max_det=max_det)
                for d, size in zip(per_image, sizes)]


def detect_images(model: "Darknet", images: Any, thresh: float = 0.25, nms: float = 0.45,
                  names: Optional[Sequence[str]] = None, letterbox: Optional[bool] = None,
                  batch_size: int = 8, on_error: str = "raise",
                  max_pixels: Optional[int] = None, max_det: Optional[int] = None) -> list[Optional[list[Detection]]]:
    """``Darknet.detect``: one list of :class:`Detection` per image, in input order.

    ``images``: a path, an array or tensor, or a list / iterable of them. They are read and
    preprocessed ``batch_size`` at a time (a list of 10,000 paths never holds more than one
    batch of decoded images). An image that cannot be read, decoded or preprocessed never stops
    the others: with ``on_error="raise"`` (default), every image is processed and then an
    :class:`~darkcfg.errors.ImageBatchError` (an :class:`ImageError`) naming the failed files is
    raised, carrying ``.results`` (``None`` at failed positions) and ``.errors``; with
    ``on_error="none"`` the list is returned with ``None`` at failed positions.
    ``max_pixels`` caps image files (see :func:`darkcfg.image.max_image_pixels`).
    ``max_det`` keeps at most that many (box, class) entries per image, those of highest prob
    (Darknet has no limit; ``None``, the default, keeps all).
    """
    detector = Detector(model, names=names, letterbox=letterbox)
    return run_streamed(image_items(images), detector.prepare,
                        lambda batch, sizes: detector.infer(batch, sizes, thresh=thresh, nms_thresh=nms,
                                                                      max_det=max_det),
                        batch_size, on_error, max_pixels)


def run_streamed(items: Iterable[Any], prepare: Callable[[np.ndarray], torch.Tensor],
                 infer: Callable[[torch.Tensor, list[tuple[int, int]]], list],
                 batch_size: int, on_error: str, max_pixels: Optional[int]) -> list:
    """Shared by detect and classify: stream, collect per-input results, report failures per ``on_error``."""
    if on_error not in ("raise", "none"):
        raise ValueError(f'on_error must be "raise" or "none", got {on_error!r}')
    results: list = []
    errors: dict[int, ImageError] = {}

    def failed(index: int, exc: ImageError) -> None:
        errors[index] = exc

    for batch in prepared_batches(items, prepare, max(1, batch_size), failed, max_pixels):
        outputs = infer(stack(batch), [p.size for p in batch])
        for prepared, output in zip(batch, outputs):
            results.extend([None] * (prepared.index - len(results)))
            results.append(output)
    total = max([len(results)] + [i + 1 for i in errors])
    results.extend([None] * (total - len(results)))
    if errors and on_error == "raise":
        if total == 1:
            raise next(iter(errors.values()))
        raise ImageBatchError(errors, results)
    return results
