"""The one resolver for the Darknet fixtures folder (``shared/``).

Tests, the conformance report and benchmarks find Darknet's cfg corpus and
reference outputs through :func:`shared_dir`: ``$DARKCFG_SHARED`` if set, else
``../shared`` beside the repository.  ``None`` means "not available" and callers
skip with a clear reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Optional[Path]:
    env = os.environ.get("DARKCFG_SHARED")
    path = Path(env) if env else REPO.parent / "shared"
    return path if (path / "conformance").is_dir() else None


def conformance_cases() -> list[Path]:
    """Every case directory of ``<shared>/conformance/cases`` (sorted), or ``[]`` without fixtures."""
    from .conformance import find_cases

    root = shared_dir()
    cases = root / "conformance" / "cases" if root is not None else None
    return find_cases(cases) if cases is not None and cases.is_dir() else []
