"""The ``darkcfg`` command line: ``info``, ``run``, ``convert``, ``bench``, ``conformance``.

Every subcommand that prints results has ``--json`` with a stable, documented
shape (see README).  Errors in user input are reported as one line naming the
file/line/layer, with exit code 2; a run where some inputs failed exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import DarkcfgError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm", ".pgm", ".ppm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"}


# ---------------------------------------------------------------------------------------- helpers
class Progress:
    """A minimal progress bar on stderr, shown only for long work on a terminal."""

    def __init__(self, total: Optional[int], label: str, enabled: Optional[bool] = None):
        self.total, self.label, self.count = total, label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            filled = int(30 * self.count / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {self.count}/{self.total} {rate:.1f}/s")
        else:
            sys.stderr.write(f"\r{self.label} {self.count} {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.count:
            sys.stderr.write("\n")


def resolve_cfg(arg: str) -> Path:
    """A cfg path, or a zoo model name (fetched and verified into the zoo store)."""
    path = Path(arg)
    if path.exists() or path.suffix == ".cfg" or os.sep in arg:
        return path
    from .zoo import fetch

    return fetch(arg)["cfg"]


def find_weights(cfg: Path, explicit: Optional[str]) -> Path:
    """``--weights``; else ``<cfg stem>.weights`` beside the cfg; else the weights store."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DarkcfgError(f"{path}: weights file not found")
        return path
    from .zoo import store_dirs

    looked = [cfg.with_suffix(".weights")] + [d / (cfg.stem + ".weights") for d in store_dirs()]
    for cand in looked:
        if cand.is_file():
            return cand
    raise DarkcfgError(f"no weights for {cfg}: looked for " + ", ".join(str(p) for p in looked)
                       + " (pass --weights FILE)")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, directories (their images/videos, sorted) and globs, in the order given."""
    import glob

    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            out += [Path(m) for m in matches] if matches else [path]  # a glob with no match is reported
        else:
            out.append(path)
    return out


def _size(args: argparse.Namespace) -> Optional[tuple[int, int]]:
    return (args.size[0], args.size[1]) if getattr(args, "size", None) else None


# ------------------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from .cfg import read_cfg
    from .graph import build_graph

    graph = build_graph(read_cfg(resolve_cfg(args.cfg)), size=_size(args))
    if args.json:
        print(json.dumps(info_json(graph, args.cfg)))
        return 0
    print(f"{args.cfg}: input {graph.net.width} x {graph.net.height} x {graph.net.channels}, "
          f"{len(graph.layers)} layers")
    print(f"{'layer':>5} {'type':<15} {'filters':>7} {'size/strd(dil)':<15} {'input':>18}  ->  {'output':<18} {'BFLOPs':>8}")
    for s in graph.layers:
        print(f"{s.index:5d} {s.section.raw_type[:15]:<15} {_filters(s):>7} {_geometry(s):<15} "
              f"{_dims(s.in_shape, s.in_outputs):>18}  ->  {_dims(s.out_shape, s.outputs):<18} {s.bflops:8.3f}")
    print(f"Total BFLOPS {graph.bflops:.3f}")
    print(f"Parameters {graph.params:,} ({graph.params / 1e6:.2f}M, kernel weights only, as the CSPNet paper "
          f"counts them); .weights floats {graph.weight_floats:,} ({20 + 4 * graph.weight_floats:,} bytes with a "
          "20-byte header)")
    for w in graph.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for w in graph.unused_options():
        print(f"warning: {w}", file=sys.stderr)
    return 0


def info_json(graph: Any, cfg: str) -> dict:
    return {
        "cfg": str(cfg),
        "width": graph.net.width,
        "height": graph.net.height,
        "channels": graph.net.channels,
        "layers": [{"index": s.index, "type": s.kind, "input": list(s.in_shape), "output": list(s.out_shape),
                    "outputs": s.outputs, "params": s.params, "weight_floats": s.weight_floats,
                    "bflops": round(s.bflops, 6), "line": s.section.line} for s in graph.layers],
        "total": {"params": graph.params, "weight_floats": graph.weight_floats, "bflops": round(graph.bflops, 6)},
        "warnings": graph.warnings + graph.unused_options(),
    }


def _filters(s: Any) -> str:
    a = s.attrs
    for key in ("filters", "output", "out_channels"):
        if hasattr(a, key) and s.kind != "maxpool":
            return str(getattr(a, key))
    return ""


def _geometry(s: Any) -> str:
    a = s.attrs
    if s.kind == "convolutional":
        stride = f"{a.stride_x}" if a.stride_x == a.stride_y else f"{a.stride_x}x{a.stride_y}"
        dil = f"({a.dilation})" if a.dilation > 1 else ""
        grp = f" g{a.groups}" if a.groups > 1 else ""
        return f"{a.size}x{a.size}/{stride}{dil}{grp}"
    if s.kind in ("maxpool", "local_avgpool"):
        return f"{a.size}x{a.size}/{a.stride_x}"
    if s.kind == "route":
        return ",".join(map(str, a.layers)) + (f" {a.group_id}/{a.groups}" if a.groups > 1 else "")
    if s.kind == "shortcut":
        return ",".join(map(str, a.sources))
    if s.kind in ("sam", "scale_channels"):
        return str(a.source)
    if s.kind == "upsample":
        return f"x{a.stride}" if a.stride > 0 else f"/{-a.stride}"
    return ""


def _dims(shape: tuple[int, int, int], outputs: int) -> str:
    c, h, w = shape
    return f"{w} x {h} x {c}" if c * h * w == outputs else f"{outputs} (flat)"


# -------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .classify import Classifier
    from .detect_api import Detector
    from .draw import write_annotated
    from .image import load_image
    from .model import load

    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, args.weights)
    model = load(cfg, weights, size=_size(args), device=args.device).optimize()
    if args.half:
        if str(args.device).startswith("cpu"):
            raise DarkcfgError("--half (fp16) needs a CUDA device (--device cuda); on CPU fp16 is slower, not faster")
        model = model.half()
    if any(s.kind in HEADS for s in model.graph.layers):
        detector = Detector(model, names_file=args.names, letterbox=True if args.letterbox else None)

        def predict(imgs: list) -> list:
            return detector(imgs, thresh=args.thresh, nms_thresh=args.nms)
    else:  # a classifier: `darknet classifier predict`
        classifier = Classifier(model, names_file=args.names)

        def predict(imgs: list) -> list:
            return classifier(imgs, top=args.top)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(args.inputs)
    images = [p for p in paths if p.suffix.lower() not in VIDEO_EXTS]
    videos = [p for p in paths if p.suffix.lower() in VIDEO_EXTS]
    failures = 0
    progress = Progress(len(images), "images", enabled=None if len(images) > 4 else False)
    loaded: list[tuple[Path, Any]] = []

    def flush() -> None:
        results = predict([img for _, img in loaded])
        for (path, img), result in zip(loaded, results):
            _report(args, path, img, result)
            if out_dir and not _is_classification(result):
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
            failures += _run_video(args, predict, path, out_dir)
    if failures:
        print(f"darkcfg run: {failures} of {len(paths)} inputs failed", file=sys.stderr)
    return 1 if failures else 0


HEADS = ("yolo", "Gaussian_yolo", "region", "detection")


def _is_classification(result: Sequence[Any]) -> bool:
    from .classify import Classification

    return bool(result) and isinstance(result[0], Classification)


def _report(args: argparse.Namespace, path: Path, img: Any, dets: Sequence[Any], frame: Optional[int] = None) -> None:
    h, w = img.shape[:2]
    where = f"{path}" + (f" frame {frame}" if frame is not None else "")
    if _is_classification(dets):
        if args.json:
            record = {"image": str(path), "width": w, "height": h, **({"frame": frame} if frame is not None else {}),
                      "classes": [{"class_id": c.class_id, "name": c.name, "prob": round(c.prob, 6)} for c in dets]}
            print(json.dumps(record), flush=True)
        else:
            print(f"{where}:")
            for c in dets:  # darknet: "%5.2f%%: %s"
                print(f"{100 * c.prob:5.2f}%: {c.name}")
        return
    if args.json:
        record: dict = {"image": str(path), "width": w, "height": h}
        if frame is not None:
            record["frame"] = frame
        record["detections"] = [{"class_id": d.class_id, "name": d.name, "prob": round(d.prob, 6),
                                 "box": [round(v, 2) for v in d.box], "objectness": round(d.objectness, 6)}
                                for d in dets]
        print(json.dumps(record), flush=True)
        return
    print(f"{where}: {len(dets)} detections")
    for d in dets:
        x1, y1, x2, y2 = d.box_int
        print(f"{d.name}: {round(100 * d.prob)}%\t(left_x: {x1:4d}   top_y: {y1:4d}   width: {x2 - x1:4d}   "
              f"height: {y2 - y1:4d})")


def _run_video(args: argparse.Namespace, predict: Any, path: Path, out_dir: Optional[Path]) -> int:
    import cv2

    from .draw import annotate

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        print(f"darkcfg run: skipped {path}: cannot open video", file=sys.stderr)
        return 1
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    progress = Progress(total, f"{path.name}")
    frame_no = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets = predict([rgb])[0]
            _report(args, path, rgb, dets, frame=frame_no)
            if out_dir and not _is_classification(dets):
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = cv2.VideoWriter(str(out_dir / (path.stem + ".mp4")), cv2.VideoWriter_fourcc(*"mp4v"),
                                             fps, (w, h))
                writer.write(annotate(rgb, dets))
            frame_no += 1
            progress.update()
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        progress.close()
    if frame_no == 0:
        print(f"darkcfg run: skipped {path}: no frames could be decoded", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    from .export import export

    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, args.weights) if (args.weights or not args.no_weights) else None
    out = export(cfg, weights, args.to, Path(args.out) if args.out else None, size=_size(args),
                 fuse=not args.no_fuse, batch=args.batch)
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
                       iters=args.iters, warmup=args.warmup, opencv=not args.no_opencv, threads=args.threads)
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

    def size_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--size", nargs=2, type=int, metavar=("W", "H"), help="override the cfg's [net] size")

    sp = sub.add_parser("info", help="layer table, shapes, parameters and BFLOPs of a cfg")
    sp.add_argument("cfg")
    size_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("run", help="detect objects (or classify, for classifier cfgs) in images, folders, "
                                    "globs or videos")
    sp.add_argument("cfg", help="a .cfg file or a zoo model name (see `darkcfg zoo list`)")
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--weights", help="default: <cfg stem>.weights beside the cfg, then the weights store")
    sp.add_argument("--names", help="class names file (default: .names/.data beside the cfg, COCO, VOC)")
    sp.add_argument("--thresh", type=float, default=0.25)
    sp.add_argument("--top", type=int, default=5, help="classifiers: how many classes to print")
    sp.add_argument("--nms", type=float, default=0.45)
    size_arg(sp)
    sp.add_argument("--letterbox", action="store_true", help="letterbox instead of stretching")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--half", action="store_true", help="fp16 inference (CUDA)")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--out", help="write annotated images/videos into this folder")
    sp.add_argument("--json", action="store_true", help="one JSON object per input (line)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("convert", help="export to torch.export (.pt2), TorchScript, ONNX or .weights")
    sp.add_argument("cfg")
    sp.add_argument("--weights")
    sp.add_argument("--no-weights", action="store_true", help="export with random weights")
    sp.add_argument("--to", choices=["pt2", "torchscript", "onnx", "weights"], default="pt2")
    sp.add_argument("--out", help="output file (default: beside the cfg)")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--no-fuse", action="store_true", help="keep batch norm unfused")
    size_arg(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("bench", help="speed: darkcfg (fused/unfused) vs OpenCV's Darknet importer")
    sp.add_argument("cfg")
    sp.add_argument("--weights")
    size_arg(sp)
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--iters", type=int, default=10)
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--threads", type=int, default=0, help="torch/OpenCV threads (0: library default)")
    sp.add_argument("--no-opencv", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("zoo", help="list or fetch published models (sha256-verified) by name")
    sp.add_argument("action", choices=["list", "fetch"])
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--store", help="download folder (default: $DARKCFG_HOME, else the user cache folder)")
    sp.add_argument("--index", help="zoo index file (default: $DARKCFG_ZOO, else the one in the package)")
    sp.add_argument("--trust", action="store_true", help="fetch models published without a hash and record "
                                                         "their sha256 (trust on first use)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_zoo)

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
        return args.func(args)
    except DarkcfgError as exc:
        print(f"darkcfg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `darkcfg run ... | head`: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush cannot raise again
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
