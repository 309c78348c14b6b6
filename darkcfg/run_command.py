"""``darkcfg run``: detect (or classify) in images, folders, globs, videos, cameras and streams.

Order of work: check every option and plan every output file first (nothing is written if
an output would replace a user's file; see :mod:`darkcfg.outputs`), then images in batches
(streamed: decoded ``--batch`` at a time; a bad image is reported and skipped), then
frame sources one by one. Each result is printed and flushed as soon as it is known.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import DarkcfgError, ImageError
from .graph import HEAD_KINDS
from .inputs import Source, sources
from .label_files import coco_records, limit_detections, yolo_label_text
from .locate import find_weights, resolve_cfg, weights_among_inputs, weights_argument
from .outputs import OutputPlan, check_output_file, prepare_out_dir, write_atomic
from .progress import Progress
from .results import print_result

if TYPE_CHECKING:
    from .model import Darknet


@dataclass
class Predictor:
    """The model's front-end as two steps, so images can be prepared one by one and run in batches."""

    prepare: Callable[[Any], Any]
    infer: Callable[[Any, list], list]
    is_detector: bool
    names: list


@dataclass
class RunState:
    """What every result needs: options, output plan, collected COCO records, failure count."""

    args: argparse.Namespace
    predictor: Predictor
    plan: Optional[OutputPlan]
    classes: Optional[set[int]]
    coco: Optional[list] = None
    failures: int = 0

    def fail(self, text: str) -> None:
        self.failures += 1
        print(f"darkcfg run: skipped {text}", file=sys.stderr, flush=True)

    def handle(self, n: int, src: Source, img: Any, result: list, frame: Optional[int] = None) -> list:
        """Print one result, then write what was asked for (annotated image, labels, COCO);
        returns the result as shown (after ``--classes``/``--max-det``)."""
        if self.predictor.is_detector:
            result = limit_detections(result, self.classes, self.args.max_det)
        print_result(self.args.json, Path(src.label) if src.path is None else src.path, img, result, frame)
        if not self.predictor.is_detector:
            return result
        h, w = img.shape[:2]
        if self.plan is not None:
            if frame is None:
                _write_image(self.plan.media(n), img, result)
            if self.args.save_txt:
                path = self.plan.labels(n, frame)
                if frame is not None:
                    self.plan.may_write(path)
                write_atomic(path, yolo_label_text(result, w, h, self.args.save_conf).encode())
        if self.coco is not None:
            self.coco += coco_records(src.label, result, w, h, self.args.coco_ids, frame)
        return result


def make_predictor(model: Any, args: argparse.Namespace) -> Predictor:
    """Detections for detector cfgs, top classes for classifiers (``darknet classifier predict``)."""
    from .classify import Classifier
    from .detect_api import Detector

    if any(s.kind in HEAD_KINDS for s in model.graph.layers):
        detector = Detector(model, names_file=args.names, letterbox=True if args.letterbox else None)
        return Predictor(detector.prepare, lambda batch, sizes: detector.infer(batch, sizes, thresh=args.thresh,
                                                                                nms_thresh=args.nms), True,
                         detector.names)
    classifier = Classifier(model, names_file=args.names)
    return Predictor(classifier.prepare, lambda batch, sizes: classifier.infer(batch, top=args.top), False,
                     classifier.names)


def parse_classes(text: Optional[str], names: list[str]) -> Optional[set[int]]:
    """``--classes 0,2`` or ``--classes person,car`` -> class indices, checked against the model."""
    if text is None:
        return None
    out: set[int] = set()
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token.isdigit():
            k = int(token)
            if k >= len(names):
                raise DarkcfgError(f"--classes {text}: class {k} does not exist (this model has {len(names)} "
                                   f"classes, 0..{len(names) - 1})")
            out.add(k)
        elif token in names:
            out.add(names.index(token))
        else:
            raise DarkcfgError(f"--classes {text}: {token!r} is neither a class index nor a class name of this model")
    if not out:
        raise DarkcfgError(f"--classes {text!r}: give class indices or names, e.g. --classes 0,2")
    return out


def _check_detector_options(args: argparse.Namespace, is_detector: bool) -> None:
    if is_detector:
        return
    used = [flag for flag, on in (("--save-txt", args.save_txt), ("--save-json", args.save_json),
                                  ("--classes", args.classes), ("--max-det", args.max_det)) if on]
    if used:
        raise DarkcfgError(f"{', '.join(used)}: only for detectors; this cfg is a classifier (use --json)")


def run(args: argparse.Namespace, size: Optional[tuple[int, int]]) -> int:
    import torch

    from .model import load

    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.save_conf and not args.save_txt:
        raise DarkcfgError("--save-conf adds a column to --save-txt label files; give --save-txt too")
    if args.coco_ids and not args.save_json:
        raise DarkcfgError("--coco-ids applies to --save-json FILE; give --save-json too")
    if args.save_txt and not args.out:
        raise DarkcfgError("--save-txt needs --out DIR (outputs are never written beside the inputs)")
    if args.overwrite and not (args.out or args.save_json):
        raise DarkcfgError("--overwrite applies to --out DIR and --save-json FILE; give one of them")
    named_weights, inputs = weights_among_inputs(args.inputs)
    empty: list[str] = []
    srcs = sources(inputs, empty)
    cfg = resolve_cfg(args.cfg)
    weights = find_weights(cfg, weights_argument(named_weights, args.weights))
    if args.half and str(args.device).startswith("cpu"):
        raise DarkcfgError("--half (fp16) needs a CUDA device (--device cuda); on CPU fp16 is slower, not faster")
    if args.half and args.bf16:
        raise DarkcfgError("--half and --bf16 are two reduced precisions: give one")
    # --half/--bf16: the reduced-precision policy of darkcfg.precision (heads and the layers feeding
    # them stay float32, so decoding never runs in fp16/bf16), not a blanket model.half()
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else None
    model = load(cfg, weights, size=size, device=args.device).optimize(dtype=dtype)
    if args.bf16:
        _bf16_notes(model, args.device)
    predictor = make_predictor(model, args)
    _check_detector_options(args, predictor.is_detector)
    classes = parse_classes(args.classes, predictor.names) if args.classes else None

    plan = None
    if args.out:
        plan = OutputPlan(prepare_out_dir(args.out), srcs, args.save_txt, args.overwrite)
        plan.refuse_existing(p for n, s in enumerate(srcs) for p in plan.planned(n, s.is_frames, predictor.is_detector))
        for note in plan.notes:
            print(f"darkcfg run: note: {note}", file=sys.stderr)
    json_path = Path(args.save_json) if args.save_json else None
    if json_path is not None:
        check_output_file(json_path, [s.path for s in srcs] + [cfg, weights], what="--save-json")
        if json_path.exists() and not args.overwrite:
            raise DarkcfgError(f"--save-json {json_path}: already exists; pass --overwrite to replace it")
    state = RunState(args, predictor, plan, classes, coco=[] if json_path is not None else None)
    for folder in empty:
        state.fail(f"{folder}: no images or videos in this folder")
    try:
        with torch.inference_mode():
            _run_images(state, srcs)
            from .video import run_frames

            for n, src in enumerate(srcs):
                if src.is_frames:
                    run_frames(state, n, src)
    finally:
        if json_path is not None and state.coco is not None:
            write_atomic(json_path, json.dumps(state.coco, indent=1).encode())
    if state.failures:
        print(f"darkcfg run: {state.failures} of {len(srcs) + len(empty)} inputs failed", file=sys.stderr)
    return 1 if state.failures else 0


def _run_images(state: RunState, srcs: list[Source]) -> None:
    from .batching import prepared_batches, stack

    index = [n for n, s in enumerate(srcs) if not s.is_frames]
    if not index:
        return
    progress = Progress(len(index), "images", enabled=None if len(index) > 4 else False)

    def failed(k: int, exc: ImageError) -> None:
        state.fail(str(exc))
        progress.update()

    items = [srcs[n].target for n in index]
    for batch in prepared_batches(items, state.predictor.prepare, state.args.batch, failed, state.args.max_pixels):
        results = state.predictor.infer(stack(batch), [p.size for p in batch])
        for prepared, result in zip(batch, results):
            n = index[prepared.index]
            try:
                state.handle(n, srcs[n], prepared.image, result)
            except (OSError, DarkcfgError) as exc:
                state.fail(f"{srcs[n].label}: could not write its outputs ({_reason(exc)})")
        progress.update(len(batch))
    progress.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _write_image(path: Path, img_rgb: Any, dets: list) -> None:
    """The annotated image in the input's format (by extension), written atomically."""
    import cv2

    from .draw import annotate

    ok, buf = cv2.imencode(path.suffix or ".jpg", annotate(img_rgb, dets))
    if not ok:
        raise DarkcfgError(f"{path}: OpenCV cannot encode {path.suffix} images")
    write_atomic(path, buf.tobytes())


def _bf16_notes(model: "Darknet", device: str) -> None:
    """What ``--bf16`` did where a user would not guess it: kept float32 by the policy, or emulated."""
    from .precision import cpu_has_bf16

    if model.precision_note:
        print(f"darkcfg run: note: --bf16: {model.precision_note}", file=sys.stderr)
    elif str(device).startswith("cpu") and cpu_has_bf16() is False:
        print("darkcfg run: note: --bf16: this CPU has no avx512_bf16/amx_bf16: torch emulates bf16 here, "
              "slower than float32", file=sys.stderr)
