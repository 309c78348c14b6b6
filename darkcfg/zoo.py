"""Where darkcfg looks for weights it was not given explicitly.

The *weights store* is a list of folders searched for ``<cfg stem>.weights``:
``$DARKCFG_WEIGHTS`` (``os.pathsep``-separated) first, then ``./weights`` in the
current directory, then the ``weights/`` folder of a source checkout.  Binaries
never go into git (``weights/`` is ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def store_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("DARKCFG_WEIGHTS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "weights", REPO_WEIGHTS]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique
