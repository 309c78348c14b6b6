"""darkcfg vs the CPU runtimes a user would pick instead, side by side in ONE run.

    python bench/speed.py                 # every row and section (long: tens of minutes on 2 cores)
    python bench/speed.py --quick         # small rows, 2 repeats, no batch-8 RSS run
    python bench/speed.py --rows yolov4-tiny-416-b1,yolov4-608-b1 --repeats 3 --sections speed,load

Sections (``--sections``, default all):

* ``speed``: per row, the median forward time of darkcfg ``optimize()`` fp32 (and bf16 when
  the CPU has AVX512-BF16 or AMX), OpenCV 4.x ``readNetFromDarknet``, onnxruntime and OpenVINO
  (both on darkcfg's own ONNX export, ``darkcfg.export``), all on the same input with the same
  thread count, timed round-robin so drift hits everyone alike (a sample: a 0.2 s pause, then
  for models under ~0.2 s one untimed call and the mean of back-to-back calls filling ~0.2 s,
  the steady state of a video stream); ratios are OpenCV's time over
  each one's (> 1: faster than OpenCV).  ``agree`` is each one's largest difference from
  darkcfg fp32 on the output heads, relative to ``max(1, max|head|)``.
* ``load``: ``darkcfg.load(cfg, weights)`` vs ``numpy.fromfile`` of the same file (in a fresh process, interleaved,
  medians), ``optimize()`` time, the peak RSS growth of a load (in a subprocess), and the time
  to the first output of yolov4 @608 in a fresh process, darkcfg vs OpenCV (:func:`bench_first_frame`).
* ``rss``: peak RSS of yolov4 @608 batch ``--rss-batch`` (load + forward), darkcfg vs OpenCV,
  each in its own subprocess (VmHWM; see :func:`_high_water`).
* ``nms``: csresnext50-panet-spp @416 with the conformance generator's seed-12345 weights
  (hundreds of thousands of boxes above threshold): ``detect`` time over forward time.

Weights are synthetic (:func:`darkcfg.weights.synthetic_weights`: well scaled, so nothing
overflows; speed does not depend on the values).  Cfgs come from the shared Darknet corpus
(``darkcfg.shared.shared_dir()``).  OpenVINO is optional (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import darkcfg  # noqa: E402
from darkcfg.cfg import read_cfg  # noqa: E402
from darkcfg.graph import build_graph  # noqa: E402
from darkcfg.bench import cpu_description  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402
from darkcfg.weights import synthetic_weights  # noqa: E402


@dataclass(frozen=True)
class Row:
    key: str
    cfg: str  # relative to shared/darknet
    size: int
    batch: int
    compile: bool = False  # also time optimize(compile=True) (small models: the compile is seconds)


ROWS = [
    Row("yolo-fastest-1.1-320-b1", "yolo-fastest/yolo-fastest-1.1_coco/yolo-fastest-1.1.cfg", 320, 1, True),
    Row("yolov4-tiny-416-b1", "cfg/yolov4-tiny.cfg", 416, 1),
    Row("yolov4-tiny-416-b4", "cfg/yolov4-tiny.cfg", 416, 4),
    Row("csresnext50-panet-spp-512-b1", "cfg/csresnext50-panet-spp.cfg", 512, 1),
    Row("yolov4-608-b1", "cfg/yolov4.cfg", 608, 1),
]
QUICK_ROWS = ["yolo-fastest-1.1-320-b1", "yolov4-tiny-416-b1"]
SECTIONS = ("speed", "load", "rss", "nms")


# ----------------------------------------------------------------------------------- machine
# ----------------------------------------------------------------------------------- helpers
def median_ms(samples: List[float]) -> float:
    return statistics.median(samples) * 1e3


def agree(outs: List[np.ndarray], ref: List[np.ndarray]) -> float:
    """Largest |out - ref| over the heads, relative to max(1, max|ref head|)."""
    worst = 0.0
    for o, r in zip(outs, ref):
        o = np.asarray(o, dtype=np.float32).reshape(r.shape)
        worst = max(worst, float(np.abs(o - r).max()) / max(1.0, float(np.abs(r).max())))
    return worst


def weights_for(cfg: Path, tmp: Path) -> Path:
    path = tmp / (cfg.stem + ".weights")
    if not path.exists():
        path.write_bytes(synthetic_weights(build_graph(read_cfg(cfg))))
    return path


def contenders(cfg: Path, weights: Path, row: Row, x: torch.Tensor, threads: int, bf16: bool,
               tmp: Path) -> Tuple[Dict[str, Callable[[], Any]], Dict[str, str]]:
    """name -> zero-argument forward; plus name -> why it is missing."""
    size = (row.size, row.size)
    fns: Dict[str, Callable[[], Any]] = {}
    notes: Dict[str, str] = {}
    model = darkcfg.load(cfg, weights, size=size).optimize()

    def run_torch(m: torch.nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        def go() -> Any:
            with torch.inference_mode():
                return [t.float().numpy() for t in m(inp)]
        return go

    fns["darkcfg optimize() fp32"] = run_torch(model, x)
    if row.compile:
        try:
            compiled = darkcfg.load(cfg, weights, size=size).optimize(compile=True)
            fns["darkcfg optimize(compile=True) fp32"] = run_torch(compiled, x)
            notes["darkcfg optimize(compile=True) fp32"] = (
                f"{row.key}: compiled in {compiled.compile_seconds:.1f} s (torch.compile; a warm on-disk cache "
                "makes later processes much faster)")
        except Exception as exc:  # noqa: BLE001 -- no C++ compiler, etc.: reported, not fatal
            notes["darkcfg optimize(compile=True) fp32"] = f"unavailable: {str(exc).strip().splitlines()[-1]}"
    if not bf16:
        notes["darkcfg optimize() bf16"] = "skipped: this CPU has no avx512_bf16/amx_bf16"
    else:
        try:
            mb = darkcfg.load(cfg, weights, size=size).optimize(dtype=torch.bfloat16)  # type: ignore[call-arg]
            fns["darkcfg optimize() bf16"] = run_torch(mb, x)
            if getattr(mb, "precision_note", None):  # the policy's float32 exception (darkcfg/precision.py)
                notes["darkcfg optimize() bf16"] = f"{row.key}: {mb.precision_note}"
        except TypeError:
            notes["darkcfg optimize() bf16"] = "skipped: optimize(dtype=) not available in this version"
    blob = np.ascontiguousarray(x.numpy())
    try:
        import cv2

        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        cv2.setNumThreads(threads)
        names = net.getUnconnectedOutLayersNames()

        def go_cv() -> Any:
            net.setInput(blob)
            return net.forward(names)
        go_cv()
        fns[f"OpenCV {cv2.__version__} fp32"] = go_cv
    except Exception as exc:  # noqa: BLE001 -- a contender that cannot run is reported, not fatal
        notes["OpenCV fp32"] = f"unavailable: {str(exc).strip().splitlines()[-1]}"
    onnx_path = tmp / f"{row.key}.onnx"
    try:
        from darkcfg.export import export

        with warnings.catch_warnings():  # the tracer's notices are not this benchmark's business
            warnings.simplefilter("ignore")
            export(cfg, weights, "onnx", out=onnx_path, size=size, batch=row.batch, dynamic=False)
    except Exception as exc:  # noqa: BLE001
        notes["onnxruntime fp32"] = notes["OpenVINO f32"] = f"ONNX export failed: {exc}"
        return fns, notes
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name
        fns[f"onnxruntime {ort.__version__} fp32"] = lambda: sess.run(None, {iname: blob})
    except ImportError:
        notes["onnxruntime fp32"] = "not installed (pip install -e .[bench])"
    try:
        import openvino as ov

        core = ov.Core()
        precisions = ["f32"] + (["bf16"] if bf16 else [])
        for prec in precisions:
            compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": prec,
                                                                  "INFERENCE_NUM_THREADS": threads})
            req = compiled.create_infer_request()

            def go_ov(req: Any = req, compiled: Any = compiled) -> Any:
                res = req.infer({0: blob})
                return [res[o] for o in compiled.outputs]
            fns[f"OpenVINO {ov.__version__.split('-')[0]} {prec}"] = go_ov
        if not bf16:
            notes["OpenVINO bf16"] = "skipped: this CPU has no avx512_bf16/amx_bf16"
    except ImportError:
        notes["OpenVINO f32"] = "not installed (pip install openvino, or -e .[bench])"
    return fns, notes


#: Each timing sample of a fast model is the mean of back-to-back calls filling about this long.
SAMPLE_SECONDS = 0.2


def bench_speed(rows: List[Row], darknet: Path, repeats: int, threads: int, bf16: bool, tmp: Path) -> None:
    print(f"\n## Forward time (ms, median of {repeats} round-robin rounds of ~{SAMPLE_SECONDS} s samples, {threads} threads; "
          "ratio = OpenCV time / this one's, > 1 is faster than OpenCV)\n", flush=True)
    table: Dict[str, Dict[str, str]] = {}
    notes_all: Dict[str, str] = {}
    for row in rows:
        cfg = darknet / row.cfg
        weights = weights_for(cfg, tmp)
        x = torch.rand(row.batch, 3, row.size, row.size, generator=torch.Generator().manual_seed(0))
        fns, notes = contenders(cfg, weights, row, x, threads, bf16, tmp)
        notes_all.update(notes)
        outs: Dict[str, Any] = {}
        calls: Dict[str, int] = {}
        for name, fn in fns.items():  # warm-up, the outputs to compare, and how many calls a sample takes
            outs[name] = fn()  # (a first call binds, packs and transforms: sized on the second one)
            t0 = time.perf_counter()
            fn()
            calls[name] = max(1, min(50, int(SAMPLE_SECONDS / max(time.perf_counter() - t0, 1e-4))))
        ref = [np.asarray(o) for o in outs["darkcfg optimize() fp32"]]
        times: Dict[str, List[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                # A pause first: the previous runtime's worker threads spin for a while after its
                # call (onnxruntime, TBB, OpenMP) and would steal this one's cores on 2-core boxes.
                # Small models: one untimed call (it pays the wake-up of sleeping worker threads),
                # then back-to-back calls for ~SAMPLE_SECONDS, their mean is the sample -- the
                # steady state a video stream sees, and far less noisy than one cold call.
                time.sleep(0.2)
                n = calls[name]
                if n > 1:
                    fn()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name].append((time.perf_counter() - t0) / n)
        med = {name: median_ms(v) for name, v in times.items()}
        cv = next((v for k, v in med.items() if k.startswith("OpenCV")), None)
        for name, ms in med.items():
            ratio = f" ({cv / ms:.2f}x)" if cv else ""
            # OpenCV's [yolo] output is decoded boxes (another layout): no element-wise comparison
            diff = 0.0 if name.startswith(("darkcfg optimize() fp32", "OpenCV")) else agree(outs[name], ref)
            table.setdefault(name, {})[row.key] = f"{ms:.1f}{ratio}" + (f" [{diff:.1e}]" if diff else "")
        print(f"  {row.key}: " + ", ".join(f"{n} {m:.1f}" for n, m in med.items()), flush=True)
    print("\n| runtime | " + " | ".join(r.key for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(cells.get(r.key, "-") for r in rows) + " |")
    print("\n[x] = largest difference from darkcfg fp32 on the heads, relative to max(1, max|head|) "
          "(not for OpenCV, whose [yolo] output is already decoded).")
    for name, why in notes_all.items():
        print(f"  {name}: {why}")


# ------------------------------------------------------------------------------------- load
def _high_water() -> int:
    """Peak resident bytes of this process so far.

    ``/proc/self/status`` VmHWM where there is one: ``getrusage``'s ru_maxrss survives
    fork + exec on Linux, so a child started by a big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_child(kind: str, cfg: str, weights: str, size: int, batch: int) -> None:
    """Subprocess body: prints one JSON line with the peak RSS before and after the work."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    base = _high_water()
    info: Dict[str, Any] = {}
    if kind == "load":
        m = darkcfg.load(cfg, weights)
        info["model_bytes"] = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    elif kind == "load-times":  # `batch` rounds of fromfile / load / optimize(), interleaved
        darkcfg.load(cfg, weights)  # imports and page cache warm
        info.update(read=[], load=[], optimize=[])
        for _ in range(batch):
            t0 = time.perf_counter()
            arr = np.fromfile(weights, dtype=np.uint8)
            info["read"].append(time.perf_counter() - t0)
            del arr
            t0 = time.perf_counter()
            m = darkcfg.load(cfg, weights)
            info["load"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            m.optimize()
            info["optimize"].append(time.perf_counter() - t0)
            del m
    elif kind == "first":  # a fresh process's time to its first output, then two more forwards
        x = torch.rand(batch, 3, size, size)
        start = time.perf_counter()
        m = darkcfg.load(cfg, weights, size=(size, size)).optimize()
        info["ready"] = time.perf_counter() - start
        with torch.inference_mode():
            for key in ("first", "second", "third"):
                t0 = time.perf_counter()
                m(x)
                info[key] = time.perf_counter() - t0
    elif kind == "first-opencv":
        import cv2

        cv2.setNumThreads(int(os.environ.get("BENCH_THREADS", "1")))
        blob = np.random.rand(batch, 3, size, size).astype(np.float32)
        start = time.perf_counter()
        net = cv2.dnn.readNetFromDarknet(cfg, weights)
        info["ready"] = time.perf_counter() - start
        for key in ("first", "second", "third"):
            t0 = time.perf_counter()
            net.setInput(blob)
            net.forward(net.getUnconnectedOutLayersNames())
            info[key] = time.perf_counter() - t0
    elif kind == "darkcfg":
        m = darkcfg.load(cfg, weights, size=(size, size)).optimize()
        with torch.inference_mode():
            m(torch.rand(batch, 3, size, size))
    else:
        import cv2

        cv2.setNumThreads(int(os.environ.get("BENCH_THREADS", "1")))
        net = cv2.dnn.readNetFromDarknet(cfg, weights)
        net.setInput(np.random.rand(batch, 3, size, size).astype(np.float32))
        net.forward(net.getUnconnectedOutLayersNames())
    info.update(base=base, peak=_high_water())
    print(json.dumps(info))


def peak_rss(kind: str, cfg: Path, weights: Path, size: int = 0, batch: int = 1, threads: int = 1) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--_child", kind, str(cfg), str(weights), str(size), str(batch)],
                         capture_output=True, text=True, env={**os.environ, "BENCH_THREADS": str(threads)},
                         timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{kind} subprocess failed: {out.stderr.strip()[-500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_load(darknet: Path, repeats: int, tmp: Path, threads: int) -> None:
    cfg = darknet / "cfg/yolov4.cfg"
    weights = weights_for(cfg, tmp)
    mb = weights.stat().st_size / 2 ** 20
    # In a fresh process, as a user's load runs: after OpenVINO has run in this one (its TBB threads
    # and allocator), the same load took 81 instead of 42 ms, while numpy.fromfile did not change.
    times = peak_rss("load-times", cfg, weights, batch=max(3, repeats), threads=threads)
    read = times["read"]
    r, lo, o = median_ms(read), median_ms(times["load"]), median_ms(times["optimize"])
    rss = peak_rss("load", cfg, weights)
    grow = rss["peak"] - rss["base"]
    print(f"\n## Load (yolov4.cfg, {mb:.0f} MiB synthetic weights, a fresh process, medians of {len(read)})\n")
    print(f"  numpy.fromfile {r:.0f} ms | darkcfg.load {lo:.0f} ms ({lo / r:.2f}x fromfile; target <= 2x) | "
          f"optimize() {o:.0f} ms ({o / lo:.2f}x load; target <= 0.3x)")
    both = weights.stat().st_size + rss["model_bytes"]
    print(f"  peak RSS growth during load: {grow / 2 ** 20:.0f} MiB = {grow / both:.2f}x (weights file + model "
          f"= {both / 2 ** 20:.0f} MiB; target <= 1.3x)", flush=True)
    bench_first_frame(cfg, weights, threads)


def bench_first_frame(cfg: Path, weights: Path, threads: int, size: int = 608) -> None:
    """Time to the first output in a fresh process (what a one-image ``darkcfg run`` waits for:
    imports aside, the load, ``optimize()`` and the first forward, which packs or transforms the
    weights), then the next two forwards; OpenCV's ``readNetFromDarknet`` + forwards likewise."""
    print(f"\n## First frame (yolov4 @{size}, batch 1, a fresh process each)\n")
    for kind, label, ready in (("first", "darkcfg", "load + optimize()"),
                               ("first-opencv", "OpenCV", "readNetFromDarknet")):
        try:
            r = peak_rss(kind, cfg, weights, size, 1, threads)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  {label}: failed: {str(exc)[-200:]}", flush=True)
            continue
        print(f"  {label}: {ready} {r['ready'] * 1e3:.0f} ms, first forward {r['first'] * 1e3:.0f} ms "
              f"(first output after {(r['ready'] + r['first']) * 1e3:.0f} ms), then {r['second'] * 1e3:.0f} "
              f"and {r['third'] * 1e3:.0f} ms", flush=True)


def bench_rss(darknet: Path, batch: int, threads: int, tmp: Path) -> None:
    cfg = darknet / "cfg/yolov4.cfg"
    weights = weights_for(cfg, tmp)
    print(f"\n## Peak RSS, yolov4 @608 batch {batch} (load + one forward, each in its own process)\n")
    for kind, label in (("darkcfg", "darkcfg optimize()"), ("opencv", "OpenCV readNetFromDarknet")):
        try:
            r = peak_rss(kind, cfg, weights, 608, batch, threads)
            print(f"  {label}: {r['peak'] / 2 ** 30:.2f} GiB", flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  {label}: failed ({exc})", flush=True)


# -------------------------------------------------------------------------------------- nms
def bench_nms(shared: Path, repeats: int) -> None:
    from darkcfg.conformance import case_weights, load_make_weights

    case = shared / "conformance/cases/cfg-csresnext50-panet-spp"
    image = shared / "darknet/data/dog.jpg"
    if not case.is_dir() or not image.is_file():
        print("\n## NMS stress: skipped (conformance case or data/dog.jpg missing)")
        return
    meta = json.loads((case / "meta.json").read_text())
    meta = {**meta, "weights": {**meta["weights"], "seed": 12345}}
    data = case_weights(load_make_weights(shared / "conformance"), case, meta)
    model = darkcfg.load(shared / meta["cfg"], bytearray(data), size=(416, 416)).optimize()
    x = torch.rand(1, 3, 416, 416)
    fwd, det, count = [], [], 0
    for _ in range(max(2, repeats)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        count = len(model.detect(str(image))[0] or [])
        det.append(time.perf_counter() - t0)
    f, d = median_ms(fwd), median_ms(det)
    print(f"\n## NMS stress (csresnext50-panet-spp @416, make_weights seed 12345, data/dog.jpg)\n")
    print(f"  forward {f:.0f} ms | detect (read, forward, decode, NMS) {d:.0f} ms = {d / f:.1f}x forward "
          f"(target <= 10x) | {count} detections kept", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None, help=f"comma-separated, from: {', '.join(r.key for r in ROWS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per contender (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from: {', '.join(SECTIONS)}")
    p.add_argument("--rss-batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help=f"rows {', '.join(QUICK_ROWS)}, 2 repeats, no rss section")
    p.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        kind, cfg, weights, size, batch = args._child
        _peak_rss_child(kind, cfg, weights, int(size), int(batch))
        return 0
    shared = shared_dir()
    if shared is None:
        print("the shared Darknet corpus was not found (set DARKCFG_SHARED)", file=sys.stderr)
        return 2
    sections = set(args.sections.split(","))
    keys = args.rows.split(",") if args.rows else [r.key for r in ROWS]
    if args.quick:
        keys = args.rows.split(",") if args.rows else QUICK_ROWS
        args.repeats = min(args.repeats, 2)
        sections.discard("rss")
    unknown = sorted(set(keys) - {r.key for r in ROWS}) + sorted(sections - set(SECTIONS))
    if unknown:
        p.error(f"unknown row(s)/section(s): {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    cpu, bf16 = cpu_description()
    print(f"CPU: {cpu}\ntorch {torch.__version__}, {args.threads} threads, darkcfg {darkcfg.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="darkcfg-speed-") as t:
        tmp = Path(t)
        if "speed" in sections:
            bench_speed([r for r in ROWS if r.key in keys], shared / "darknet", args.repeats, args.threads, bf16, tmp)
        if "load" in sections:
            bench_load(shared / "darknet", args.repeats, tmp, args.threads)
        if "rss" in sections:
            bench_rss(shared / "darknet", args.rss_batch, args.threads, tmp)
        if "nms" in sections:
            bench_nms(shared, args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
