"""Memory limits a cfg must respect before anything is allocated.

A cfg is untrusted text: ``filters=2000000000``, six ``[upsample] stride=16`` or
``padding=1000000`` describe networks of hundreds of gigabytes (or terabytes), and
``[yolo] num=1000000000`` a billion anchors.  The graph pass knows every shape, so it
adds up what the network will need and raises a :class:`~darkcfg.errors.CfgError`
naming the layer that crosses a limit, before a tensor (or a big Python list) exists.

Defaults are far above every published Darknet model (the largest cfg of the Darknet
corpus, at its own size, needs 1.0 GiB of parameters and 5.7 GiB of batch-1 float32
activations) and well below what would take a machine down.  Override them with
environment variables (bytes; suffixes K, M, G, T accepted, e.g. ``64G``) or by passing
:class:`Limits` to :func:`darkcfg.graph.build_graph`:

* ``DARKCFG_MAX_PARAM_BYTES`` (default 8 GiB): all learned float32 blocks together;
* ``DARKCFG_MAX_ACTIVATION_BYTES`` (default 32 GiB): the input plus every layer's
  output for one image in float32 (darkcfg, like Darknet, keeps every layer's output);
* ``DARKCFG_MAX_ANCHORS`` (default 65536): anchors of one ``[yolo]``/``[region]`` head;
* ``DARKCFG_MAX_CFG_BYTES`` (default 64 MiB): the size of a cfg file (the largest
  published one is under 100 KiB).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import CfgError

GiB = 1 << 30
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def _env_size(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise CfgError(f"${name}={text!r} is not a size in bytes (e.g. 8000000000 or 8G)")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked by the graph pass (see the module docstring)."""

    param_bytes: int = 8 * GiB
    activation_bytes: int = 32 * GiB
    anchors: int = 65536
    cfg_bytes: int = 64 << 20

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, overridden by ``DARKCFG_MAX_*`` environment variables."""
        d = cls()
        return cls(param_bytes=_env_size("DARKCFG_MAX_PARAM_BYTES", d.param_bytes),
                   activation_bytes=_env_size("DARKCFG_MAX_ACTIVATION_BYTES", d.activation_bytes),
                   anchors=_env_size("DARKCFG_MAX_ANCHORS", d.anchors),
                   cfg_bytes=_env_size("DARKCFG_MAX_CFG_BYTES", d.cfg_bytes))


def human_bytes(n: int) -> str:
    """``1.5 GiB``-style size for error messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
