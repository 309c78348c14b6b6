"""Speed of darkcfg vs OpenCV's Darknet importer, measured side by side in one run.

    python bench/speed.py [--iters 5] [--batch 1] [--shared ../shared]

For each model, darkcfg (BN unfused, BN fused) and OpenCV DNN run interleaved in the
same process on the same input (see darkcfg/bench.py); the ratio column is OpenCV's
median time divided by that of darkcfg's ``optimize()`` (fused BN, NHWC for
depthwise nets); > 1 means darkcfg is faster.  Models come from the
shared Darknet corpus; Yolo-Fastest uses its real weights, the others well-scaled
synthetic weights (speed does not depend on the values once they are finite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darkcfg.bench import run_bench  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402

MODELS = [
    ("yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1.cfg", "yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1.weights", None),
    ("cfg/yolov4-tiny.cfg", None, (416, 416)),
    ("csp-cfg/csdarknet53.cfg", None, (256, 256)),
    ("cfg/csresnext50-panet-spp.cfg", None, (416, 416)),
    ("cfg/yolov4.cfg", None, (416, 416)),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--shared", type=Path, default=None)
    args = p.parse_args()
    shared = args.shared or shared_dir()
    if shared is None:
        print("the shared Darknet corpus was not found (set DARKCFG_SHARED)", file=sys.stderr)
        return 2
    darknet = shared / "darknet"
    print(f"{'model':<26} {'input':>12} {'unfused ms':>11} {'fused ms':>9} {'NHWC ms':>8} {'optimize()':>10} {'OpenCV ms':>10} "
          f"{'OpenCV/optimize()':>18}")
    for cfg, weights, size in MODELS:
        r = run_bench(str(darknet / cfg), str(darknet / weights) if weights else None, size=size,
                      batch=args.batch, iters=args.iters, channels_last=True)
        med = r["median_ms"]
        cv = med.get("OpenCV DNN", float("nan"))
        fused = med["darkcfg (fused BN)"]
        best = med["darkcfg optimize()"]
        print(f"{Path(cfg).stem:<26} {args.batch}x{r['width']}x{r['height']:<4} {med['darkcfg (unfused BN)']:11.1f} "
              f"{fused:9.1f} {med['darkcfg (fused, NHWC)']:8.1f} {best:10.1f} {cv:10.1f} {cv / best:17.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
