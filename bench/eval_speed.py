"""Throughput of ``darkcfg map`` (images/s) on coco128, side by side in one run.

    python bench/eval_speed.py [--model yolo-fastest-1.1] [--images 128] [--shared ../shared]

Runs the map pass (decode at 0.005, NMS 0.45, Darknet append order) of a yolo-fastest model on
the shared coco128 images with a few loader/batch settings, then times where the time goes for
one batch: image loading + preprocessing, the forward pass, decode + NMS, and the scoring of the
whole set. Prints the CPU model and torch thread count beside the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import darkcfg  # noqa: E402
from darkcfg.datafile import list_images  # noqa: E402
from darkcfg.detect import decode, nms  # noqa: E402
from darkcfg.evaluation import MAP_DET_THRESH, MAP_NMS, _emit, collect  # noqa: E402
from darkcfg.image import load_image, preprocess  # noqa: E402
from darkcfg.bench import cpu_description  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolo-fastest-1.1", choices=["yolo-fastest-1.1", "yolo-fastest-1.1-xl"])
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--shared", type=Path, default=None)
    args = p.parse_args()
    shared = args.shared or shared_dir()
    if shared is None or not (shared / "datasets" / "coco128" / "valid.txt").is_file():
        print("shared/datasets/coco128 not found (set DARKCFG_SHARED)", file=sys.stderr)
        return 2
    data_dir = shared / "datasets" / "coco128"
    models = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
    images = list_images(data_dir / "valid.txt", root=data_dir)[: args.images]
    model = darkcfg.load(models / f"{args.model}.cfg", models / f"{args.model}.weights").fuse()
    print(f"CPU: {cpu_description()[0]}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.model}, {len(images)} coco128 images")
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "list.txt"
        lst.write_text("".join(f"{p}\n" for p in images))
        data = {"valid": str(lst), "names": str(models / "coco.names")}
        print(f"{'batch':>5} {'workers':>7} {'images/s':>9} {'seconds':>8}")
        for batch, workers in ((1, 0), (8, 0), (8, 1), (8, 2)):
            found = collect(model, data, batch=batch, workers=workers, progress=False)
            print(f"{batch:5d} {workers:7d} {len(images) / found.seconds:9.2f} {found.seconds:8.2f}", flush=True)
        t0 = time.perf_counter()
        for points in (0, 11, 101):
            found.score(points=points)
        score_s = (time.perf_counter() - t0) / 3

    # where the time goes, for one batch of 8
    from darkcfg.detect_api import Detector

    det = Detector(model)
    net = model.graph.net
    t0 = time.perf_counter()
    rgb = [load_image(p) for p in images[:8]]
    x = torch.cat([preprocess(im, net.width, net.height, det.letterbox) for im in rgb])
    t1 = time.perf_counter()
    with torch.inference_mode():
        outs = [o.float() for o in model(x)]
    t2 = time.perf_counter()
    decoded = decode(outs, det.heads, net.width, net.height, [(1, 1)] * len(rgb), thresh=MAP_DET_THRESH)
    for d in decoded:
        pre = d.select(d.objectness != 0)
        _emit(pre, nms(pre, MAP_NMS, det.nms_kind, det.beta_nms))
    t3 = time.perf_counter()
    per = 1000 / len(rgb)
    print(f"per image (batch of 8, in-process): load+preprocess {(t1 - t0) * per:.1f} ms, forward "
          f"{(t2 - t1) * per:.1f} ms, decode+NMS+order {(t3 - t2) * per:.1f} ms; scoring all {len(images)} "
          f"images: {score_s * 1000:.0f} ms per variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
