"""Two small CPU kernels compiled on first use from the C below (optional): a one-pass mish
for inference, and Darknet's float64 BN fold for ``fuse()``.

Why: mish is most of the activation work of the CSP/YOLOv4 family and PyTorch has no fast
kernel for it: ``F.mish`` is not vectorised and the best eager formula
(:func:`darkcfg.layers.activations.mish`) still makes six passes over the tensor; issue #10
measured mish at ~20% of yolov4's fp32 time.  ``torch.compile`` fuses it but costs tens of
seconds per process.  This is one vectorised pass: ``y = x * n / (n + 2)`` with
``n = e * (e + 2)``, ``e = exp(min(x, 20))`` (0 below -88) -- exactly ``x * tanh(softplus(x))`` since
``tanh(log(1 + e)) = ((1+e)^2 - 1) / ((1+e)^2 + 1)``; at ``x >= 20`` it is ``x``, as Darknet's
softplus threshold gives.  ``exp`` is a Cody-Waite range reduction and a degree-7 polynomial
(relative error ~1e-7), written so the compiler vectorises the loop; no ``-ffast-math`` (``-fno-trapping-math`` lets the compiler turn the clamps into selects).

The fold (:func:`scale_rows_f64`) is ``float32(float64(w) * k)`` per output row, the product
Darknet's ``fuse_conv_batchnorm`` stores, in one vectorised pass split over torch's threads:
bit-identical to numpy's buffered mixed-type multiply, 3x faster on yolov4's 246 MiB (it was
most of ``optimize()``).

The source is compiled with the system C compiler (``cc``, ``-O3 -march=native``, well under
a second) into the user cache (``$DARKCFG_HOME/kernels/<hash>/``, atomically: a temporary
file renamed into place), keyed by source, compiler and CPU flags, so each machine builds it
once.  No compiler, a failed build or ``DARKCFG_NATIVE=0``: :func:`mish_kernel` returns None
and the eager formula runs; nothing fails.  Threads: the kernel splits large tensors over
``torch.get_num_threads()`` pthreads (no second OpenMP runtime next to torch's).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

_SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <string.h>

static inline float dk_exp(float x) {
    /* x <= 20 here; below -87.3 the result underflows to 0 (as expf does, to within a denormal) */
    x = x < -87.3f ? -87.3f : x;
    float t = x * 1.44269504088896341f;
    float k = (t + 12582912.0f) - 12582912.0f;          /* round to nearest, |t| < 2^22 */
    float r = x - k * 0.693145751953125f;               /* ln2 split in two (Cody-Waite) */
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float mish1(float v) {
    float e = dk_exp(v < 20.0f ? v : 20.0f);
    e = v > -88.0f ? e : 0.0f;                         /* expf underflows to 0 there too */
    float m = e * (e + 2.0f);
    return v * (m / (m + 2.0f));                       /* ratio first: no overflow for huge x */
}

static void mish_f32(const void *src, void *dst, int64_t n) {
    const float *x = (const float *)src;
    float *y = (float *)dst;
    for (int64_t i = 0; i < n; i++) y[i] = mish1(x[i]);
}

/* bf16 in and out, float inside; rounding to nearest even and NaN as torch converts them */
static void mish_bf16(const void *src, void *dst, int64_t n) {
    const uint16_t *x = (const uint16_t *)src;
    uint16_t *y = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        uint32_t in = (uint32_t)x[i] << 16;
        float v, r;
        memcpy(&v, &in, sizeof v);
        r = mish1(v);
        uint32_t u;
        memcpy(&u, &r, sizeof u);
        uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        y[i] = (uint16_t)(r != r ? 0x7FC0u : rounded);
    }
}

/* One launcher for both kernels: [0, n) split into `threads` ranges (multiples of `align`),
   the first run here, the others on pthreads (no second OpenMP runtime beside torch's) */
typedef void (*dk_part)(void *ctx, int64_t lo, int64_t hi);
typedef struct { dk_part fn; void *ctx; int64_t lo, hi; } dk_job;

static void *dk_run(void *arg) {
    dk_job *j = (dk_job *)arg;
    j->fn(j->ctx, j->lo, j->hi);
    return 0;
}

static void dk_split(dk_part fn, void *ctx, int64_t n, int64_t align, int threads, int64_t work) {
    if (threads > 64) threads = 64;
    if (threads < 2 || n < 2 || work < 65536) { fn(ctx, 0, n); return; }
    pthread_t tid[64];
    dk_job jobs[64];
    int started[64] = {0};
    int64_t chunk = ((n + threads - 1) / threads + align - 1) / align * align;
    for (int t = 1; t < threads && chunk * t < n; t++) {
        int64_t lo = chunk * t, hi = lo + chunk < n ? lo + chunk : n;
        jobs[t].fn = fn; jobs[t].ctx = ctx; jobs[t].lo = lo; jobs[t].hi = hi;
        started[t] = pthread_create(&tid[t], 0, dk_run, &jobs[t]) == 0;
        if (!started[t]) fn(ctx, lo, hi);
    }
    fn(ctx, 0, chunk < n ? chunk : n);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(tid[t], 0);
}

typedef struct { const void *x; void *y; } dk_pair;

static void mish_f32_part(void *ctx, int64_t lo, int64_t hi) {
    dk_pair *p = (dk_pair *)ctx;
    mish_f32((const float *)p->x + lo, (float *)p->y + lo, hi - lo);
}

static void mish_bf16_part(void *ctx, int64_t lo, int64_t hi) {
    dk_pair *p = (dk_pair *)ctx;
    mish_bf16((const uint16_t *)p->x + lo, (uint16_t *)p->y + lo, hi - lo);
}

void darkcfg_mish(const float *x, float *y, int64_t n, int threads) {
    dk_pair p = {x, y};
    dk_split(mish_f32_part, &p, n, 32, threads, n);
}

void darkcfg_mish_bf16(const uint16_t *x, uint16_t *y, int64_t n, int threads) {
    dk_pair p = {x, y};
    dk_split(mish_bf16_part, &p, n, 32, threads, n);
}

/* Darknet's BN fold: w[r][i] = (float)((double)w[r][i] * k[r]), rows split over threads */
typedef struct { float *w; const double *k; int64_t len; } dk_fold;

static void fold_part(void *ctx, int64_t lo, int64_t hi) {
    dk_fold *f = (dk_fold *)ctx;
    for (int64_t r = lo; r < hi; r++) {
        double g = f->k[r];
        float *row = f->w + r * f->len;
        for (int64_t i = 0; i < f->len; i++) row[i] = (float)((double)row[i] * g);
    }
}

void darkcfg_scale_rows(float *w, const double *k, int64_t rows, int64_t len, int threads) {
    dk_fold f = {w, k, len};
    dk_split(fold_part, &f, rows, 1, threads, rows * len / 4);
}
"""

_lock = threading.Lock()
_library: "Optional[ctypes.CDLL] | bool" = False  # False: not tried yet; None: unavailable here


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _build(cc: str) -> Path:
    """The compiled library's path, building it into the cache first if needed."""
    from .zoo import cache_home

    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math"]
    key = hashlib.sha256("\0".join([_SOURCE, cc, " ".join(flags), platform.machine(), _cpu_flags()]).encode())
    folder = cache_home() / "kernels" / key.hexdigest()[:16]
    lib = folder / "libdarkcfg_mish.so"
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / "mish.c"
        src.write_text(_SOURCE, encoding="utf-8")
        out = Path(tmp) / lib.name
        subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, lib)  # atomic: a concurrent process sees no half-written library
    return lib


def _native() -> Optional[ctypes.CDLL]:
    """The compiled library (built on first use, then loaded from the cache), or None where it
    cannot be: not Linux, no C compiler, a failed build, or ``DARKCFG_NATIVE=0``."""
    global _library
    with _lock:
        if _library is False:
            _library = None
            cc = _compiler()
            if os.environ.get("DARKCFG_NATIVE", "1") != "0" and cc is not None and platform.system() == "Linux":
                try:
                    lib = ctypes.CDLL(str(_build(cc)))
                    for name in ("darkcfg_mish", "darkcfg_mish_bf16"):
                        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
                        getattr(lib, name).restype = None
                    lib.darkcfg_scale_rows.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                       ctypes.c_int64, ctypes.c_int]
                    lib.darkcfg_scale_rows.restype = None
                    _library = lib
                except (OSError, subprocess.SubprocessError, AttributeError):
                    pass
        return _library if isinstance(_library, ctypes.CDLL) else None


def mish_kernel() -> Optional[Callable[[Tensor], Tensor]]:
    """``f(x) -> mish(x)`` for dense CPU float32 or bfloat16 tensors (:func:`applies`), or None
    where the library is unavailable.  bf16 is computed in float and rounded once, as torch rounds."""
    lib = _native()
    if lib is None:
        return None
    kernels = {torch.float32: lib.darkcfg_mish, torch.bfloat16: lib.darkcfg_mish_bf16}

    def mish(x: Tensor) -> Tensor:
        y = torch.empty_like(x)
        kernels[x.dtype](x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads())
        return y

    return mish


def applies(x: Tensor) -> bool:
    """Dense (any memory format), CPU, float32 or bfloat16, outside autograd: the kernel's domain."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not x.requires_grad
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)))


def scale_rows_f64(w: Tensor, k: Tensor) -> bool:
    """``w[r] = float32(float64(w[r]) * k[r])`` in place, for a contiguous CPU float32 ``w`` and
    float64 ``k`` (one per row): Darknet's BN fold in one vectorised pass over the weights.

    Returns False (nothing done) where the native library is unavailable.
    """
    lib = _native()
    if lib is None:
        return False
    if not (w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous() and k.dtype == torch.float64
            and k.device.type == "cpu" and k.is_contiguous() and k.numel() == w.shape[0]):
        return False
    lib.darkcfg_scale_rows(w.data_ptr(), k.data_ptr(), w.shape[0], w[0].numel() if w.shape[0] else 0,
                           torch.get_num_threads())
    return True
