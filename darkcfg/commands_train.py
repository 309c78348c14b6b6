"""``darkcfg train DATA CFG [WEIGHTS]``: argument definitions and the command itself."""

from __future__ import annotations

import argparse
import json


def add_train_parser(sub) -> None:
    """Register ``train`` on the CLI's subparsers (the only hook cli.py calls)."""
    sp = sub.add_parser("train", help="train/fine-tune a detector with Darknet's loss, SGD and augmentation",
                        description="Train like 'darknet detector train DATA CFG [WEIGHTS]'. Multi-process: "
                                    "torchrun --nproc_per_node N -m darkcfg train ...")
    sp.add_argument("data", help="Darknet .data file (classes, train, valid, names, backup)")
    sp.add_argument("cfg", help="network .cfg ([net] batch, subdivisions, learning rate, policy, augmentation)")
    sp.add_argument("weights", nargs="?", help="initial .weights (full, or a partial .conv.N file); "
                                               "its 'seen' resumes the iteration count")
    sp.add_argument("--clear", action="store_true", help="reset seen/iteration to 0 (start the schedule anew)")
    sp.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    sp.add_argument("--workers", type=int, default=2, help="data-loader worker processes (default 2; 0 = in-process)")
    sp.add_argument("--out", help="checkpoint directory (default: the .data file's backup=)")
    sp.add_argument("--map", action="store_true", help="compute mAP on valid= periodically; keep <cfg>_best.weights")
    sp.add_argument("--seed", type=int, default=0, help="seed of image choice and augmentation (default 0)")
    sp.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                    help="mixed precision: float16 on CUDA, bfloat16 on CPU (auto: on for CUDA only)")
    sp.add_argument("--sync-bn", action="store_true", help="with torchrun on CUDA: batch-norm statistics over all "
                                                            "processes (PyTorch SyncBatchNorm)")
    sp.add_argument("--max-batches", type=int, help="override [net] max_batches")
    sp.add_argument("--batch", type=int, help="override [net] batch")
    sp.add_argument("--subdivisions", type=int, help="override [net] subdivisions")
    sp.add_argument("--sampling", choices=("random", "epoch"), default="random",
                    help="random: images drawn with replacement (Darknet); epoch: each image once per pass")
    sp.add_argument("--no-augment", action="store_true", help="plain resize, no jitter/colour/flip/mosaic")
    sp.add_argument("--overwrite", action="store_true", help="allow replacing an earlier run's checkpoints")
    sp.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    sp.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainOptions, train

    if args.workers < 0:
        raise SystemExit("darkcfg train: --workers must be >= 0")
    opts = TrainOptions(data=args.data, cfg=args.cfg, weights=args.weights, clear=args.clear, device=args.device,
                        workers=args.workers, out=args.out, map=args.map, seed=args.seed, amp=args.amp,
                        sync_bn=args.sync_bn, overwrite=args.overwrite, max_batches=args.max_batches,
                        batch=args.batch, subdivisions=args.subdivisions, augment=not args.no_augment, sampling=args.sampling)
    res = train(opts)
    summary = {"iterations": res.iterations, "seen": res.seen, "avg_loss": res.avg_loss,
               "images_per_s": res.images_per_s, "best_map": res.best_map,
               "saved": [str(p) for p in res.saved]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained to iteration {res.iterations} (seen {res.seen}), avg loss {res.avg_loss:.4f}, "
              f"{res.images_per_s:.1f} img/s; saved {summary['saved'][-1] if res.saved else 'nothing'}")
    return 0
