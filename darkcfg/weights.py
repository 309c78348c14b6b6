"""Darknet ``.weights`` files: load and save, symmetric by construction.

Both directions walk ONE description of the file: for each layer, the spec's
float blocks (:attr:`darkcfg.graph.LayerSpec.blocks`, in ``load_weights_upto``
order) paired with the module tensors that hold them (``weight_tensors()``).
Load copies block -> tensor, save writes tensor -> block; the only layout
transforms (transposed [connected] matrices, ``flipped`` convs) are one pair of
functions used by both.

File layout (``darknet-format.md`` §6): int32 major, minor, revision; ``seen`` as
uint64 when ``major*10 + minor >= 2`` else uint32; then float32 blocks.  The file
is read in one pass into one buffer; each block is copied once into its tensor.

Differences from Darknet, on purpose: a file that is too short is an error naming
the layer (Darknet stops silently and leaves random weights); trailing floats are
an error under ``strict`` (Darknet ignores them); a failed load changes nothing.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from . import native
from .errors import WeightsError
from .fileio import (PARALLEL_READ_BYTES, at_once, atomic_write, open_regular, pread_into, read_at, read_into,
                     read_threads)
from .graph import Graph, LayerSpec

if TYPE_CHECKING:
    from .model import Darknet


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def size(self) -> int:
        return 20 if self.seen_is_64bit else 16

    @property
    def transpose(self) -> bool:
        """Darknet's flag for [connected] matrices stored [in][out]."""
        return self.major > 1000 or self.minor > 1000

    def pack(self) -> bytes:
        return struct.pack("<iii", self.major, self.minor, self.revision) + struct.pack(
            "<Q" if self.seen_is_64bit else "<I", self.seen)


DEFAULT_HEADER = Header(0, 2, 5, 0)  # what current Darknet writes


def parse_header(data: bytes | bytearray | memoryview, name: str) -> Header:
    if len(data) < 12:
        raise WeightsError(f"{name}: {len(data)} bytes is too short for a Darknet .weights header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if major < 0 or minor < 0 or revision < 0:
        raise WeightsError(f"{name}: header {major}.{minor}.{revision} is not a Darknet .weights header")
    wide = major * 10 + minor >= 2
    need = 20 if wide else 16
    if len(data) < need:
        raise WeightsError(f"{name}: {len(data)} bytes is too short for the {need}-byte header of version "
                           f"{major}.{minor}.{revision}")
    (seen,) = struct.unpack_from("<Q" if wide else "<I", data, 12)
    return Header(major, minor, revision, seen)


@dataclass(frozen=True)
class Slot:
    """One float block of the file and the tensor that holds it."""

    spec: LayerSpec
    role: str
    count: int
    tensor: Tensor
    file_shape: Optional[tuple[int, int]]  # (rows, cols) when the file holds the transpose of the tensor


def iter_slots(model: "Darknet", header: Header, upto: Optional[int] = None) -> Iterator[Slot]:
    """The file's blocks in order, for layers ``< upto``: THE description load and save share.

    ``dontload`` layers contribute nothing; ``dontloadscales`` drops the BN trio
    (Darknet assumes the file lacks it).
    """
    stop = len(model.layers) if upto is None else min(upto, len(model.layers))
    for spec, module in zip(model.graph.layers[:stop], list(model.layers)[:stop]):
        if not spec.blocks or spec.dontload:
            continue
        tensors = module.weight_tensors()
        roles = [b.role.split(".")[-1] for b in spec.blocks]
        if [r for r, _ in tensors] != roles or [t.numel() for _, t in tensors] != [b.count for b in spec.blocks]:
            raise RuntimeError(f"{spec.where}: module tensors {[(r, t.numel()) for r, t in tensors]} do not match "
                               f"the spec's blocks {[(b.role, b.count) for b in spec.blocks]}")  # a darkcfg bug
        for block, (role, tensor) in zip(spec.blocks, tensors):
            if block.optional_bn and spec.dontloadscales:
                continue
            yield Slot(spec, block.role, block.count, tensor, _file_shape(spec, role, tensor, header))


def _file_shape(spec: LayerSpec, role: str, tensor: Tensor, header: Header) -> Optional[tuple[int, int]]:
    """Shape of the transposed matrix the file stores, if it stores one."""
    if role != "weights":
        return None
    if spec.kind == "connected" and header.transpose:
        out_f, in_f = tensor.shape
        return (in_f, out_f)
    if spec.kind == "convolutional" and getattr(spec.attrs, "flipped", False):
        n = tensor.shape[0]
        return (tensor.numel() // n, n)
    return None


def _block_to_tensor(values: np.ndarray, slot: Slot) -> Tensor:
    if slot.file_shape is not None:
        values = values.reshape(slot.file_shape).T
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(slot.tensor.shape)


def _tensor_to_block(slot: Slot) -> np.ndarray:
    values = slot.tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if slot.file_shape is not None:
        values = values.reshape(slot.file_shape[::-1]).T
    return np.ascontiguousarray(values, dtype="<f4").reshape(-1)


WeightsSource = "str | os.PathLike | bytes | bytearray | memoryview | BinaryIO"


def _check_upto(upto: Optional[int], n_layers: int) -> Optional[int]:
    """``upto`` must be a layer count (Python's negative slicing would load a silent prefix)."""
    if upto is None:
        return None
    if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
        raise WeightsError(f"upto={upto!r} must be a number of layers >= 0 (the network has {n_layers}); "
                           "negative values are not counted from the end")
    return upto


def _path_of(source: "str | os.PathLike | bytes") -> str:
    """A file name; ``bytes`` are a path (as for ``open``), never the file's content."""
    if isinstance(source, bytes):
        if b"\x00" in source:
            raise WeightsError(f"load_weights was given {len(source)} bytes containing NUL bytes: bytes are taken as a "
                               "file path (as open() takes them); pass weights content as io.BytesIO(data) or "
                               "bytearray(data)")
        return os.fsdecode(source)
    return os.fspath(source)


def _read_source(source: WeightsSource, needed_floats: "Callable[[Header], int]",
                 strict_size: bool) -> tuple[bytearray | memoryview, Header, int, str]:
    """(data, header, floats in the file, name): header plus at most the floats the network needs.

    A file is checked to be a regular file and its size is known before anything is read:
    a FIFO never blocks and a huge (sparse) file costs only the bytes the network uses.
    """
    if isinstance(source, (bytearray, memoryview)):
        data: bytearray | memoryview = memoryview(source).cast("B")
        if data.readonly:  # tensors made from read-only buffers warn; one copy, as a file read makes
            data = memoryview(bytearray(data))
        header, body_bytes, name = parse_header(data, "<weights bytes>"), len(data), "<weights bytes>"
        body_bytes -= header.size
        _check_body(body_bytes, header, name)
        return data, header, body_bytes // 4, name
    if hasattr(source, "read"):
        raw = source.read()  # type: ignore[union-attr]
        if not isinstance(raw, (bytes, bytearray)):
            raise WeightsError("load_weights: the file object must be opened in binary mode")
        data = memoryview(bytearray(raw))
        header = parse_header(data, "<weights stream>")
        _check_body(len(data) - header.size, header, "<weights stream>")
        return data, header, (len(data) - header.size) // 4, "<weights stream>"
    name = _path_of(source)  # type: ignore[arg-type]
    f, size, head, header = _open_weights(name)
    with f:
        floats = (size - header.size) // 4
        need = needed_floats(header)
        if strict_size and floats > need:
            return memoryview(b""), header, floats, name  # the caller reports the left-over floats
        nbytes = header.size + 4 * min(floats, need)
        data = _aligned_buffer(nbytes, header.size)
        have = min(len(head), nbytes)
        data[:have] = head[:have]
        if nbytes > have:
            read_at(f, memoryview(data)[have:], have, name, WeightsError, torch.get_num_threads())
    return data, header, floats, name


def _open_weights(name: str) -> tuple[BinaryIO, int, bytes, Header]:
    """(open file, its size, its first 20 bytes, the header they hold) of a regular weights file
    whose body is a whole number of floats; the file is closed again on any error."""
    f, size = open_regular(name, "weights file", WeightsError)
    try:
        head = f.read(20)
        header = parse_header(head, name)
        _check_body(size - header.size, header, name)
    except BaseException:
        f.close()
        raise
    return f, size, head, header


def _aligned_buffer(nbytes: int, header_size: int) -> memoryview:
    """``nbytes`` of uninitialised memory whose float body (after the header) starts 64-byte aligned.

    No zero-fill pass (``bytearray(n)`` writes every page once before the read writes it again);
    the aligned body keeps the block-to-tensor copies on the fast memcpy path.
    """
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    start = (-(raw.ctypes.data + header_size)) % 64
    return memoryview(raw[start:start + nbytes]).cast("B")


def _check_body(body_bytes: int, header: Header, name: str) -> None:
    if body_bytes % 4:
        raise WeightsError(f"{name}: the body after the {header.size}-byte header is {body_bytes} bytes, "
                           "not a whole number of float32 values")


def _finite(values: np.ndarray, threads: int = 0) -> bool:
    """No NaN/Inf in ``values``: the native one-pass count (over ``threads``; 0: torch's) where it
    is built, else numpy."""
    fast = native.all_finite(values, threads)
    return bool(np.isfinite(values).all()) if fast is None else fast


def _check_values(body: "np.ndarray | list[np.ndarray]", slots: list[Slot], name: str, strict: bool,
                  finite: Optional[bool] = None) -> None:
    """NaN/Inf anywhere, or a batch-norm variance below -1e-6: a file that cannot give sane outputs.

    Darknet loads it silently and then reports no detections (``sqrt(variance + eps)`` is NaN
    once the variance is below -eps; eps is 1e-5, or 1e-6 in pjreddie's formula).  Tiny
    negative denormals (-7e-44 in some published files) are harmless and pass.  One
    vectorised pass; the per-block search only runs when something is wrong.  ``finite``: the
    caller already knows whether every value is finite (checked block by block as it read them).
    """
    problems: list[str] = []
    if isinstance(body, list):  # one array per slot (read straight into the tensors)
        blocks = body
        all_finite = all(_finite(b) for b in body) if finite is None else finite
    else:
        ends = np.cumsum([slot.count for slot in slots])
        blocks, all_finite = [body[e - slot.count:e] for e, slot in zip(ends, slots)], _finite(body)
    for slot, block in zip(slots, blocks):
        where = f"layer {slot.spec.index} [{slot.spec.section.raw_type}] '{slot.role}'"
        bad = 0 if all_finite else int(block.size - np.isfinite(block).sum())
        if bad:
            problems.append(f"{where}: {bad} NaN/Inf value(s)")
        neg = int((block < -1e-6).sum()) if slot.role.endswith("rolling_variance") else 0
        if neg:
            problems.append(f"{where}: {neg} negative variance(s) below -1e-6")
    if not problems:
        return
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more blocks" if len(problems) > 5 else "")
    message = f"{name}: the weights hold values no network can use: {shown}"
    if strict:
        raise WeightsError(message + ". Pass strict=False to load anyway (with a warning).")
    warnings.warn(message, stacklevel=3)


def load_weights(model: "Darknet", source: WeightsSource, upto: Optional[int] = None,
                 strict: bool = True, *, fresh: bool = False) -> Header:
    """Load ``source`` into ``model``; all-or-nothing.

    ``source`` is a path (``str``, ``os.PathLike`` or ``bytes``, as for ``open``), or the
    file's content as ``bytearray``/``memoryview``/a binary file object.  ``upto=N`` loads
    only layers ``< N`` (Darknet's ``load_weights_upto``; the file may hold more).  Raises
    :class:`WeightsError` naming the layer when the file is short, and, under ``strict``,
    when floats are left over or values are NaN/Inf or negative variances (warnings otherwise).

    ``fresh=True`` marks a model just built to receive this file (see :func:`darkcfg.load`):
    from a path, each block is then read straight into its tensor (:func:`_load_fresh_file`).
    Blocks are always copied into the model's own tensors, never adopted as views of the
    read buffer: views sit at other addresses and oneDNN may then pick another summation
    order, so the same file would give outputs that differ in the last bit between loads.
    """
    if model.fused:
        raise WeightsError("cannot load weights into a fused model: load before calling fuse()")
    upto = _check_upto(upto, len(model.layers))
    if fresh and isinstance(source, (str, bytes, os.PathLike)):
        header = _load_fresh_file(model, _path_of(source), upto, strict)
        if header is not None:
            return header
    slots_of: dict[Header, list[Slot]] = {}

    def needed(header: Header) -> int:
        slots_of[header] = list(iter_slots(model, header, upto))
        return sum(slot.count for slot in slots_of[header])

    data, header, file_floats, name = _read_source(source, needed, strict and upto is None)
    slots = slots_of[header] if header in slots_of else list(iter_slots(model, header, upto))
    total = sum(slot.count for slot in slots)
    if file_floats > total and upto is None:
        _left_over(name, file_floats, total, strict)
    body = np.frombuffer(data, dtype="<f4", offset=header.size, count=min(file_floats, total))
    staged: list[tuple[Tensor, Tensor]] = []
    offset = 0
    for slot in slots:
        end = offset + slot.count
        if end > body.size:
            spec = slot.spec
            raise WeightsError(
                f"{name}: file ends inside layer {spec.index} [{spec.section.raw_type}] ({spec.where}): its "
                f"'{slot.role}' block needs {slot.count} floats, {max(0, body.size - offset)} are left; "
                f"{end - body.size} floats missing (file has {body.size} floats after the header, "
                f"{total - body.size} floats short of the {total} the network needs). "
                "Is this the right cfg for these weights? For a partial file (e.g. *.conv.NN) pass "
                "upto=<number of layers it holds> (load_weights; darkcfg train takes such files as they are).")
        staged.append((slot.tensor, _block_to_tensor(body[offset:end], slot)))
        offset = end
    _check_values(body[:offset], slots, name, strict)
    with torch.no_grad():
        for tensor, values in staged:
            tensor.copy_(values)
    model.header = bytes(data[:header.size])
    return header


def _left_over(name: str, file_floats: int, total: int, strict: bool) -> None:
    message = (f"{name}: {file_floats - total} floats are left over after the last layer "
               f"(the network needs {total}); is this the right cfg for these weights?")
    if strict:
        raise WeightsError(message + " Pass strict=False to load anyway.")
    warnings.warn(message, stacklevel=4)


def _load_fresh_file(model: "Darknet", name: str, upto: Optional[int], strict: bool) -> Optional[Header]:
    """A model just built for this file (``fresh``): each block read straight into its tensor.

    Why: the general path reads the file into one buffer, checks it, then copies every block
    into the model (so a failure leaves an existing model untouched); for a model nobody holds
    yet the copy is pure cost -- most of a big ``load`` (yolov4: 0.26 s of copying for 246 MiB).
    A fresh model that fails here is discarded by the caller, so nothing is lost.  The tensors
    are torch's own allocations (64-byte aligned), so outputs are bit-identical to the other path.
    The blocks are read in as many runs as torch has threads, at once (``pread`` on one
    descriptor; the first run on this thread): filling fresh memory is mostly page faults, which
    then run on every core (yolov4's 246 MiB with the value check: 66 -> 49 ms on 2 cores).
    Returns None, having read nothing into the model, where the general path must do it (a file
    shorter than the network, whose error names the layer; big-endian hosts).
    """
    if sys.byteorder != "little":
        return None
    f, size, head, header = _open_weights(name)
    with f:
        slots = list(iter_slots(model, header, upto))
        total, file_floats = sum(slot.count for slot in slots), (size - header.size) // 4
        if file_floats < total:
            return None
        if file_floats > total and upto is None:
            _left_over(name, file_floats, total, strict)
        blocks = [_fresh_block(slot) for slot in slots]
        offsets = np.cumsum([header.size] + [b.nbytes for b in blocks]).tolist()
        jobs: list[_Job] = list(zip(slots, blocks, offsets))
        parts = _split_by_bytes(jobs, read_threads(torch.get_num_threads()))
        if len(parts) > 1:
            finite = all(at_once([functools.partial(_read_part, f.fileno(), part, name, 1) for part in parts]))
        else:
            f.seek(header.size)
            finite = _read_part(f, jobs, name, 0)
    _check_values(blocks, slots, name, strict, finite)
    model.header = bytes(head[:header.size])
    return header


def _fresh_block(slot: Slot) -> np.ndarray:
    """Where ``slot``'s floats are read to: the tensor's own memory when it is a contiguous CPU
    float32 tensor in file order, else a buffer :func:`_read_part` copies into the tensor."""
    t = slot.tensor
    if slot.file_shape is None and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return t.detach().numpy().reshape(-1)
    return np.empty(slot.count, dtype="<f4")


#: One block of a fresh read: its slot, the array its floats are read into, its byte offset in the file.
_Job = tuple[Slot, np.ndarray, int]


def _split_by_bytes(jobs: list[_Job], parts: int) -> list[list[_Job]]:
    """``jobs`` (slot, block, offset) cut into at most ``parts`` runs of about equal bytes, in order."""
    total = sum(block.nbytes for _, block, _ in jobs)
    if parts <= 1 or total < PARALLEL_READ_BYTES:  # (a small file: a thread costs more than it saves)
        return [jobs]
    runs: list[list[_Job]] = [[]]
    done = 0
    for job in jobs:
        if done >= total * len(runs) / parts and len(runs) < parts:
            runs.append([])
        runs[-1].append(job)
        done += job[1].nbytes
    return [run for run in runs if run]


def _read_part(f: "BinaryIO | int", jobs: list[_Job], name: str, threads: int) -> bool:
    """Read each job's block (from the file's position when ``f`` is a file, at its offset with
    ``pread`` when a descriptor: see :func:`_load_fresh_file`), checking it for NaN/Inf while the
    read has left it in cache (a pass after the whole read fetched it from memory again: 10-20 ms
    of a yolov4 load).  Returns whether every value was finite."""
    finite = True
    with torch.no_grad():
        for slot, block, offset in jobs:
            view = memoryview(block).cast("B")
            if isinstance(f, int):
                pread_into(f, view, offset, name, WeightsError)
            else:
                read_into(f, view, name, WeightsError)
            finite = _finite(block, threads) and finite
            if block.ctypes.data != slot.tensor.data_ptr():
                slot.tensor.copy_(_block_to_tensor(block, slot))
    return finite


def save_weights(model: "Darknet", path: "str | os.PathLike | io.BufferedIOBase", upto: Optional[int] = None) -> None:
    """Write the model's floats in Darknet's layout, atomically.

    The header of the last loaded file is written back (so load -> save is byte-identical)
    with ``model.seen`` as its image count; a model that never loaded weights gets version
    0.2.5.  ``upto=N`` writes the first N layers with seen 0, as Darknet's ``partial`` does.
    A file that is replaced keeps its permissions; a new one gets the umask's.
    """
    if model.fused:
        raise WeightsError("cannot save a fused model: its batch-norm blocks were folded into the convs; "
                           "save before calling fuse()")
    upto = _check_upto(upto, len(model.layers))
    header_bytes = model.header or DEFAULT_HEADER.pack()
    header = parse_header(header_bytes, "<model header>")
    seen = int(getattr(model, "seen", header.seen))
    if upto is not None:
        seen = 0  # a partial (*.conv.N) file starts a new training, as Darknet's `partial` writes it
    if seen != header.seen:  # training moved it on: write it back as Darknet's save_weights does
        wide = header.seen_is_64bit
        if not wide and seen >= 2 ** 32:
            header = Header(0, 2, 5, seen)  # a 32-bit counter cannot hold it: current format
        else:
            header = Header(header.major, header.minor, header.revision, seen)
        header_bytes = header.pack()
    chunks = [header_bytes] + [_tensor_to_block(slot).tobytes() for slot in iter_slots(model, header, upto)]
    if isinstance(path, io.IOBase):
        for chunk in chunks:
            path.write(chunk)
        return

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    atomic_write(path, write)


#: Value ranges of :func:`synthetic_weights`, per block role (weights: see there).
_SYNTHETIC_RANGES = {"biases": (-0.1, 0.1), "scales": (0.5, 1.5), "rolling_mean": (-0.1, 0.1),
                     "rolling_variance": (0.5, 1.5), "shortcut_weights": (0.25, 0.75),
                     "implicit_weights": (0.5, 1.5)}


def synthetic_weights(graph: "Graph", seed: int = 0, header: Header = DEFAULT_HEADER) -> bytes:
    """A complete, well-scaled ``.weights`` file for ``graph`` (for benchmarks and tests).

    An uninitialised Darknet network has batch-norm variances of 0 (a gain of ~316 per
    layer), so its activations overflow within a few layers and timing it measures inf/NaN
    arithmetic.  These weights keep activations O(1) instead: kernel weights uniform in
    +-sqrt(3/fan_in) (fan_in = block size / output count), BN variances and scales in
    [0.5, 1.5], biases and means in +-0.1.
    """
    rng = np.random.default_rng(seed)
    parts = [header.pack()]
    for spec in graph.layers:
        if spec.dontload:
            continue
        outputs: dict[str, int] = {}
        for block in spec.blocks:
            if block.optional_bn and spec.dontloadscales:
                continue
            prefix, _, role = block.role.rpartition(".")
            if role == "weights":
                fan_in = max(1, block.count // max(1, outputs.get(prefix, block.count)))
                bound = float(np.sqrt(3.0 / fan_in))
                lo, hi = -bound, bound
            else:
                lo, hi = _SYNTHETIC_RANGES.get(role, (-0.1, 0.1))
            if role == "biases":
                outputs[prefix] = block.count
            parts.append(rng.uniform(lo, hi, block.count).astype("<f4").tobytes())
    return b"".join(parts)
