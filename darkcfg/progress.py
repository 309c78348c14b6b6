"""A minimal progress bar on stderr for long work (``run`` over many images, videos).

It draws only on a terminal, so piped/JSON output stays clean; the count is kept either way
so callers can report totals.
"""

from __future__ import annotations

import sys
import time
from typing import Optional


class Progress:
    """``label [#####-----] n/total r/s`` redrawn in place; plain ``n r/s`` when the total is unknown."""

    def __init__(self, total: Optional[int], label: str, enabled: Optional[bool] = None):
        self.total, self.label, self.count = total, label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            filled = int(30 * min(self.count, self.total) / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {self.count}/{self.total} {rate:.1f}/s")
        else:
            sys.stderr.write(f"\r{self.label} {self.count} {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.count:
            sys.stderr.write("\n")
            sys.stderr.flush()
