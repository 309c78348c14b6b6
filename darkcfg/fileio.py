"""Reading untrusted files and writing users' files safely.

Reading: a path may name a FIFO (``open`` + ``read`` would block forever), a device,
a directory, or a sparse file of many gigabytes.  :func:`open_regular` opens without
blocking, refuses anything but a regular file and reports its size, so callers check
the size *before* reading.

Writing: :func:`atomic_write` writes a temporary file beside the target and renames it
over the target, so a crash or a full disk never leaves a half-written file.  The new
file gets the permissions a plain ``open(path, "w")`` would give: the old file's mode
when it replaces one (a 0600 file stays 0600), else ``0666`` minus the umask
(``tempfile.mkstemp`` would make every file 0600).
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable, List, Sequence, Type, TypeVar

from .errors import DarkcfgError
from .limits import human_bytes

_O_BINARY = getattr(os, "O_BINARY", 0)
T = TypeVar("T")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: "str | os.PathLike", what: str, error: Type[DarkcfgError]) -> tuple[BinaryIO, int]:
    """Open ``path`` for binary reading, refusing anything that is not a regular file.

    Returns the open file and its size.  ``O_NONBLOCK`` makes opening a FIFO return at
    once (a blocking open waits for a writer forever); it has no effect on regular files.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _O_BINARY)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise error(f"{path}: cannot read {what}: it is {kind}, not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_into(f: BinaryIO, view: memoryview, name: str, error: Type[DarkcfgError]) -> None:
    """Fill ``view`` from ``f`` (no intermediate copies); a short read is an error."""
    done, count = 0, len(view)
    try:
        while done < count:
            n = f.readinto(view[done:])  # type: ignore[attr-defined]
            if not n:
                raise error(f"{name}: file shrank while being read ({done} of {count} bytes)")
            done += n
    except OSError as exc:
        raise error(f"{name}: read error: {exc.strerror or exc}") from exc


def pread_into(fd: int, view: memoryview, offset: int, name: str, error: Type[DarkcfgError]) -> None:
    """Fill ``view`` from byte ``offset`` of the open file ``fd`` (``os.preadv``: no shared file
    position, so several threads can fill different parts of one file at once)."""
    done, count = 0, len(view)
    try:
        while done < count:
            n = os.preadv(fd, [view[done:]], offset + done)
            if not n:
                raise error(f"{name}: file shrank while being read ({done} of {count} bytes at offset {offset})")
            done += n
    except OSError as exc:
        raise error(f"{name}: read error: {exc.strerror or exc}") from exc


#: Below this many bytes a file is read by one thread (a thread costs more than it saves).
PARALLEL_READ_BYTES = 8 * 2 ** 20
#: At most this many concurrent reads of one file, whatever torch's thread count.
MAX_READ_THREADS = 8


def read_threads(threads: int) -> int:
    """How many concurrent reads of one file to make for ``threads`` wanted: at most
    :data:`MAX_READ_THREADS`, and 1 where the platform has no ``os.preadv``."""
    return max(1, min(threads, MAX_READ_THREADS)) if hasattr(os, "preadv") else 1


def at_once(calls: Sequence[Callable[[], T]]) -> List[T]:
    """Each call's result, in order, the calls run at once: the first on this thread, the others
    on a pool's (file reads and native passes release the GIL).  Any call's error is raised."""
    if len(calls) <= 1:
        return [call() for call in calls]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls) - 1) as pool:
        others = [pool.submit(call) for call in calls[1:]]
        first = calls[0]()
        return [first] + [other.result() for other in others]


def read_at(f: BinaryIO, view: memoryview, offset: int, name: str, error: Type[DarkcfgError],
            threads: int = 1) -> None:
    """Fill ``view`` from byte ``offset`` of ``f``: in ``threads`` (at most :data:`MAX_READ_THREADS`)
    equal parts read at once (``pread``) when the view is large and the platform has
    ``os.preadv``, else by one read.

    Why: reading into fresh memory is mostly page faults, which run on every core this way
    (``model.load_weights`` of yolov4's 246 MiB: 100.6 -> 83.8 ms on 2 cores).
    """
    n, threads = len(view), read_threads(threads)
    if threads <= 1 or n < PARALLEL_READ_BYTES:
        f.seek(offset)
        read_into(f, view, name, error)
        return
    step, fd = -(-n // threads), f.fileno()
    at_once([functools.partial(pread_into, fd, view[lo:lo + step], offset + lo, name, error)
             for lo in range(0, n, step)])


def read_exactly(f: BinaryIO, count: int, name: str, error: Type[DarkcfgError]) -> bytearray:
    """``count`` bytes from ``f`` into one new buffer."""
    buf = bytearray(count)
    read_into(f, memoryview(buf), name, error)
    return buf


def read_regular_file(path: "str | os.PathLike", max_bytes: int, what: str, error: Type[DarkcfgError],
                      env: str) -> bytearray:
    """The whole of a regular file no larger than ``max_bytes`` (``env`` raises the limit)."""
    f, size = open_regular(path, what, error)
    with f:
        if size > max_bytes:
            raise error(f"{path}: the {what} is {human_bytes(size)}, over the {human_bytes(max_bytes)} limit "
                        f"(set ${env} to raise it)")
        return read_exactly(f, size, str(path), error)


def atomic_write(target: "str | os.PathLike", write: Callable[[str], None]) -> None:
    """Create ``target`` through ``write(tmp_path)`` and an atomic rename.

    ``write`` receives the path of an empty file beside ``target`` (created with the
    umask's permissions) and fills it by name, so exporters that only take a file name
    work too.  If ``target`` exists its permission bits are carried over.
    """
    target = Path(target)
    # The temporary name ends in the target's suffix: some writers (torch.export's .pt2) check it.
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp{target.suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    os.close(fd)
    try:
        write(tmp)
        try:
            old_mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            old_mode = None
        if old_mode is not None:
            os.chmod(tmp, old_mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(target: "str | os.PathLike", data: bytes) -> None:
    """:func:`atomic_write` for content already in memory (results files, labels, records)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(target, write)


def atomic_write_text(target: "str | os.PathLike", text: str) -> None:
    """UTF-8 text with ``\n`` line ends, through :func:`atomic_write_bytes`."""
    atomic_write_bytes(target, text.encode("utf-8"))
