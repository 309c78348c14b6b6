"""Darknet's data files that a cfg names: softmax trees (``tree=``) and class maps (``map=``).

Torch-free, and each file parsed once: the model builder (tree softmax), the detection
decoder (tree walk, class map) and ``info`` all ask here, and a cache keyed by the file's
path, size and modification time returns the same parsed object.  Files are located the
way Darknet's working directory would find them (:func:`find_data_file`) and read with the
same checks as cfg files (regular file, size limit).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Tuple

from .errors import CfgError
from .fileio import read_regular_file
from .limits import Limits

if TYPE_CHECKING:
    from .graph import LayerSpec


def find_data_file(name: str, cfg_path: str, spec: "LayerSpec", key: str) -> Path:
    """Locate a file a cfg names (``tree=data/9k.tree``): as given, beside the cfg, or one level up.

    Darknet opens it relative to its working directory, which is the darknet root:
    the cfg usually lives in ``<root>/cfg/``, hence the parent directory.
    """
    cfg_dir = Path(cfg_path).resolve().parent
    for candidate in (Path(name), cfg_dir / name, cfg_dir.parent / name):
        if candidate.is_file():
            return candidate
    raise CfgError(f"{spec.section.where(key)}: cannot find '{name}' (looked in the current directory, "
                   f"{cfg_dir} and {cfg_dir.parent})")


def _read_text(path: "str | os.PathLike", what: str) -> str:
    data = read_regular_file(path, Limits.from_env().cfg_bytes, what, CfgError, "DARKCFG_MAX_CFG_BYTES")
    return bytes(data).decode("utf-8", errors="replace")


def _stat_key(path: "str | os.PathLike") -> Tuple[str, int, int]:
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError as exc:
        raise CfgError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    return p, st.st_size, st.st_mtime_ns


class DarknetTree(NamedTuple):
    """A hierarchy file as Darknet's ``tree.c read_tree`` builds it.

    ``group_offset``/``group_size`` list the softmax groups (consecutive entries with the same
    parent) in file order; Darknet may start with an empty group (when the first entry's parent
    is not -1), which is kept here and is harmless.
    """

    names: List[str]
    parent: List[int]
    group: List[int]
    group_offset: List[int]
    group_size: List[int]
    leaf: List[bool]

    @property
    def n(self) -> int:
        return len(self.names)

    def groups(self) -> List[Tuple[int, int]]:
        """The ``(offset, size)`` pairs for :func:`tree_softmax`."""
        return list(zip(self.group_offset, self.group_size))


_C_INT = re.compile(r"[+-]?\d+")


def _parse_tree(path: str) -> DarknetTree:
    """Parse a Darknet tree file (e.g. ``data/9k.tree``) like ``tree.c read_tree``.

    Each line is ``name parent`` (``sscanf("%s %d")``; a missing/unparsable parent is -1).
    A new group starts whenever the parent differs from the previous line's (the previous
    parent starts at -1).  Group ``g`` covers entries ``[offset, offset+size)``.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.tree")
    >>> _ = open(p, "w").write("a -1\\nb -1\\nc 0\\nd 0\\ne 1\\n")
    >>> _parse_tree(p).groups()
    [(0, 2), (2, 2), (4, 1)]
    """
    data = _read_text(path, "tree file")
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names: List[str] = []
    parents: List[int] = []
    group: List[int] = []
    offsets: List[int] = []
    sizes: List[int] = []
    last_parent = -1
    group_size = 0
    ngroups = 0
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        toks = line.split()
        name = toks[0] if toks else ""
        parent = -1
        if len(toks) > 1:
            m = _C_INT.match(toks[1])
            if m is not None:
                parent = int(m.group(0))
        names.append(name)
        parents.append(parent)
        if parent != last_parent:
            ngroups += 1
            offsets.append(i - group_size)
            sizes.append(group_size)
            group_size = 0
            last_parent = parent
        group.append(ngroups)
        group_size += 1
    n = len(names)
    offsets.append(n - group_size)
    sizes.append(group_size)
    leaf = [True] * n
    for p in parents:
        if 0 <= p < n:
            leaf[p] = False
    return DarknetTree(names, parents, group, offsets, sizes, leaf)


@functools.lru_cache(maxsize=32)
def _tree_cached(key: Tuple[str, int, int]) -> DarknetTree:
    return _parse_tree(key[0])


def read_tree(path: "str | os.PathLike") -> DarknetTree:
    """The parsed tree file (see :func:`_parse_tree`), parsed once per file version."""
    return _tree_cached(_stat_key(path))


_ATOI = re.compile(r"\s*([+-]?\d+)")


@functools.lru_cache(maxsize=32)
def _map_cached(key: Tuple[str, int, int]) -> Tuple[int, ...]:
    lines = _read_text(key[0], "map file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    values = []
    for line in lines:
        m = _ATOI.match(line)
        values.append(int(m.group(1)) if m else 0)
    return tuple(values)


def read_class_map(path: "str | os.PathLike") -> Tuple[int, ...]:
    """A Darknet map file like ``utils.c read_map``: one C ``atoi`` per line (no number -> 0);
    a final newline adds no entry, an empty line in between gives 0."""
    return _map_cached(_stat_key(path))
