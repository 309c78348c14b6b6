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
