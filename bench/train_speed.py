"""Training throughput of ``darkcfg train``'s step: images/s per batch size, on this machine.

    python bench/train_speed.py [--cfg CFG] [--weights W] [--size 320] [--batches 1,2,4,8]
                                [--iters 3] [--threads N] [--device cpu|cuda] [--amp]

One timed iteration = what the loop does per mini-batch and update: Darknet's training
forward (train-mode BN, the loss layers' deltas), the backward, and one DarknetSGD update,
on a fixed random batch with two boxes per image (data loading excluded: it runs in
DataLoader workers in parallel).  Default model: Yolo-Fastest 1.1 with its real weights from
the shared corpus, else darkcfg's own cfgs/tiny-train.cfg.  Prints the CPU/GPU name beside
the numbers; the median of ``--iters`` timed iterations after one warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import darkcfg  # noqa: E402
from darkcfg.bench import cpu_description  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402
from darkcfg.train.sgd import make_optimizer  # noqa: E402


def default_model() -> tuple[str, str | None]:
    shared = shared_dir()
    if shared is not None:
        d = shared / "darknet" / "yolo-fastest" / "yolo-fastest-1.1_coco"
        if (d / "yolo-fastest-1.1.weights").exists():
            return str(d / "yolo-fastest-1.1.cfg"), str(d / "yolo-fastest-1.1.weights")
    return str(REPO / "cfgs" / "tiny-train.cfg"), None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg")
    p.add_argument("--weights")
    p.add_argument("--size", type=int, help="network width = height (default: the cfg's)")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, weights = (args.cfg, args.weights) if args.cfg else default_model()
    dev = torch.device(args.device)
    model = darkcfg.load(cfg, weights, device=dev).train()
    w = h = args.size or None
    w, h = (w or model.width), (h or model.height)
    opt = make_optimizer(model, 0.9, 0.0005, 1)
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_description()[0]
    print(f"{Path(cfg).name} @ {w}x{h}, device {dev} ({hw}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, amp={'on' if args.amp else 'off'}")
    print(f"{'batch':>5} {'ms/iter':>9} {'images/s':>9}")
    for b in [int(v) for v in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        x = torch.rand(b, model.channels, h, w, generator=g).to(dev)
        targets = [torch.tensor([[0.3, 0.4, 0.2, 0.3, 0], [0.7, 0.6, 0.4, 0.3, 1]], device=dev) for _ in range(b)]
        amp = torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16)
        times = []
        for i in range(args.iters + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with amp if args.amp else contextlib.nullcontext():
                res = model.loss(x, targets)
            res.loss.float().backward()
            opt.step(lr=1e-6, batch=b)
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        print(f"{b:>5} {ms:>9.1f} {b / ms * 1000:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
