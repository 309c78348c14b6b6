"""Darknet ``.weights`` files: load and save, symmetric by construction.

Both directions walk ONE description of the file: for each layer, the spec's
float blocks (:attr:`darkcfg.graph.LayerSpec.blocks`, in ``load_weights_upto``
order) paired with the module tensors that hold them (``weight_tensors()``).
Load copies block -> tensor, save writes tensor -> block; the only layout
transforms (transposed [connected] matrices, ``flipped`` convs) are one pair of
functions used by both.

File layout (``darknet-format.md`` §6): int32 major, minor, revision; ``seen`` as
uint64 when ``major*10 + minor >= 2`` else uint32; then float32 blocks.  The file
is read in one pass into one buffer and the blocks are views into it.

Differences from Darknet, on purpose: a file that is too short is an error naming
the layer (Darknet stops silently and leaves random weights); trailing floats are
an error under ``strict`` (Darknet ignores them); a failed load changes nothing.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .errors import WeightsError
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


def _read_all(source: "str | os.PathLike | bytes | bytearray | memoryview") -> tuple[bytearray, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytearray(source), "<weights bytes>"
    path = Path(source)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            f.readinto(buf)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file: {exc.strerror or exc}") from exc
    return buf, str(path)


def load_weights(model: "Darknet", source: "str | os.PathLike | bytes", upto: Optional[int] = None,
                 strict: bool = True) -> Header:
    """Load ``source`` into ``model``; all-or-nothing.

    ``upto=N`` loads only layers ``< N`` (Darknet's ``load_weights_upto``; the file may
    hold more).  Raises :class:`WeightsError` naming the layer when the file is short,
    and, under ``strict``, when floats are left over (a warning otherwise).
    """
    if model.fused:
        raise WeightsError("cannot load weights into a fused model: load before calling fuse()")
    data, name = _read_all(source)
    header = parse_header(data, name)
    body_bytes = len(data) - header.size
    if body_bytes % 4:
        raise WeightsError(f"{name}: the body after the {header.size}-byte header is {body_bytes} bytes, "
                           "not a whole number of float32 values")
    body = np.frombuffer(data, dtype="<f4", offset=header.size)
    staged: list[tuple[Tensor, Tensor]] = []
    offset = 0
    slots = list(iter_slots(model, header, upto))
    for slot in slots:
        end = offset + slot.count
        if end > body.size:
            spec = slot.spec
            needed = sum(s.count for s in slots)
            raise WeightsError(
                f"{name}: file ends inside layer {spec.index} [{spec.section.raw_type}] ({spec.where}): its "
                f"'{slot.role}' block needs {slot.count} floats, {max(0, body.size - offset)} are left; "
                f"{end - body.size} floats missing (file has {body.size} floats after the header, "
                f"{needed - body.size} floats short of the {needed} the network needs). "
                "For a partial file (e.g. *.conv.NN) pass upto=<number of layers it holds>.")
        staged.append((slot.tensor, _block_to_tensor(body[offset:end], slot)))
        offset = end
    if offset < body.size and upto is None:
        message = (f"{name}: {body.size - offset} floats are left over after the last layer "
                   f"(the network needs {offset}); is this the right cfg for these weights?")
        if strict:
            raise WeightsError(message + " Pass strict=False to load anyway.")
        warnings.warn(message, stacklevel=2)
    with torch.no_grad():
        for tensor, values in staged:
            tensor.copy_(values)
    model.header = bytes(data[:header.size])
    return header


def save_weights(model: "Darknet", path: "str | os.PathLike | io.BufferedIOBase", upto: Optional[int] = None) -> None:
    """Write the model's floats in Darknet's layout, atomically.

    The header of the last loaded file is written back (so load -> save is byte-identical)
    with ``model.seen`` as its image count; a model that never loaded weights gets version
    0.2.5.  ``upto=N`` writes the first N layers with seen 0, as Darknet's ``partial`` does.
    """
    if model.fused:
        raise WeightsError("cannot save a fused model: its batch-norm blocks were folded into the convs; "
                           "save before calling fuse()")
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
    target = Path(path)
    # Not tempfile.mkstemp: its 0600 mode would survive os.replace; O_EXCL + 0666 honours the umask.
    tmp = str(target.parent / f"{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
