"""Evaluate a detector on a Darknet dataset: ``darknet detector map`` and ``detector valid``.

:func:`evaluate` gives the numbers ``darknet detector map`` prints (as an :class:`Evaluation`);
:func:`write_valid_results` writes the files ``darknet detector valid`` writes. Both run the
network the way Darknet's evaluation does:

* each image is decoded (OpenCV here, stb_image in Darknet's default build: a few grey levels
  apart, see :mod:`darkcfg.image`) and stretch-resized to the network size with Darknet's
  bilinear resize, or letterboxed when the cfg says ``letter_box=1`` (or ``letterbox=True``);
* ``map`` keeps candidates with objectness and ``objectness * class`` above **0.005** and applies
  NMS at **0.45**; ``valid`` uses **0.001** and **0.6**; both use the ``nms_kind`` of the last
  detection head, through the public :func:`darkcfg.detect.decode` / :func:`darkcfg.detect.nms`;
* detections are listed in Darknet's post-NMS array order -- the NMS sorts the box array by each
  class's prob in turn with a stable sort, so the final order is a lexicographic sort on the
  probs of class C-1, C-2, ..., 0 -- then by class. That order decides which duplicate "uses up"
  a label in the conf-thresh TP/FP line (see :mod:`darkcfg.metrics`).

Images are read and preprocessed by a ``DataLoader`` (``workers`` processes) while the network
runs on batches of ``batch`` images; decoding and NMS are tensor operations per image.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .datafile import (DataFile, Labels, image_id_from_path, label_path_for, list_images, parse_data_file,
                       read_labels)
from .detect import Detections, decode, nms
from .errors import DarkcfgError, ImageError
from .fileio import atomic_write_text
from .label_files import COCO_CATEGORY_IDS  # noqa: F401  (detector.c coco_ids; re-exported)
from .metrics import MAP_POINTS, ImageDetections, MapScore, score_detections
from .progress import Progress

if TYPE_CHECKING:
    from .model import Darknet

MAP_DET_THRESH = 0.005  # validate_detector_map: `const float thresh = .005`
MAP_NMS = 0.45
VALID_DET_THRESH = 0.001  # validate_detector (commit 59596d7)
VALID_NMS = 0.6

DataArg = Union[str, "os.PathLike[str]", DataFile, Mapping[str, Any]]


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation(MapScore):
    """:class:`darkcfg.metrics.MapScore` (mAP, per-class AP and TP/FP, the conf-thresh line) plus
    how the run went: ``images`` evaluated, ``seconds`` of inference wall time and
    ``images_per_s``."""

    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(images=self.images, seconds=self.seconds, images_per_s=self.images_per_s)
        return d


@dataclass
class Collected:
    """The detections of one pass over a dataset, ready to be scored any number of ways (points,
    IoU threshold, conf threshold) and/or written as ``valid`` results, without running the
    network again.

    ``detections``: per image, what ``detector map`` lists (0.005 / NMS 0.45), or ``None`` when
    not collected; ``valid_detections``: what ``detector valid`` writes (0.001 / NMS 0.6), or
    ``None``. Boxes are relative to the image; ``sizes`` are the images' (w, h).
    """

    detections: Optional[list[ImageDetections]]
    valid_detections: Optional[list[ImageDetections]]
    labels: list[Labels]
    difficult: Optional[list[Labels]]
    classes: int
    names: list[str]
    images: list[Path]
    sizes: list[tuple[int, int]]
    seconds: float
    datafile: DataFile

    def score(self, *, points: int = 0, iou_thresh: float = 0.5, thresh: float = 0.25,
              exact_recall_levels: bool = False) -> Evaluation:
        """Darknet's ``detector map`` numbers for these detections (see :func:`evaluate`)."""
        if self.detections is None:
            raise DarkcfgError("these results were collected without the map pass (collect(..., map=True))")
        _check_score_args(points, iou_thresh, thresh)
        s = score_detections(self.detections, self.labels, self.classes, self.names, points=points,
                             iou_thresh=iou_thresh, thresh=thresh, difficult=self.difficult,
                             exact_recall_levels=exact_recall_levels)
        values = {f.name: getattr(s, f.name) for f in fields(MapScore)}
        return Evaluation(**values, images=len(self.images), seconds=self.seconds)

    def valid_files(self) -> dict[str, str]:
        """File name -> content of what ``detector valid`` writes (see :func:`write_valid_results`)."""
        if self.valid_detections is None:
            raise DarkcfgError("these results were collected without the valid pass (collect(..., valid=True))")
        kind = self.datafile.eval.lower()
        if kind == "coco":
            unnamed = [p for p in self.images if not _numeric_stem(p)]
            if unnamed:
                warnings.warn(f"{len(unnamed)} of {len(self.images)} image names (e.g. {unnamed[0].name}) do not "
                              "start with a number: Darknet (and so darkcfg) gives them image_id 0 in "
                              "coco_results.json", stacklevel=2)
            return {"coco_results.json": _coco_json(self.valid_detections, self.images, self.sizes)}
        return _voc_files(self.valid_detections, self.images, self.sizes, self.names)

    def write_valid(self, out_dir: Union[str, "os.PathLike[str]"], overwrite: bool = False) -> list[Path]:
        """Write :meth:`valid_files` into ``out_dir`` atomically; never over an input of the run,
        and over an existing file only with ``overwrite``."""
        files = self.valid_files()
        targets = {Path(out_dir) / name: text for name, text in files.items()}
        protected = _inputs(self.datafile, self.images)
        for target in targets:
            _check_target(target, protected, overwrite)
        for target, text in targets.items():
            _atomic_write(target, text)
        return list(targets)


def _check_score_args(points: int, iou_thresh: float, thresh: float) -> None:
    if points not in MAP_POINTS:
        raise DarkcfgError(f"points must be one of {MAP_POINTS}, got {points}")
    if not 0.0 < iou_thresh < 1.0:
        raise DarkcfgError(f"iou_thresh must be in (0, 1), got {iou_thresh}")
    if not 0.0 <= thresh < 1.0:
        raise DarkcfgError(f"thresh must be in [0, 1), got {thresh}")


# --------------------------------------------------------------------------------------------
# dataset side
# --------------------------------------------------------------------------------------------


def _data_file(data: DataArg, root: Optional[Union[str, "os.PathLike[str]"]]) -> DataFile:
    if isinstance(data, DataFile):
        return data
    if isinstance(data, Mapping):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dataset.data"
            path.write_text("".join(f"{k}={v}\n" for k, v in data.items()), encoding="utf-8")
            parsed = parse_data_file(path, root=root)
        return parsed
    return parse_data_file(data, root=root)


def _names(data: DataFile, classes: int, fallback: Sequence[str]) -> list[str]:
    names = data.read_names() if data.names is not None else list(fallback)
    if len(names) < classes:
        raise DarkcfgError(f"{data.names or 'class names'}: {len(names)} names for a model with {classes} classes")
    return names[:classes]


def _valid_images(data: DataFile, root: Optional[Union[str, "os.PathLike[str]"]]) -> list[Path]:
    if data.valid is None:
        raise DarkcfgError(f"{data.path}: no 'valid=' entry (the list of images to evaluate)")
    return list_images(data.valid, root=root)


def load_ground_truth(images: Sequence[Path], classes: int) -> list[Labels]:
    """Every image's labels (Darknet's label layout). A missing label file means no objects, as in
    Darknet; if *no* image has a label file the layout is surely wrong, and that is an error."""
    label_paths = [label_path_for(p) for p in images]
    if not any(p.is_file() for p in label_paths):
        raise DarkcfgError(f"no label file found for any of the {len(images)} images (e.g. {label_paths[0]}); "
                           "Darknet looks for labels by rewriting /images/train2017/ -> /labels/train2017/ "
                           "(also val2017, train2014, val2014), /JPEGImages/ -> /labels/, and the extension -> .txt")
    return [read_labels(p, classes) for p in label_paths]


class _ImageSet(torch.utils.data.Dataset):
    """Images -> network input tensors (Darknet preprocessing); errors are returned, not raised,
    so that the main process reports the image by name."""

    def __init__(self, paths: Sequence[Path], net_w: int, net_h: int, letterbox: bool):
        self.paths, self.net_w, self.net_h, self.letterbox = list(paths), net_w, net_h, letterbox

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], tuple[int, int], Optional[str]]:
        from .image import load_image, preprocess

        try:
            img = load_image(self.paths[i])
        except ImageError as exc:
            return i, None, (0, 0), str(exc)
        x = preprocess(img, self.net_w, self.net_h, self.letterbox)[0]
        return i, x, (int(img.shape[1]), int(img.shape[0])), None


def _collate(items: list) -> list:
    return items


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 is a dependency; be lenient in workers
        pass


def default_workers() -> int:
    """Loader processes: one per spare core, at most 4 (Darknet's map uses 4 loader threads)."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------------------------
# model side
# --------------------------------------------------------------------------------------------


def darknet_array_order(probs: torch.Tensor) -> torch.Tensor:
    """Row order of Darknet's detection array after ``do_nms_sort``/``diounms_sort``.

    Those sort the array by ``prob[k]`` descending for k = 0..C-1 in turn, each time with glibc's
    stable merge sort and each time on the still-unsuppressed ``prob[k]``; the result is a
    lexicographic order on (prob[C-1], ..., prob[0]) descending, ties in emission order.
    ``probs`` are the gated probs *before* NMS.
    """
    keys = -probs.detach().cpu().double().numpy().T  # np.lexsort: last key is the primary one
    return torch.from_numpy(np.lexsort(keys).astype(np.int64)) if probs.shape[0] else torch.zeros(0, dtype=torch.int64)


def _emit(pre: Detections, post: Detections) -> ImageDetections:
    """Every (box, class) pair with prob > 0, in Darknet's append order."""
    order = darknet_array_order(pre.probs).to(post.probs.device)
    probs = post.probs[order]
    rows, cls = torch.nonzero(probs > 0, as_tuple=True)  # row-major: box by box, classes ascending
    return ImageDetections(post.boxes[order][rows].cpu().float().numpy(), cls.cpu().numpy().astype(np.int64),
                           probs[rows, cls].cpu().float().numpy())


class _Runner:
    """The detection pass shared by ``map`` and ``valid``."""

    def __init__(self, model: "Darknet", letterbox: Optional[bool]):
        from .detect_api import Detector

        self.model = model
        self.detector = Detector(model, letterbox=letterbox)
        self.letterbox = bool(self.detector.letterbox)
        self.classes = self.detector.classes
        net = model.graph.net
        self.net_w, self.net_h = net.width, net.height

    def run(self, images: Sequence[Path], passes: Sequence[tuple[float, float]], *, batch: int,
            workers: Optional[int], progress: Optional[bool], label: str
            ) -> Iterator[tuple[int, tuple[int, int], list[ImageDetections]]]:
        """Yield (image index, (w, h), one :class:`ImageDetections` per pass) per image, in order.

        Each pass is (detection threshold, NMS threshold) over the same forward output. Boxes
        are relative to the image (decoded with the true image size, which only matters when
        letterboxing: ``map`` passes w = h = 1 otherwise, and then no correction happens).
        """
        if batch < 1:
            raise DarkcfgError(f"batch must be at least 1, got {batch}")
        n_workers = default_workers() if workers is None else max(0, int(workers))
        loader = torch.utils.data.DataLoader(
            _ImageSet(images, self.net_w, self.net_h, self.letterbox), batch_size=batch, shuffle=False,
            num_workers=n_workers, collate_fn=_collate, worker_init_fn=_worker_init if n_workers else None,
            prefetch_factor=2 if n_workers else None, persistent_workers=False)
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        heads, kind, beta = self.detector.heads, self.detector.nms_kind, self.detector.beta_nms
        bar = Progress(len(images), label, progress)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for items in loader:
                    for _, x, _, err in items:
                        if err is not None:
                            raise DarkcfgError(err)
                    x = torch.stack([it[1] for it in items]).to(device, dtype)
                    outs = [o.float() for o in self.model(x)]
                    sizes = [it[2] for it in items]
                    per_pass = [decode(outs, heads, self.net_w, self.net_h, sizes, thresh=det_thresh,
                                       hier_thresh=0.5, letterbox=self.letterbox) for det_thresh, _ in passes]
                    for b, (index, _, size, _) in enumerate(items):
                        found = []
                        for (_, nms_thresh), decoded in zip(passes, per_pass):
                            dets = decoded[b]
                            pre = dets.select(dets.objectness != 0)
                            found.append(_emit(pre, nms(pre, nms_thresh, kind, beta)))
                        yield index, size, found
                    bar.update(len(items))
        finally:
            bar.close()
            self.model.train(was_training)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def collect(model: "Darknet", data: DataArg, *, map: bool = True, valid: bool = False, batch: int = 8,
            letterbox: Optional[bool] = None, workers: Optional[int] = None, progress: Optional[bool] = None,
            root: Optional[Union[str, "os.PathLike[str]"]] = None) -> Collected:
    """Run the model once over the ``valid=`` images of ``data`` and keep what ``detector map``
    (``map=True``) and/or ``detector valid`` (``valid=True``) would use; score with
    :meth:`Collected.score` and write with :meth:`Collected.write_valid`, as often as needed.
    Arguments as in :func:`evaluate`."""
    if not (map or valid):
        raise DarkcfgError("collect: nothing to do (map=False and valid=False)")
    datafile = _data_file(data, root)
    runner = _Runner(model, letterbox)
    names = _names(datafile, runner.classes, runner.detector.names)
    images = _valid_images(datafile, root)
    if valid:
        _check_valid_kind(datafile, runner.classes, names)
    labels = load_ground_truth(images, runner.classes) if map else []
    difficult = None
    if map and datafile.difficult is not None:
        dif_images = list_images(datafile.difficult, root=root)
        if len(dif_images) != len(images):
            raise DarkcfgError(f"{datafile.difficult}: {len(dif_images)} entries, but valid= lists {len(images)}")
        difficult = [read_labels(label_path_for(p), runner.classes) for p in dif_images]
    passes = ([(MAP_DET_THRESH, MAP_NMS)] if map else []) + ([(VALID_DET_THRESH, VALID_NMS)] if valid else [])
    found: list[list[ImageDetections]] = [[ImageDetections.empty()] * len(images) for _ in passes]
    sizes: list[tuple[int, int]] = [(0, 0)] * len(images)
    start = time.perf_counter()
    label = "map" if map else "valid"
    for index, size, per_pass in runner.run(images, passes, batch=batch, workers=workers, progress=progress,
                                            label=label):
        sizes[index] = size
        for slot, dets in zip(found, per_pass):
            slot[index] = dets
    seconds = time.perf_counter() - start
    return Collected(found[0] if map else None, found[-1] if valid else None, labels, difficult, runner.classes,
                     names, images, sizes, seconds, datafile)


def evaluate(model: "Darknet", data: DataArg, *, points: int = 0, iou_thresh: float = 0.5, thresh: float = 0.25,
             batch: int = 8, letterbox: Optional[bool] = None, workers: Optional[int] = None,
             progress: Optional[bool] = None, root: Optional[Union[str, "os.PathLike[str]"]] = None,
             exact_recall_levels: bool = False) -> Evaluation:
    """``darknet detector map``: mAP, per-class AP and the conf-thresh line of ``model`` on ``data``.

    Args:
        model: a :class:`darkcfg.Darknet` detector; it is run in eval mode under
            ``torch.inference_mode`` and left in the train/eval mode it came in (so a training
            loop can call this for ``_best.weights``). Fusing BN first (``model.fuse()``, as
            Darknet's ``map`` does) is faster and moves nothing beyond float rounding.
        data: a Darknet ``.data`` path, a parsed :class:`darkcfg.datafile.DataFile`, or a dict of
            its entries (``{"valid": "valid.txt", "names": "coco.names"}``). ``valid=`` lists the
            images; labels are found by Darknet's path rule (``images/train2017`` ->
            ``labels/train2017``, extension -> ``.txt``); ``names=`` names the classes
            (default: the model's names); an optional ``difficult=`` list is honoured.
        points: 0 = area under the PR curve (Darknet's default, VOC2010+), 11 = VOC2007,
            101 = COCO-style recall points.
        iou_thresh: IoU a detection must exceed to match a label (0.5; 0.75 for mAP@.75).
        thresh: confidence for the TP/FP/FN, precision/recall/F1 and average-IoU line (0.25).
        batch: images per forward pass.
        letterbox: ``None`` follows the cfg's ``letter_box``, as Darknet's ``map`` does.
        workers: image-loading processes (``None``: one per spare core, at most 4; 0: in-process).
        progress: progress bar on stderr; ``None`` shows it when stderr is a terminal.
        root: folder that relative paths in ``data`` are relative to (Darknet's working
            directory; default the current one, then each file's own folder).
        exact_recall_levels: for points 11/101, exact recall levels instead of the ``-Ofast``
            product Darknet's default build computes (see :mod:`darkcfg.metrics`).

    Returns:
        an :class:`Evaluation` (fractions, not percent); ``.report()`` gives Darknet's lines and
        ``.to_dict()`` the ``darkcfg map --json`` object. To score several ways from one pass,
        use :func:`collect` and :meth:`Collected.score`.

    Raises:
        DarkcfgError: a bad ``.data``/list/label file, a missing or undecodable image (named).
    """
    _check_score_args(points, iou_thresh, thresh)  # before the long pass, not after it
    found = collect(model, data, batch=batch, letterbox=letterbox, workers=workers, progress=progress, root=root)
    return found.score(points=points, iou_thresh=iou_thresh, thresh=thresh, exact_recall_levels=exact_recall_levels)


def write_valid_results(model: "Darknet", data: DataArg, out_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
                        *, batch: int = 8, letterbox: Optional[bool] = None, workers: Optional[int] = None,
                        progress: Optional[bool] = None, root: Optional[Union[str, "os.PathLike[str]"]] = None,
                        overwrite: bool = False) -> list[Path]:
    """``darknet detector valid``: write the detections of the ``valid=`` images for offline scoring.

    With ``eval=coco`` in the .data: ``coco_results.json``, a JSON array of
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in original-image pixels,
    ``image_id = atoi(file stem)`` and ``category_id`` COCO's (1..90 with gaps). Otherwise (VOC,
    Darknet's default): one ``comp4_det_test_<class name>.txt`` per class, lines ``<stem> <score>
    <xmin> <ymin> <xmax> <ymax>`` with Darknet's 1-based pixel corners. Detections are every
    (box, class) pair with ``objectness * class > 0.001`` surviving NMS at 0.6, as Darknet writes
    them. Files go to ``out_dir`` (default: the .data's ``results=``, else ``./results``), are
    written atomically, never replace an input of the run and replace an existing file only with
    ``overwrite`` (checked before the detection pass). Returns the paths written.
    """
    datafile = _data_file(data, root)
    out = Path(out_dir) if out_dir is not None else (datafile.results or Path("results"))
    images = _valid_images(datafile, root)
    protected = _inputs(datafile, images)
    kind = datafile.eval.lower()
    if kind == "voc":
        from .detect_api import Detector

        detector = Detector(model)
        names = _names(datafile, detector.classes, detector.names)
        planned = [f"comp4_det_test_{n}.txt" for n in names]
    else:
        planned = ["coco_results.json"]
    for name in planned:  # fail before the (long) detection pass, not after it
        _check_target(out / name, protected, overwrite)
    found = collect(model, datafile, map=False, valid=True, batch=batch, letterbox=letterbox, workers=workers,
                    progress=progress, root=root)
    return found.write_valid(out, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# valid output (validate_detector: print_cocos / print_detector_detections)
# --------------------------------------------------------------------------------------------


def _numeric_stem(path: Path) -> bool:
    """Whether C ``atoi`` finds a number at the start of the file name (else image_id 0)."""
    return re.match(r"\s*[+-]?\d", path.name.split(".", 1)[0]) is not None


def _check_valid_kind(datafile: DataFile, classes: int, names: Sequence[str]) -> None:
    kind = datafile.eval.lower()
    if kind not in ("coco", "voc"):
        raise DarkcfgError(f"{datafile.path}: eval={datafile.eval} is not supported by valid (use coco or voc)")
    if kind == "coco" and classes > len(COCO_CATEGORY_IDS):
        raise DarkcfgError(f"eval=coco maps class indices to COCO's 80 category ids; this model has {classes} classes")
    if kind == "voc":
        bad = [n for n in names if "/" in n or "\\" in n or n in ("", ".", "..")]
        if bad:
            raise DarkcfgError(f"class name {bad[0]!r} cannot be part of a file name (comp4_det_test_<name>.txt)")


def _c_float(v: np.ndarray) -> list[str]:
    """C ``%f`` of each value (6 decimals)."""
    return [f"{float(x):f}" for x in v]


def _pixel_sides(dets: ImageDetections, w: int, h: int) -> tuple[np.ndarray, ...]:
    """Box centre/size in pixels (``get_network_boxes`` with relative=0 multiplies in float), then
    the corners as Darknet computes them: ``float - float/2.`` is a double expression."""
    b = dets.boxes.astype(np.float32) * np.array([w, h, w, h], dtype=np.float32)
    x, y, bw, bh = (b[:, j].astype(np.float64) for j in range(4))
    return x - bw / 2.0, y - bh / 2.0, x + bw / 2.0, y + bh / 2.0


def _coco_json(per_image: Sequence[ImageDetections], images: Sequence[Path], sizes: Sequence[tuple[int, int]]
               ) -> str:
    """print_cocos: ``[x, y, w, h]`` from corners clipped to [0, W] x [0, H] (stored as float)."""
    lines: list[str] = []
    for dets, path, (w, h) in zip(per_image, images, sizes):
        if not len(dets):
            continue
        left, top, right, bottom = _pixel_sides(dets, w, h)
        xmin = np.maximum(left.astype(np.float32), np.float32(0))
        ymin = np.maximum(top.astype(np.float32), np.float32(0))
        xmax = np.minimum(right.astype(np.float32), np.float32(w))
        ymax = np.minimum(bottom.astype(np.float32), np.float32(h))
        image_id = image_id_from_path(path)
        cols = zip(_c_float(xmin), _c_float(ymin), _c_float(xmax - xmin), _c_float(ymax - ymin))
        for k, (bx, by, bw, bh), score in zip(dets.classes, cols, _c_float(dets.probs)):
            lines.append(f'{{"image_id":{image_id}, "category_id":{COCO_CATEGORY_IDS[k]}, '
                         f'"bbox":[{bx}, {by}, {bw}, {bh}], "score":{score}}}')
    # Darknet ends every entry with ",\n" and then overwrites the last ",\n"; an empty run gives "[]".
    return "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n"


def _voc_files(per_image: Sequence[ImageDetections], images: Sequence[Path], sizes: Sequence[tuple[int, int]],
               names: Sequence[str]) -> dict[str, str]:
    """print_detector_detections: ``<stem> <score> <xmin> <ymin> <xmax> <ymax>`` per class file, corners
    1-based and clipped to [1, W] x [1, H]."""
    lines: list[list[str]] = [[] for _ in names]
    for dets, path, (w, h) in zip(per_image, images, sizes):
        if not len(dets):
            continue
        left, top, right, bottom = _pixel_sides(dets, w, h)
        xmin = np.maximum((left + 1).astype(np.float32), np.float32(1))
        ymin = np.maximum((top + 1).astype(np.float32), np.float32(1))
        xmax = np.minimum((right + 1).astype(np.float32), np.float32(w))
        ymax = np.minimum((bottom + 1).astype(np.float32), np.float32(h))
        stem = os.fspath(path).rsplit("/", 1)[-1].rsplit("\\", 1)[-1].split(".", 1)[0]  # basecfg
        for k, score, x1, y1, x2, y2 in zip(dets.classes, _c_float(dets.probs), _c_float(xmin), _c_float(ymin),
                                            _c_float(xmax), _c_float(ymax)):
            lines[k].append(f"{stem} {score} {x1} {y1} {x2} {y2}\n")
    return {f"comp4_det_test_{name}.txt": "".join(ls) for name, ls in zip(names, lines)}


def _inputs(datafile: DataFile, images: Sequence[Path]) -> set[Path]:
    paths = [datafile.path, *images] + [p for p in (datafile.valid, datafile.names, datafile.difficult) if p]
    return {p.resolve() for p in paths}


def _check_target(path: Path, protected: set[Path], overwrite: bool) -> None:
    if path.resolve() in protected:
        raise DarkcfgError(f"{path}: refusing to overwrite an input of this run")
    if path.exists() and not overwrite:
        raise DarkcfgError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    if path.exists() and not path.is_file():
        raise DarkcfgError(f"{path}: exists and is not a file")


def _atomic_write(path: Path, text: str) -> None:
    """Never half a file: temporary file beside the target, then a rename (see :mod:`darkcfg.fileio`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
