"""darkcfg's small CPU kernels, compiled on first use from ``csrc/darkcfg_kernels.c`` (optional):
a one-pass mish for inference, Darknet's float64 BN fold for ``fuse()``, direct NHWC
convolutions and max pools for small layers (used by :mod:`darkcfg.layers.direct_conv`, which
says why), and the Winograd transforms of :mod:`darkcfg.layers.winograd`.

Why: mish is most of the activation work of the CSP/YOLOv4 family and PyTorch has no fast
kernel for it: ``F.mish`` is not vectorised and the best eager formula
(:func:`darkcfg.layers.activations.mish`) still makes six passes over the tensor; issue #10
measured mish at ~20% of yolov4's fp32 time.  ``torch.compile`` fuses it but costs tens of
seconds per process.  This is one vectorised pass: ``y = x * n / (n + 2)`` with
``n = e * (e + 2)``, ``e = exp(min(x, 20))`` (0 below -88) -- exactly ``x * tanh(softplus(x))`` since
``tanh(log(1 + e)) = ((1+e)^2 - 1) / ((1+e)^2 + 1)``; at ``x >= 20`` it is ``x``, as Darknet's
softplus threshold gives.  ``exp`` is a Cody-Waite range reduction and a degree-7 polynomial
(relative error ~1e-7), written so the compiler vectorises the loop; no ``-ffast-math`` (``-fno-trapping-math`` lets the compiler turn the clamps into selects).

The fold (:func:`scale_rows_f64`; :func:`scale_rows_many` for a whole model's convs at once,
:func:`bn_fold_many` with their batch norms' gains and shifts computed here too) is
``float32(float64(w) * k)`` per output row, the product Darknet's ``fuse_conv_batchnorm``
stores, in one vectorised pass split over torch's threads:
bit-identical to numpy's buffered mixed-type multiply, 3x faster on yolov4's 246 MiB (it was
most of ``optimize()``).

The source is compiled with the system C compiler (``cc``, ``-O3 -march=native``, well under
a second) into the user cache (``$DARKCFG_HOME/kernels/<hash>/``, atomically: a temporary
file renamed into place), keyed by source, compiler and CPU flags, so each machine builds it
once.  No compiler, a failed build or ``DARKCFG_NATIVE=0``: :func:`library` is None, the
eager formulas and oneDNN run; nothing fails.  Threads: where torch runs on GNU OpenMP (the
Linux wheels) the library is built with ``-fopenmp`` and its ``libgomp.so.1`` resolves to the
copy torch loaded, so the kernels split work over torch's own thread team (a fork/join costs
microseconds; no second pool competes for the cores); elsewhere large tensors are split over
pthreads started per call.  :func:`uses_openmp` says which.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import operator
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

#: The C source (package data): read once, hashed into the cache key with the compiler and flags.
_SOURCE_FILE = Path(__file__).with_name("csrc") / "darkcfg_kernels.c"


def _source() -> str:
    return _SOURCE_FILE.read_text(encoding="utf-8")


_lock = threading.Lock()
_library: "Optional[ctypes.CDLL] | bool" = False  # False: not tried yet; None: unavailable here


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def proc_cpu_flags() -> Optional[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (x86 ``flags``, Arm ``Features``), or
    None where there is no such file (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> str:
    return proc_cpu_flags() or platform.processor()


def _torch_uses_gnu_openmp() -> bool:
    """True when torch's intra-op threads are GNU OpenMP's (libgomp loaded in this process): a
    library built with ``-fopenmp`` then joins torch's thread team instead of adding a second one."""
    try:
        if "OpenMP" not in torch.__config__.parallel_info():
            return False
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libgomp" in line for line in f)
    except (OSError, RuntimeError):
        return False


def _build(cc: str, openmp: bool) -> Path:
    """The compiled library's path, building it into the cache first if needed."""
    from .zoo import cache_home

    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math"]
    if openmp:
        flags.append("-fopenmp")
    source = _source()
    key = hashlib.sha256("\0".join([source, cc, " ".join(flags), platform.machine(), _cpu_flags()]).encode())
    folder = cache_home() / "kernels" / key.hexdigest()[:16]
    lib = folder / "libdarkcfg_kernels.so"
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / _SOURCE_FILE.name
        src.write_text(source, encoding="utf-8")
        out = Path(tmp) / lib.name
        subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, lib)  # atomic: a concurrent process sees no half-written library
    return lib


def _load(cc: str) -> ctypes.CDLL:
    """Build (OpenMP where torch uses GNU OpenMP; plain if that build or load fails) and load."""
    if _torch_uses_gnu_openmp():
        try:
            return ctypes.CDLL(str(_build(cc, openmp=True)))
        except (OSError, subprocess.SubprocessError):
            pass  # e.g. a compiler without libgomp: the pthread build below
    return ctypes.CDLL(str(_build(cc, openmp=False)))


def library() -> Optional[ctypes.CDLL]:
    """The compiled library (built on first use, then loaded from the cache), or None where it
    cannot be: not Linux, no C compiler, a failed build, or ``DARKCFG_NATIVE=0``."""
    global _library
    with _lock:
        if _library is False:
            _library = None
            cc = _compiler()
            if os.environ.get("DARKCFG_NATIVE", "1") != "0" and cc is not None and platform.system() == "Linux":
                try:
                    lib = _load(cc)
                    for name in ("darkcfg_mish", "darkcfg_mish_bf16"):
                        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
                        getattr(lib, name).restype = None
                    lib.darkcfg_scale_rows.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_int]
                    lib.darkcfg_scale_rows.restype = None
                    lib.darkcfg_bn_gains.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int,
                                                                              ctypes.c_void_p]
                    lib.darkcfg_bn_gains.restype = None
                    ptr = ctypes.c_void_p
                    for name in ("darkcfg_dw_nhwc", "darkcfg_pw_nhwc", "darkcfg_conv_nhwc", "darkcfg_gconv_nhwc"):  # x, w, b, y, geometry
                        getattr(lib, name).argtypes = [ptr] * 5
                        getattr(lib, name).restype = None
                    lib.darkcfg_pw_split_nhwc.argtypes = [ptr] * 6  # x, x2, w, b, y, geometry
                    lib.darkcfg_pw_split_nhwc.restype = None
                    lib.darkcfg_pw_residual_nhwc.argtypes = [ptr] * 6 + [ctypes.c_int]  # x, w, b, r, y, g, act
                    lib.darkcfg_pw_residual_nhwc.restype = None
                    # x, expand w/b, depthwise w/b, project w/b, residual, y, geometry
                    lib.darkcfg_block_nhwc.argtypes = [ptr] * 10
                    lib.darkcfg_block_nhwc.restype = None
                    lib.darkcfg_bgemm_packed.argtypes = [ptr] * 4  # v, packed u, out, geometry
                    lib.darkcfg_bgemm_packed.restype = None
                    lib.darkcfg_maxpool_nhwc.argtypes = [ptr] * 3  # x, y, geometry
                    lib.darkcfg_maxpool_nhwc.restype = None
                    lib.darkcfg_concat_nhwc.argtypes = [ptr] * 3  # part pointers, y, geometry
                    lib.darkcfg_concat_nhwc.restype = None
                    lib.darkcfg_wino_in_nhwc.argtypes = [ptr] * 3  # x, transformed tiles, geometry
                    lib.darkcfg_wino_in_nhwc.restype = None
                    lib.darkcfg_wino_out_nhwc.argtypes = [ptr] * 5  # GEMM output, bias, residual, y, geometry
                    lib.darkcfg_wino_out_nhwc.restype = None
                    lib.darkcfg_wino_weights.argtypes = [ptr] * 3 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                                                      ctypes.c_int, ctypes.c_int]  # w, u, G, K, C, a, threads, packed
                    lib.darkcfg_wino_weights.restype = None
                    lib.darkcfg_resize_u8.argtypes = [ptr] * 11 + [ctypes.c_int]  # see resize_u8
                    lib.darkcfg_resize_u8.restype = None
                    lib.darkcfg_nonfinite.argtypes = [ptr, ctypes.c_int64, ctypes.c_int]  # x, n, threads
                    lib.darkcfg_nonfinite.restype = ctypes.c_int64
                    lib.darkcfg_openmp.argtypes = []
                    lib.darkcfg_openmp.restype = ctypes.c_int
                    _library = lib
                except (OSError, subprocess.SubprocessError, AttributeError):
                    pass
        return _library if isinstance(_library, ctypes.CDLL) else None


def mish_kernel() -> Optional[Callable[[Tensor], Tensor]]:
    """``f(x) -> mish(x)`` for dense CPU float32 or bfloat16 tensors (:func:`applies`), or None
    where the library is unavailable.  bf16 is computed in float and rounded once, as torch rounds."""
    lib = library()
    if lib is None:
        return None
    kernels = {torch.float32: lib.darkcfg_mish, torch.bfloat16: lib.darkcfg_mish_bf16}

    def mish(x: Tensor) -> Tensor:
        y = torch.empty_like(x)
        kernels[x.dtype](x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads())
        return y

    return mish


def resize_u8(hwc: "np.ndarray", cols: Sequence["np.ndarray"], rows: Sequence["np.ndarray"],
              out: "np.ndarray") -> bool:
    """Darknet's ``resize_image`` of the contiguous ``H x W x C`` uint8 image ``hwc`` at the output
    columns ``cols`` = (source index, next index, float32 fraction, is-last-column) and rows
    ``rows`` = (source index, next index, fraction, add-the-next-row), each as arrays in the order
    the outputs go, into the float32 ``out`` (``C x len(rows) x len(cols)``, any strides with unit
    column stride).  False (nothing written) where the library is unavailable.

    On the calling thread only: images are prepared in forked loader processes too
    (:mod:`darkcfg.batching`), where a GNU OpenMP team the parent started would hang forever."""
    lib = library()
    if lib is None or not hwc.flags.c_contiguous or out.dtype != np.float32 or out.strides[2] != 4:
        return False
    ix, ix1, dx, last = (np.ascontiguousarray(a, dtype=t) for a, t in
                         zip(cols, (np.int64, np.int64, np.float32, np.uint8)))
    iy, iy1, dy, add = (np.ascontiguousarray(a, dtype=t) for a, t in
                        zip(rows, (np.int64, np.int64, np.float32, np.uint8)))
    h, w, c = hwc.shape
    g = np.array([h, w, c, len(ix), len(iy), out.strides[0] // 4, out.strides[1] // 4], dtype=np.int64)
    lib.darkcfg_resize_u8(hwc.ctypes.data, ix.ctypes.data, ix1.ctypes.data, dx.ctypes.data, last.ctypes.data,
                          iy.ctypes.data, iy1.ctypes.data, dy.ctypes.data, add.ctypes.data, out.ctypes.data,
                          g.ctypes.data, 1)
    return True


def all_finite(values: "np.ndarray", threads: int = 0) -> Optional[bool]:
    """Whether a contiguous float32 array holds no NaN/Inf, by one native pass over ``threads``
    threads (0: torch's count; no bool array per value, as ``np.isfinite(values).all()`` makes);
    None where the library is unavailable or the array is not of that kind."""
    lib = library()
    if lib is None or values.dtype != np.float32 or not values.flags.c_contiguous:
        return None
    return lib.darkcfg_nonfinite(values.ctypes.data, values.size, threads or torch.get_num_threads()) == 0


def applies(x: Tensor) -> bool:
    """Dense (any memory format), CPU, float32 or bfloat16, outside autograd: the kernel's domain."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not x.requires_grad
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)))


def scale_rows_f64(w: Tensor, k: Tensor) -> bool:
    """``w[r] = float32(float64(w[r]) * k[r])`` in place, for a contiguous CPU float32 ``w`` and
    float64 ``k`` (one per row): Darknet's BN fold in one vectorised pass over the weights.

    Returns False (nothing done) where the native library is unavailable.
    """
    return scale_rows_many([w], k)


def scale_rows_many(weights: Sequence[Tensor], gains: Tensor) -> bool:
    """:func:`scale_rows_f64` for many tensors in ONE pass split evenly over torch's threads:
    ``gains`` holds their rows' gains one after the other (float64, contiguous).

    Why: yolov4's 107 folds one by one were 107 calls and thread fork/joins, each split by its
    own rows (uneven for small convs); the whole model as one range of elements is one of each.
    Returns False (nothing done) where the library is unavailable or a tensor is not a
    contiguous CPU float32 one (the caller folds those itself).
    """
    lib = library()
    if lib is None:
        return False
    if not (gains.dtype == torch.float64 and gains.device.type == "cpu" and gains.is_contiguous()):
        return False
    if not _cpu_float32_contiguous(weights):
        return False
    rows = [w.shape[0] if w.dim() else 1 for w in weights]
    if sum(rows) != gains.numel():
        return False
    _scale_rows(lib, weights, rows, gains)
    return True


def _cpu_float32_contiguous(tensors: Sequence[Tensor]) -> bool:
    """Every tensor a contiguous CPU float32 one (C-level loops: a model's worth in ~0.1 ms)."""
    return (all(map(_IS_CPU, tensors)) and all(map(operator.is_, map(_DTYPE, tensors), itertools.repeat(torch.float32)))
            and all(map(Tensor.is_contiguous, tensors)))


_IS_CPU, _DTYPE = operator.attrgetter("is_cpu"), operator.attrgetter("dtype")


def _scale_rows(lib: ctypes.CDLL, weights: Sequence[Tensor], rows: List[int], gains: Tensor) -> None:
    """The native fold of :func:`scale_rows_many`, its arguments checked."""
    first_rows = np.cumsum([0] + rows[:-1], dtype=np.int64)
    live = [(w, r, g) for w, r, g in zip(weights, rows, first_rows.tolist()) if w.numel()]
    n = len(live)
    table = np.zeros((4, n + 1), dtype=np.int64)  # pointers, gain offsets, row lengths, element starts
    table[0, :n] = [w.data_ptr() for w, _, _ in live]
    table[1, :n] = [g for _, _, g in live]
    table[2, :n] = [w.numel() // r for w, r, _ in live]
    np.cumsum([w.numel() for w, _, _ in live], out=table[3, 1:])
    ptr = table.ctypes.data
    lib.darkcfg_scale_rows(ptr, gains.data_ptr(), ptr + 8 * (n + 1), ptr + 16 * (n + 1), ptr + 24 * (n + 1), n,
                           torch.get_num_threads())


def bn_fold_many(weights: Sequence[Tensor], bns: Sequence[Sequence[Tensor]], biases: Sequence[Tensor],
                 pjreddie: bool) -> bool:
    """Darknet's BN fold for many convs at once: each conv's gains and shift computed from its BN
    (``bns[j]`` = scale, bias, running mean, running variance), the shift written into
    ``biases[j]`` and ``weights[j]`` scaled in place (:func:`scale_rows_many`).

    The same bits as :meth:`darkcfg.layers.conv.DarknetBatchNorm.gain_shift_of` on the
    concatenated BN tensors followed by :func:`scale_rows_many`, without the concatenations and
    the eight float64 tensor ops (~2 ms of yolov4's ``optimize()``, a tenth of it).
    Returns False (nothing written) where the library is unavailable or a tensor is not a
    contiguous CPU float32 one with a value per output row.
    """
    lib = library()
    if lib is None or not (len(weights) == len(bns) == len(biases)):
        return False
    rows = [w.shape[0] if w.dim() else 1 for w in weights]
    flat = [t for group in bns for t in group]
    if len(flat) != 4 * len(weights) or not _cpu_float32_contiguous(flat + list(biases) + list(weights)):
        return False
    if list(map(Tensor.numel, flat + list(biases))) != [r for r in rows for _ in range(4)] + rows:
        return False
    gains = torch.empty(sum(rows), dtype=torch.float64)
    table = np.array(list(map(Tensor.data_ptr, flat + list(biases))) + rows, dtype=np.int64)
    ptr, n = table.ctypes.data, len(weights)
    lib.darkcfg_bn_gains(ptr, ptr + 8 * 4 * n, ptr + 8 * 5 * n, n, int(pjreddie), gains.data_ptr())
    _scale_rows(lib, weights, rows, gains)
    return True


def uses_openmp() -> bool:
    """Whether the loaded library shares torch's OpenMP thread team (False: pthreads, or no library)."""
    lib = library()
    return bool(lib is not None and lib.darkcfg_openmp())
