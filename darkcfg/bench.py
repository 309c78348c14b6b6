"""Side-by-side speed measurement: darkcfg (unfused, fused) vs OpenCV's Darknet importer.

All contenders run in the same process, on the same input, interleaved round by
round, so the printed ratios compare like with like.  Numbers are medians of
``iters`` timed forward passes after ``warmup`` untimed ones.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .model import load
from .precision import BF16_FLAGS
from .weights import synthetic_weights


def _time_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run_bench(cfg: str, weights: Optional[str] = None, size: Optional[tuple[int, int]] = None, batch: int = 1,
              device: str = "cpu", iters: int = 10, warmup: int = 2, opencv: bool = True, threads: int = 0,
              channels_last: bool = False, bf16: bool = False) -> dict:
    if threads > 0:
        torch.set_num_threads(threads)
    model = load(cfg, size=size, device=device)
    x = torch.rand(batch, model.channels, model.height, model.width, device=device)
    contenders: dict[str, Callable[[], object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wpath = Path(weights) if weights else Path(tmp) / "synthetic.weights"
        if not weights:  # well-scaled random weights: an uninitialised net overflows to inf
            wpath.write_bytes(synthetic_weights(model.graph))
        model.load_weights(wpath)
        fused = load(cfg, wpath, size=size, device=device).fuse()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def run(m: torch.nn.Module) -> Callable[[], object]:
            def go() -> object:
                with torch.inference_mode():
                    out = m(x)
                sync()
                return out
            return go

        contenders["darkcfg (unfused BN)"] = run(model)
        contenders["darkcfg (fused BN)"] = run(fused)
        contenders["darkcfg optimize()"] = run(load(cfg, wpath, size=size, device=device).optimize())
        bf16_note = ""
        if bf16:
            reduced = load(cfg, wpath, size=size, device=device).optimize(dtype=torch.bfloat16)
            contenders["darkcfg optimize() bf16"] = run(reduced)
            bf16_note = reduced.precision_note or ""
        if device.startswith("cuda"):  # fp16 (what `run --half` uses), then the same with CUDA graphs
            contenders["darkcfg optimize() fp16"] = run(load(cfg, wpath, size=size, device=device)
                                                        .optimize(dtype=torch.float16))
            contenders["darkcfg fp16 + CUDA graph"] = run(load(cfg, wpath, size=size, device=device)
                                                          .optimize(dtype=torch.float16, cuda_graph=True))
        if channels_last:
            cl = load(cfg, wpath, size=size, device=device).fuse().to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)

            def go_cl() -> object:
                with torch.inference_mode():
                    out = cl(xc)
                sync()
                return out
            contenders["darkcfg (fused, NHWC)"] = go_cl
        cv_note = ""
        if opencv:
            cv_fn, cv_note = _opencv_contender(cfg, wpath, x, threads)
            if cv_fn is not None:
                contenders["OpenCV DNN"] = cv_fn
        for fn in contenders.values():
            for _ in range(warmup):
                fn()
        times = {name: [] for name in contenders}
        for _ in range(iters):  # interleave so drift hits everyone alike
            for name, fn in contenders.items():
                times[name].append(_time_ms(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med.get("OpenCV DNN", med["darkcfg (unfused BN)"])
    cpu, _ = cpu_description()
    lines = [f"{cfg} input {batch}x{model.channels}x{model.height}x{model.width} on {device}, "
             f"torch threads {torch.get_num_threads()}, median of {iters}", f"  CPU: {cpu}"]
    width = max(23, *map(len, med))
    for name, ms in med.items():
        lines.append(f"  {name:{width}s} {ms:9.2f} ms   {base / ms:5.2f}x vs {'OpenCV' if 'OpenCV DNN' in med else 'unfused'}")
    if cv_note:
        lines.append(f"  OpenCV: {cv_note}")
    if bf16_note:
        lines.append(f"  bf16: {bf16_note}")
    paths = fast_paths()
    lines.append("  optimize() fast paths: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return {"cfg": str(cfg), "weights": str(weights) if weights else "synthetic", "batch": batch, "width": model.width, "height": model.height, "device": device,
            "iters": iters, "median_ms": med, "fast_paths": paths, "cpu": cpu, "bf16_note": bf16_note or None,
            "lines": lines}


def fast_paths() -> dict:
    """Which CPU fast paths ``optimize()`` has in this process (a speed figure means little
    without it): the native C kernels and how they thread, Winograd for dense 3x3 convs (it
    needs the kernels), oneDNN's fused conv, and frame replays (:mod:`darkcfg.replay`)."""
    from . import native
    from .layers import onednn, winograd

    have_library = native.library() is not None
    if not have_library:
        kernels = "unavailable (no C compiler, not Linux, or DARKCFG_NATIVE=0)"
    else:
        kernels = "on torch's OpenMP threads" if native.uses_openmp() else "pthreads"
    if not winograd.enabled():
        wino = "off (DARKCFG_WINOGRAD=0)"
    else:
        wino = "yes" if have_library else "no (needs the native kernels)"
    replays = "off (DARKCFG_REPLAY=0)" if os.environ.get("DARKCFG_REPLAY") == "0" else "yes"
    return {"native kernels": kernels, "Winograd 3x3": wino, "oneDNN fused conv": "yes" if onednn.available() else "no",
            "frame replays": replays}


def _opencv_contender(cfg: str, weights: Path, x: torch.Tensor, threads: int) -> tuple[Optional[Callable[[], object]], str]:
    try:
        import cv2
    except ImportError:
        return None, "not installed"
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        return None, "this OpenCV has no Darknet importer (removed in OpenCV 5)"
    if x.device.type != "cpu":
        return None, "skipped on a non-CPU device"
    try:
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    except cv2.error as exc:
        return None, f"cannot load the cfg: {str(exc).strip().splitlines()[-1]}"
    if threads > 0:
        cv2.setNumThreads(threads)
    blob = np.ascontiguousarray(x.cpu().numpy())
    names = net.getUnconnectedOutLayersNames()

    def go() -> object:
        net.setInput(blob)
        return net.forward(names)

    try:
        go()
    except cv2.error as exc:
        return None, f"forward failed: {str(exc).strip().splitlines()[-1]}"
    return go, ""


def cpu_description() -> tuple[str, bool]:
    """(one line naming the CPU and its relevant flags, whether it has bf16 hardware)."""
    name, flags = "unknown CPU", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        name = m.group(1).strip() if m else name
        f = re.search(r"^Flags:\s*(.+)$", out, re.M)
        flags = set(f.group(1).split()) if f else set()
    except (OSError, subprocess.SubprocessError):
        pass
    bf16 = bool(BF16_FLAGS & flags)
    have = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if x in flags]
    missing = [x for x in ("avx512f", "avx512_bf16", "amx_bf16") if x not in flags]
    return (f"{name}; {os.cpu_count()} logical CPUs; flags: {', '.join(have) or 'none of avx2/avx512'}"
            f"{'; no ' + ', no '.join(missing) if missing else ''}"), bf16
