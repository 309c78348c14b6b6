"""argparse value types with range checks, so a bad value is a one-line usage error up front
(``--thresh nan``, ``--batch 0``) instead of a traceback, or silently nothing, later."""

from __future__ import annotations

import argparse
import math


def unit_float(text: str) -> float:
    """A number in [0, 1] (thresholds, NMS IoU); NaN and infinities are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number between 0 and 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (batch sizes, counts, threads, sizes)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def nonneg_int(text: str) -> int:
    """A whole number >= 0 (warm-up iterations, "0 = library default")."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value
