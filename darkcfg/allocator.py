"""Keep freed tensor memory in the process heap between forwards (glibc only; opt-out).

Why: glibc serves every allocation above its mmap threshold (128 KiB at start, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns the heap top to the system once
more than the trim threshold is free.  A forward allocates and frees one output per layer, so
by default every new activation tensor is fresh memory whose pages fault in one by one while
the first kernel writes them: on the 2-core VMs this project runs on that doubled the time of
a leaky pass and made a mish pass 5x slower (0.6 vs 3.2 ms on 1x16x160x160), and cost
Yolo-Fastest 20-25% end to end.  OpenCV and onnxruntime avoid it with their own memory plans
and arenas; this gives eager PyTorch the same reuse by making glibc keep freed blocks
(up to 32 MiB each, glibc's ceiling) in the heap.

The setting is process-wide, so :meth:`Darknet.optimize` applies it (inference set-up), never
``import darkcfg``; ``DARKCFG_MALLOC_TUNING=0`` turns it off.  Peak memory is unchanged (the
blocks are reused, not added); what changes is that the heap does not shrink between calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses a larger mmap threshold (half its 64 MiB maximum heap size).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap top glibc may keep instead of returning it with ``brk``.
TRIM_THRESHOLD = 1 << 30

_applied = False


def _open_libc() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Apply the setting once per process; True if it is in effect (glibc Linux, not opted out)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("DARKCFG_MALLOC_TUNING", "1") == "0":
        return False
    try:
        # glibc's soname first: ``find_library`` runs ``ldconfig -p`` in a subprocess (~2-3 ms of
        # every process's first ``optimize()``); it stays the fallback for other layouts.
        libc = _open_libc()
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
