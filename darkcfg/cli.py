"""The ``darkcfg`` command line: argparse and thin commands (``info``, ``run``, ``convert``, ...).

The work lives in small modules (info_table, inputs, locate, progress, results, video,
run_command); a command here only turns parsed arguments into one call.

Every subcommand that prints results has ``--json`` with a stable, documented
shape (see README).  Errors in user input are reported as one line naming the
file/line/layer, with exit code 2; a run where some inputs failed exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from .errors import DarkcfgError
from .info_table import info_json, info_lines
from .inputs import IMAGE_EXTS, VIDEO_EXTS, expand_inputs  # noqa: F401  (re-exported for callers of cli)
from .cli_types import nonneg_int, positive_int, unit_float
from .locate import find_weights, resolve_cfg, weights_argument
from .outputs import check_output_file
from .progress import Progress  # noqa: F401  (re-exported)


def _size(args: argparse.Namespace) -> Optional[tuple[int, int]]:
    return (args.size[0], args.size[1]) if getattr(args, "size", None) else None


# ------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from .cfg import read_cfg
    from .export_meta import MODEL_SUFFIXES, format_metadata, read_metadata
    from .graph import build_graph

    if Path(args.cfg).suffix in MODEL_SUFFIXES and Path(args.cfg).is_file():  # an exported model
        meta = read_metadata(args.cfg)
        print(json.dumps(meta) if args.json else "\n".join(format_metadata(args.cfg, meta)))
        return 0
    graph = build_graph(read_cfg(resolve_cfg(args.cfg)), size=_size(args))
    if args.json:
        print(json.dumps(info_json(graph, args.cfg)))
        return 0
    print("\n".join(info_lines(graph, args.cfg)))
    for w in graph.warnings + graph.unused_options():
        print(f"warning: {w}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from .run_command import run

    return run(args, _size(args))


# ---------------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    from .export import export

    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, args.weights) if (args.weights or not args.no_weights) else None
    # export's default name is beside the cfg; for --to weights that is the weights file being read
    target = Path(args.out) if args.out else (cfg.with_suffix(".weights") if args.to == "weights" else None)
    if target is not None:
        check_output_file(target, [cfg, weights])
    out = export(cfg, weights, args.to, Path(args.out) if args.out else None, size=_size(args),
                 fuse=not args.no_fuse, batch=args.batch, decode=args.decode, nms=args.nms, dynamic=args.dynamic,
                 thresh=args.thresh, nms_thresh=args.nms_thresh, max_det=args.max_det, optimize=args.optimize,
                 dynamic_size=args.dynamic_size)
    print(out)
    return 0


# ------------------------------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    cfg = resolve_cfg(args.cfg)
    try:
        weights: Optional[str] = str(find_weights(cfg, args.weights))
    except DarkcfgError:
        if args.weights:
            raise
        weights = None  # no weights anywhere: time with well-scaled synthetic ones
    result = run_bench(str(cfg), weights, size=_size(args), batch=args.batch, device=args.device,
                       iters=args.iters, warmup=args.warmup, opencv=not args.no_opencv, threads=args.threads,
                       bf16=args.bf16)
    if args.json:
        print(json.dumps(result))
    else:
        for line in result["lines"]:
            print(line)
    return 0


# -------------------------------------------------------------------------------------------- zoo
def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo_cli import cmd_zoo as run_zoo

    return run_zoo(args)


# ------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darkcfg", description="Run upstream Darknet cfg/weights in PyTorch.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    def weights_args(sp: argparse.ArgumentParser, default: str) -> None:
        """``[WEIGHTS]`` after the cfg (Darknet's order) or ``--weights``; :func:`main` merges them."""
        sp.add_argument("weights_file", nargs="?", metavar="WEIGHTS", help=f"the .weights file ({default})")
        sp.add_argument("--weights", help="the same, as an option")

    def size_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--size", nargs=2, type=positive_int, metavar=("W", "H"),
                        help="override the cfg's [net] width and height")

    sp = sub.add_parser("info", help="layer table, shapes, parameters and BFLOPs of a cfg; metadata of an "
                                     "exported .onnx/.pt2/TorchScript file")
    sp.add_argument("cfg", help="a .cfg file, a zoo model name, or an exported model")
    size_arg(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON object (documented in the README)")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("run", help="detect objects (or classify, for classifier cfgs) in images, folders, "
                                    "globs, videos, cameras or streams")
    sp.add_argument("cfg", help="a .cfg file or a zoo model name (see `darkcfg zoo list`)")
    sp.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files, folders (their images and videos), globs, video files, a camera index "
                         "(0) or a stream URL (rtsp://, http://, ...); a .weights file first is the weights "
                         "(Darknet's order: CFG WEIGHTS IMAGE...)")
    sp.add_argument("--weights", help="default: <cfg stem>.weights beside the cfg, then the weights store")
    sp.add_argument("--names", help="class names file (default: .names/.data beside the cfg, COCO, VOC)")
    sp.add_argument("--thresh", type=unit_float, default=0.25,
                    help="report detections with probability above this, in [0, 1] (default 0.25)")
    sp.add_argument("--nms", type=unit_float, default=0.45,
                    help="NMS IoU threshold in [0, 1] (default 0.45, as Darknet)")
    sp.add_argument("--classes", metavar="LIST",
                    help="keep only these classes: indices or names, comma-separated (e.g. 0,2 or person,car)")
    sp.add_argument("--max-det", type=positive_int, metavar="N",
                    help="keep at most N detections per image (the most probable)")
    sp.add_argument("--top", type=positive_int, default=5, help="classifiers: how many classes to print (default 5)")
    size_arg(sp)
    sp.add_argument("--letterbox", action="store_true", help="letterbox instead of stretching")
    sp.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    sp.add_argument("--half", action="store_true",
                    help="fp16 inference (CUDA; the heads and the layers feeding them stay fp32)")
    sp.add_argument("--bf16", action="store_true",
                    help="bfloat16 inference (CPUs with AVX512-BF16 or AMX; the heads and the layers feeding "
                         "them stay fp32, and so do depthwise-heavy nets of small convs)")
    sp.add_argument("--batch", type=positive_int, default=1, help="images per forward pass (default 1)")
    sp.add_argument("--threads", type=positive_int, metavar="N",
                    help="CPU threads for torch and OpenCV (default: the libraries' own choice)")
    sp.add_argument("--max-pixels", type=positive_int, metavar="N",
                    help="refuse image files above N pixels (default 268435456 = 2^28, "
                         "or $DARKCFG_MAX_IMAGE_PIXELS)")
    sp.add_argument("--out", metavar="DIR",
                    help="write annotated images/videos here, same names and formats as the inputs; "
                         "inputs are never overwritten")
    sp.add_argument("--overwrite", action="store_true",
                    help="let --out/--save-json replace existing files that are not inputs (default: refuse)")
    sp.add_argument("--save-txt", action="store_true",
                    help="also write Darknet/YOLO label files (class x y w h, relative) into --out")
    sp.add_argument("--save-conf", action="store_true", help="with --save-txt: add the probability as a 6th column")
    sp.add_argument("--save-json", metavar="FILE",
                    help="write all detections to one COCO-style results file")
    sp.add_argument("--coco-ids", action="store_true",
                    help="with --save-json: map 80-class COCO indices to COCO category ids (1..90)")
    sp.add_argument("--json", action="store_true", help="print one JSON object per input (line)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("convert", help="export to torch.export (.pt2), TorchScript, ONNX or .weights")
    sp.add_argument("cfg", help="a .cfg file or a zoo model name")
    weights_args(sp, "default: <cfg stem>.weights beside the cfg, then the weights store")
    sp.add_argument("--no-weights", action="store_true", help="export with random weights")
    sp.add_argument("--to", choices=["pt2", "torchscript", "onnx", "weights"], default="pt2",
                    help="output format (default pt2)")
    sp.add_argument("--out", help="output file (default: beside the cfg); its folder must exist")
    sp.add_argument("--batch", type=positive_int, default=1, help="batch size of the example input (default 1)")
    sp.add_argument("--no-fuse", action="store_true", help="keep batch norm unfused")
    sp.add_argument("--decode", action="store_true", help="end in decoded boxes N x K x (4+1+C): x1, y1, x2, y2 "
                    "in network-input pixels, objectness, class probabilities")
    sp.add_argument("--nms", action="store_true", help="(onnx, torchscript) also NMS: padded detections "
                    "N x max-det x 6 (x1, y1, x2, y2, prob, class) and count N; ONNX: standard IoU "
                    "NonMaxSuppression, TorchScript: the cfg's own NMS kind (DIoU ones too) as a scripted loop")
    sp.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                    help="dynamic batch axis (default on; height/width stay fixed unless --dynamic-size)")
    sp.add_argument("--dynamic-size", action="store_true",
                    help="(onnx, pt2) dynamic height/width too, exact at the sizes the graph allows (e.g. multiples "
                    "of 32; written in the metadata, shown by `darkcfg info`); refused for models whose layers "
                    "need one size. OpenCV 4.14's ONNX importer does not load it: use onnxruntime, or a "
                    "fixed-size export")
    sp.add_argument("--thresh", type=unit_float, default=0.25, help="with --nms: keep probabilities above this")
    sp.add_argument("--nms-thresh", type=unit_float, default=0.45, help="with --nms: IoU threshold")
    sp.add_argument("--max-det", type=positive_int, default=100, help="with --nms: rows of the detections tensor")
    sp.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                    help="(onnx) fold shape arithmetic with onnxscript's optimizer (default: when installed)")
    size_arg(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("bench", help="speed: darkcfg (fused/unfused) vs OpenCV's Darknet importer")
    sp.add_argument("cfg", help="a .cfg file or a zoo model name")
    weights_args(sp, "default: beside the cfg or in the store; else well-scaled random weights")
    size_arg(sp)
    sp.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    sp.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    sp.add_argument("--iters", type=positive_int, default=10, help="timed forward passes (default 10)")
    sp.add_argument("--warmup", type=nonneg_int, default=2, help="untimed passes first (default 2)")
    sp.add_argument("--threads", type=nonneg_int, default=0, help="torch/OpenCV threads (0: library default)")
    sp.add_argument("--no-opencv", action="store_true", help="skip the OpenCV DNN contender")
    sp.add_argument("--bf16", action="store_true", help="also time optimize(dtype=torch.bfloat16)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("zoo", help="list or fetch published models (sha256-verified) by name")
    sp.add_argument("action", choices=["list", "fetch"], help="list the models, or fetch some by name")
    sp.add_argument("names", nargs="*", metavar="NAME", help="model names to fetch")
    sp.add_argument("--store", help="download folder (default: $DARKCFG_HOME, else the user cache folder)")
    sp.add_argument("--index", help="zoo index file (default: $DARKCFG_ZOO, else the one in the package)")
    sp.add_argument("--trust", action="store_true", help="fetch models published without a hash and record "
                                                         "their sha256 (trust on first use)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=cmd_zoo)

    from .commands_train import add_train_parser

    add_train_parser(sub)

    from .eval_cli import register as register_eval

    register_eval(sub)  # map, valid

    sp = sub.add_parser("conformance", help="compare with Darknet's own outputs (shared fixtures)",
                        add_help=False)
    sp.set_defaults(func=None)
    return p


def _version() -> str:
    from . import __version__

    return f"darkcfg {__version__}"


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "conformance":
        from .conformance import main as conformance_main

        return conformance_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "weights_file"):  # CFG WEIGHTS or --weights: one of them (weights_args)
            args.weights = weights_argument(args.weights_file, args.weights)
        return args.func(args)
    except DarkcfgError as exc:
        hint = _size_hint(args, exc)
        print(f"darkcfg {args.command}: error: {exc}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `darkcfg run ... | head`: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush cannot raise again
        return 141
    except OSError as exc:  # the file system said no (permissions, disk full, ...): the user can act on it
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"darkcfg {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, not a traceback (DARKCFG_TRACEBACK=1 shows it)
        if os.environ.get("DARKCFG_TRACEBACK"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"darkcfg {args.command}: internal error: {type(exc).__name__}: {text} -- please report this "
              "with the command line (set DARKCFG_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 2


def _size_hint(args: argparse.Namespace, exc: DarkcfgError) -> Optional[str]:
    """With ``--size``, a cfg error may mean the network cannot take that size: name sizes that work."""
    from .errors import CfgError

    size = _size(args)
    if size is None or not isinstance(exc, CfgError) or not getattr(args, "cfg", None):
        return None
    try:
        from .size_hint import sizes_that_work

        return sizes_that_work(resolve_cfg(args.cfg), *size)
    except DarkcfgError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
