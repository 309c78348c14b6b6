"""Every check that needs a GPU, as ONE prepared run (a lent device machine's time is short).

Here, beside ../shared (no GPU needed):
    python3 bench/gpu_check.py pack                 # -> .gpu/ (ignored by git), < --mib MiB
On the GPU machine (the device tool: carry [".gpu"]; OUT set there; 3-5 minutes on an H200):
    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py run --shared .gpu

``pack`` copies what the run reads from the shared fixtures (which do not travel to the device
machine): the speed rows' cfgs and the smallest conformance cases that fit, with their cfgs,
inputs, real weights and ``make_weights.py``, mirrored under ``.gpu/`` as ``--shared`` expects.
It is a transport folder, never committed.

``run`` prints, and writes to ``$OUT/gpu_check.json`` where ``OUT`` is set:
1. the device, torch, CUDA and cuDNN versions;
2. ``tests/test_cuda_graph.py`` (its CUDA tests run there) and ``tests/test_model.py``;
3. ``darkcfg conformance --device cuda`` on the packed cases, plain and ``--optimized`` (the
   fixtures' 1e-3 bound, room for TF32), and without TF32 at the CPU's 1e-4;
   ``darkcfg run --json`` on data/dog.jpg with three real-weight detectors, CPU fp32 against CUDA
   fp32 and ``--half`` (boxes paired by class and IoU, the largest probability and corner change);
4. per speed row (bench/speed.py's five), the outputs of fp16, fp16 + CUDA graph and fp32 +
   CUDA graph against fp32 ``optimize()`` (max |difference| over the output's max |value|);
5. per row, forward times side by side in one process, interleaved round by round: eager fp32,
   ``optimize()`` fp32, fp16 (what ``run --half`` uses), fp16 + CUDA graph, fp32 + CUDA graph
   (medians of ``--repeats`` rounds, CUDA synchronised), and each graph's capture time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import darkcfg  # noqa: E402
from darkcfg.shared import shared_dir  # noqa: E402
from speed import ROWS, weights_for  # noqa: E402

#: Real-weight models whose detections on data/dog.jpg `darkcfg run` gives on the CPU, on CUDA and
#: with --half, compared (relative to shared/darknet).
DETECTORS = ["real/MobileNetV2-YOLOv3-Nano-coco", "real/yolo-fastest-voc", "real/yolo-mobilenetv2-tiny-voc"]
IMAGE = "darknet/data/dog.jpg"


# ------------------------------------------------------------------------------------------ pack
def _case_files(shared: Path, case: Path) -> List[Path]:
    """The files of ``shared`` a conformance case reads (relative paths)."""
    meta = json.loads((case / "meta.json").read_text())
    files = [p.relative_to(shared) for p in case.rglob("*") if p.is_file()]
    files.append(Path("darknet") / meta["cfg"] if not meta["cfg"].startswith("darknet/") else Path(meta["cfg"]))
    for key in ("weights", "input"):
        if "file" in meta.get(key, {}):
            files.append(Path(meta[key]["file"]))
    return files


def pack(shared: Path, out: Path, mib: float) -> None:
    if out.exists():
        shutil.rmtree(out)
    wanted = [Path("conformance/make_weights.py"), Path(IMAGE)] + [Path("darknet") / row.cfg for row in ROWS]
    wanted += [Path("darknet") / f"{name}.{ext}" for name in DETECTORS for ext in ("cfg", "weights")]
    budget = int(mib * 2 ** 20) - sum((shared / f).stat().st_size for f in wanted)
    cases = []
    for case in sorted((shared / "conformance/cases").iterdir()):
        if (case / "meta.json").is_file():
            files = _case_files(shared, case)
            cases.append((sum((shared / f).stat().st_size for f in set(files)), case.name, files))
    taken = []
    for size, name, files in sorted(cases):
        new = [f for f in files if f not in wanted]
        cost = sum((shared / f).stat().st_size for f in set(new))
        if cost > budget:
            continue
        budget -= cost
        wanted += new
        taken.append(name)
    for rel in dict.fromkeys(wanted):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / rel, out / rel)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {len(taken)} of {len(cases)} conformance cases and {len(ROWS)} speed cfgs into {out} "
          f"({total / 2 ** 20:.1f} MiB); carry it: run(..., carry=['{out.name}'])")


# ------------------------------------------------------------------------------------------- run
def _sub(args: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    lines = (p.stdout + p.stderr).strip().splitlines()
    print("\n".join(lines[-25:]), flush=True)
    return {"command": " ".join(args), "rc": p.returncode, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - t0, 1)}


def conformance(shared: Path, device: str, flags: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """``darkcfg conformance --json`` on the packed cases: the pass count, the worst relative
    error and its case, and every failing case with its first failures."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "darkcfg", "conformance", "--shared", str(shared), "--device", device,
                        "--json", *flags], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    cases = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    worst = max(cases, key=lambda c: c["max_rel"] or 0.0, default=None)
    summary = {"flags": flags, "passed": sum(c["passed"] for c in cases), "cases": len(cases),
               "worst_rel": None if worst is None else worst["max_rel"], "worst_case": None if worst is None else worst["case"],
               "failing": {c["case"]: c["failures"][:2] for c in cases if not c["passed"]},
               "stderr_tail": p.stderr.strip()[-300:], "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary), flush=True)
    return summary


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timer(model: torch.nn.Module, x: torch.Tensor, device: str) -> Callable[[], float]:
    def once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        _sync(device)
        return (time.perf_counter() - t0) * 1e3
    return once


def _rel(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    return max(float((p.float() - q.float()).abs().max()) / max(1e-12, float(q.abs().max())) for p, q in zip(a, b))


def speed_rows(shared: Path, repeats: int, device: str, rows: List[str]) -> List[Dict[str, Any]]:
    """(``device`` cpu: a dry run of this script here, without the CUDA-only contenders.)"""
    cuda = device.startswith("cuda")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in [r for r in ROWS if not rows or r.key in rows]:
            cfg = shared / "darknet" / row.cfg
            weights = weights_for(cfg, Path(tmp))
            size = (row.size, row.size)

            def build(**kw: Any) -> darkcfg.Darknet:
                return darkcfg.load(cfg, weights, size=size, device=device).optimize(**kw)

            models = {"eager fp32": darkcfg.load(cfg, weights, size=size, device=device),
                      "optimize() fp32": build()}
            if cuda:
                models.update({"fp16": build(dtype=torch.float16),
                               "fp16 + CUDA graph": build(dtype=torch.float16, cuda_graph=True),
                               "fp32 + CUDA graph": build(cuda_graph=True)})
            x = torch.rand(row.batch, 3, row.size, row.size, device=device)
            capture = {}
            with torch.inference_mode():
                ref = models["optimize() fp32"](x)
                agree = {}
                for name in [n for n in models if n not in ("eager fp32", "optimize() fp32")]:
                    t0 = time.perf_counter()
                    out = models[name](x)
                    _sync(device)
                    if "graph" in name:
                        capture[name] = round(time.perf_counter() - t0, 3)
                    agree[name] = _rel(out, ref)
            timers = {name: _timer(m, x, device) for name, m in models.items()}
            for fn in timers.values():
                for _ in range(5):
                    fn()
            times: Dict[str, List[float]] = {name: [] for name in timers}
            for _ in range(repeats):
                for name, fn in timers.items():
                    times[name].append(fn())
            med = {name: round(statistics.median(v), 3) for name, v in times.items()}
            results.append({"row": row.key, "median_ms": med, "rel_diff_vs_fp32": agree, "capture_s": capture})
            print(f"{row.key}: " + " | ".join(f"{n} {ms:.2f} ms" for n, ms in med.items())
                  + f" | capture {capture} | rel diff {({k: f'{v:.1e}' for k, v in agree.items()})}", flush=True)
            del models
            if cuda:
                torch.cuda.empty_cache()
    return results


def _box_iou(a: List[float], b: List[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def compare_detections(ref: List[Dict[str, Any]], dets: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each reference box paired with the same-class box of ``dets`` it overlaps most (IoU >= 0.9)."""
    pairs = []
    for a in ref:
        best = max((b for b in dets if b["class_id"] == a["class_id"]), key=lambda b: _box_iou(a["box"], b["box"]),
                   default=None)
        if best is not None and _box_iou(a["box"], best["box"]) >= 0.9:
            pairs.append((a, best))
    return {"paired": f"{len(pairs)}/{len(ref)}",
            "max_prob_diff": max((abs(a["prob"] - b["prob"]) for a, b in pairs), default=0.0),
            "max_corner_diff_px": max((max(abs(u - v) for u, v in zip(a["box"], b["box"])) for a, b in pairs),
                                      default=0.0)}


def detections(shared: Path, device: str, env: Dict[str, str]) -> List[Dict[str, Any]]:
    """`darkcfg run --json` on the CPU (fp32) against ``device`` fp32 and fp16 (--half): per model
    the detection counts, how many CPU boxes have a same-class partner with IoU >= 0.9, and the
    largest probability and corner difference over those pairs."""
    results = []
    for name in DETECTORS:
        cfg, weights = shared / "darknet" / f"{name}.cfg", shared / "darknet" / f"{name}.weights"
        runs = {}
        for label, extra in (("cpu", ["--device", "cpu"]), (device, ["--device", device]),
                             (device + " --half", ["--device", device, "--half"])):
            if label != "cpu" and not device.startswith("cuda"):
                continue
            p = subprocess.run([sys.executable, "-m", "darkcfg", "run", str(cfg), str(weights), str(shared / IMAGE),
                                "--json", *extra], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
            runs[label] = json.loads(p.stdout)["detections"] if p.returncode == 0 else p.stderr.strip()[-300:]
        row: Dict[str, Any] = {"model": name, "counts": {k: len(v) if isinstance(v, list) else v for k, v in runs.items()}}
        for label, dets in runs.items():
            if label != "cpu" and isinstance(dets, list) and isinstance(runs["cpu"], list):
                row[label] = compare_detections(runs["cpu"], dets)
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def run(shared: Path, repeats: int, device: str, rows: List[str]) -> None:
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check run: torch sees no CUDA device here")
    report: Dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else device, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    print(json.dumps(report), flush=True)
    env = {"DARKCFG_SHARED": str(shared.resolve()), "PYTHONPATH": str(REPO)}
    report["tests"] = _sub(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_graph.py",
                            "tests/test_model.py"], env)
    for flag in ([], ["--optimized"]):
        report["conformance" + "".join(flag)] = conformance(shared, device, flag, env)
    if cuda:  # without TF32 (NVIDIA_TF32_OVERRIDE=0: cuDNN and cuBLAS in full float32), at the CPU's bound
        report["conformance-no-tf32"] = conformance(shared, device, ["--rtol", "1e-4"],
                                                    {**env, "NVIDIA_TF32_OVERRIDE": "0"})
    report["detections"] = detections(shared, device, env)
    report["speed"] = speed_rows(shared, repeats, device, rows)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    pk = sub.add_parser("pack", help="copy what the run needs from ../shared into .gpu/")
    pk.add_argument("--shared", type=Path, default=None, help="default: $DARKCFG_SHARED or ../shared")
    pk.add_argument("--out", type=Path, default=REPO / ".gpu")
    pk.add_argument("--mib", type=float, default=40.0, help="size budget (the device run carries <= 64 MiB)")
    rn = sub.add_parser("run", help="the checks, on a machine with a CUDA device")
    rn.add_argument("--shared", type=Path, default=REPO / ".gpu")
    rn.add_argument("--repeats", type=int, default=30)
    rn.add_argument("--device", default="cuda", help="cuda (default); cpu: a dry run of the script here")
    rn.add_argument("--rows", default="", help="comma-separated speed rows (default: all five)")
    args = p.parse_args()
    if args.what == "pack":
        shared = args.shared or shared_dir()
        if shared is None:
            raise SystemExit("gpu_check pack: the shared fixtures were not found; set DARKCFG_SHARED")
        pack(Path(shared), args.out, args.mib)
    else:
        run(args.shared, args.repeats, args.device, [r for r in args.rows.split(",") if r])


if __name__ == "__main__":
    main()
