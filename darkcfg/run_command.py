"""``darkcfg run``: detect (or classify) in images, folders, globs and videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import DarkcfgError
from .inputs import expand_inputs, is_video
from .locate import find_weights, resolve_cfg
from .progress import Progress
from .results import is_classification, print_result

HEADS = ("yolo", "Gaussian_yolo", "region", "detection")


def make_predictor(model: Any, args: argparse.Namespace) -> Callable[[list], list]:
    """A function from a list of RGB images to their results: detections, or top classes for a classifier."""
    from .classify import Classifier
    from .detect_api import Detector

    if any(s.kind in HEADS for s in model.graph.layers):
        detector = Detector(model, names_file=args.names, letterbox=True if args.letterbox else None)
        return lambda imgs: detector(imgs, thresh=args.thresh, nms_thresh=args.nms)
    classifier = Classifier(model, names_file=args.names)  # `darknet classifier predict`
    return lambda imgs: classifier(imgs, top=args.top)


def run(args: argparse.Namespace, size: Optional[tuple[int, int]]) -> int:
    import torch

    from .draw import write_annotated
    from .image import load_image
    from .model import load
    from .video import run_video

    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, args.weights)
    model = load(cfg, weights, size=size, device=args.device).optimize()
    if args.half:
        if str(args.device).startswith("cpu"):
            raise DarkcfgError("--half (fp16) needs a CUDA device (--device cuda); on CPU fp16 is slower, not faster")
        model = model.half()
    predict = make_predictor(model, args)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(args.inputs)
    images = [p for p in paths if not is_video(p)]
    videos = [p for p in paths if is_video(p)]
    failures = 0
    progress = Progress(len(images), "images", enabled=None if len(images) > 4 else False)
    loaded: list[tuple[Path, Any]] = []

    def flush() -> None:
        results = predict([img for _, img in loaded])
        for (path, img), result in zip(loaded, results):
            print_result(args.json, path, img, result)
            if out_dir and not is_classification(result):
                write_annotated(out_dir / (path.stem + ".jpg"), img, result)
        progress.update(len(loaded))
        loaded.clear()

    with torch.inference_mode():
        for path in images:
            try:
                loaded.append((path, load_image(path)))
            except DarkcfgError as exc:
                failures += 1
                print(f"darkcfg run: skipped {exc}", file=sys.stderr)
                continue
            if len(loaded) >= args.batch:
                flush()
        if loaded:
            flush()
        progress.close()
        for path in videos:
            failures += run_video(path, predict, args.json, out_dir)
    if failures:
        print(f"darkcfg run: {failures} of {len(paths)} inputs failed", file=sys.stderr)
    return 1 if failures else 0
