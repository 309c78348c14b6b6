"""``darkcfg map`` and ``darkcfg valid``: the command-line side of :mod:`darkcfg.evaluation`.

``cli.py`` only calls :func:`register`; the commands' options and logic live here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .cli_types import nonneg_int, positive_int
from .metrics import MAP_POINTS

if TYPE_CHECKING:
    from .model import Darknet


def _fraction(name: str, low_open: bool) -> "Callable[[str], float]":
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not ((0.0 < v if low_open else 0.0 <= v) and v < 1.0):
            raise argparse.ArgumentTypeError(f"{name} must be in {'(' if low_open else '['}0, 1), got {v}")
        return v
    return parse


def _load_model(args: argparse.Namespace) -> "Darknet":
    from .locate import find_weights, resolve_cfg
    from .model import load

    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, args.weights)
    # Darknet's map/valid run fuse_conv_batchnorm too: same numbers, faster.
    return load(cfg, weights, device=args.device).fuse()


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("data", metavar="DATA", help="Darknet .data file (valid=, names=, eval=, results=)")
    sp.add_argument("cfg", metavar="CFG", help="a .cfg file or a zoo model name")
    sp.add_argument("weights_file", nargs="?", metavar="WEIGHTS",
                    help="the .weights file (Darknet's order: DATA CFG WEIGHTS; default: <cfg stem>.weights beside "
                         "the cfg, then the weights store)")
    sp.add_argument("--weights", help="the same, as an option")
    sp.add_argument("--root", help="folder the .data's relative paths are relative to (Darknet's working "
                                   "directory; default: the current one, then each file's own folder)")
    sp.add_argument("--letterbox", action="store_true", default=None,
                    help="letterbox the images (default: the cfg's letter_box, as Darknet does)")
    sp.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    sp.add_argument("--workers", type=nonneg_int, default=None,
                    help="image-loading processes (default: one per spare core, at most 4; 0: none)")
    sp.add_argument("--device", default="cpu")


def cmd_map(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    model = _load_model(args)
    result = evaluate(model, args.data, points=args.points, iou_thresh=args.iou_thresh, thresh=args.thresh,
                      batch=args.batch, letterbox=args.letterbox, workers=args.workers, root=args.root)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.report())
    print(f"darkcfg map: {result.images} images in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s)",
          file=sys.stderr)
    return 0


def cmd_valid(args: argparse.Namespace) -> int:
    from .evaluation import write_valid_results

    model = _load_model(args)
    written = write_valid_results(model, args.data, Path(args.out) if args.out else None, batch=args.batch,
                                  letterbox=args.letterbox, workers=args.workers, root=args.root,
                                  overwrite=args.overwrite)
    for path in written:
        print(path)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the ``map`` and ``valid`` subcommands to the ``darkcfg`` parser."""
    sp = sub.add_parser("map", help="mAP on a Darknet dataset, as `darknet detector map` prints it")
    _common(sp)
    sp.add_argument("--points", type=int, choices=MAP_POINTS, default=0,
                    help="0: area under the PR curve (Darknet's default), 11: VOC2007, 101: COCO")
    sp.add_argument("--iou-thresh", type=_fraction("--iou-thresh", True), default=0.5,
                    help="IoU a detection must exceed to match a label (default 0.5)")
    sp.add_argument("--thresh", type=_fraction("--thresh", False), default=0.25,
                    help="confidence for the TP/FP/FN, precision/recall/F1 and average-IoU line (default 0.25)")
    sp.add_argument("--json", action="store_true", help="one JSON object (fractions, not percent)")
    sp.set_defaults(func=cmd_map)

    sp = sub.add_parser("valid", help="write detections for offline scoring, as `darknet detector valid`: "
                                      "coco_results.json (eval=coco) or comp4_det_test_<class>.txt")
    _common(sp)
    sp.add_argument("--out", help="output folder (default: the .data's results=, else ./results)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing result files")
    sp.set_defaults(func=cmd_valid)

