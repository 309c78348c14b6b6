"""How ``optimize(dtype=torch.bfloat16)`` moves the detections of the real models in the shared corpus.

    python bench/bf16_agreement.py [--thresh 0.25]

For every cfg in ``darknet/real`` and ``darknet/yolo-fastest`` that has its real ``.weights``
beside it, each image of ``darknet/data`` is detected with fp32 ``optimize()`` and with bf16;
detections are paired greedily (same class, IoU >= 0.5, highest probability first).  Printed per
model: detections fp32 / bf16 / paired, and the largest probability change of a paired one.
(Classifiers: the largest change of any top-5 probability.)  bf16 on a CPU without
AVX512-BF16/AMX is emulated (slow) but numerically the same.

The bf16 side is the policy's bf16 even for the depthwise-heavy nets that ``optimize(dtype=bf16)``
keeps in float32 on the CPU (:func:`darkcfg.precision.keeps_float32`; the ``policy`` column says
which): what they would give in bf16, e.g. on a device where that rule does not apply.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import darkcfg  # noqa: E402
import darkcfg.precision  # noqa: E402
from darkcfg.graph import HEAD_KINDS  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402


def iou(a: Tuple[float, ...], b: Tuple[float, ...]) -> float:
    """IoU of two (x, y, w, h) centre boxes."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union > 0 else 0.0


def pair(ref: List[Any], out: List[Any]) -> Tuple[int, float]:
    """(paired count, largest |prob change| among pairs)."""
    left = list(out)
    n, worst = 0, 0.0
    for d in sorted(ref, key=lambda d: -d.prob):
        best = max((o for o in left if o.class_id == d.class_id), key=lambda o: iou(d.rel_box, o.rel_box),
                   default=None)
        if best is not None and iou(d.rel_box, best.rel_box) >= 0.5:
            left.remove(best)
            n += 1
            worst = max(worst, abs(d.prob - best.prob))
    return n, worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--thresh", type=float, default=0.25)
    args = p.parse_args()
    shared = shared_dir()
    if shared is None:
        print("the shared Darknet corpus was not found (set DARKCFG_SHARED)", file=sys.stderr)
        return 2
    darknet = shared / "darknet"
    images = sorted(str(p) for p in (darknet / "data").glob("*.jpg"))
    cfgs = sorted(darknet.glob("real/*.cfg")) + sorted(darknet.glob("yolo-fastest/*/*.cfg"))
    print(f"{len(images)} images, thresh {args.thresh}\n")
    print("| model | policy | detections fp32 / bf16 / paired | max prob change (paired) |")
    print("|---|---|---|---|")
    for cfg in cfgs:
        weights = cfg.with_suffix(".weights")
        if not weights.is_file():
            continue
        fp32 = darkcfg.load(cfg, weights).optimize()
        policy = "fp32 kept" if darkcfg.load(cfg, weights).optimize(dtype=torch.bfloat16).precision_note else "bf16"
        keeps = darkcfg.precision.keeps_float32
        darkcfg.precision.keeps_float32 = lambda model, dtype: None  # type: ignore[assignment]  # (bf16 regardless)
        try:
            bf16 = darkcfg.load(cfg, weights).optimize(dtype=torch.bfloat16)
        finally:
            darkcfg.precision.keeps_float32 = keeps  # type: ignore[assignment]
        if not any(s.kind in HEAD_KINDS for s in fp32.graph.layers):
            worst = 0.0
            for a, b in zip(fp32.classify(images), bf16.classify(images)):
                pb = {c.class_id: c.prob for c in b}
                worst = max(worst, max(abs(c.prob - pb.get(c.class_id, 0.0)) for c in a))
            print(f"| {cfg.stem} (classifier) | {policy} | top-5 | {worst:.4f} |", flush=True)
            continue
        nr = nb = npaired = 0
        worst = 0.0
        for a, b in zip(fp32.detect(images, thresh=args.thresh), bf16.detect(images, thresh=args.thresh)):
            n, w = pair(a or [], b or [])
            nr, nb, npaired, worst = nr + len(a or []), nb + len(b or []), npaired + n, max(worst, w)
        print(f"| {cfg.stem} | {policy} | {nr} / {nb} / {npaired} | {worst:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
