"""Checkpoints named as Darknet names them, written atomically, with ``seen`` in the header.

``backup/<cfg>_last.weights`` (every ``savelast`` iterations, 100 by default),
``<cfg>_<iteration>.weights`` (every ``saveweights``: 1000 while max_batches < 10000,
else 10000, as ``train_detector``), ``<cfg>_best.weights`` (highest mAP with ``--map``)
and ``<cfg>_final.weights``.  Darknet stores ``seen = iteration * batch`` so a resumed
run restarts at the same iteration and learning rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DarkcfgError
from ..weights import DEFAULT_HEADER, Header, parse_header


def header_with_seen(model, seen: int) -> bytes:
    """The model's header (version kept) carrying ``seen``; widened to 64 bits if needed."""
    old = parse_header(model.header, "<model header>") if getattr(model, "header", None) else DEFAULT_HEADER
    hdr = Header(old.major, old.minor, old.revision, seen)
    if not hdr.seen_is_64bit and seen >= 2**32:
        hdr = Header(DEFAULT_HEADER.major, DEFAULT_HEADER.minor, DEFAULT_HEADER.revision, seen)
    return hdr.pack()


class Checkpoints:
    """Where and when to save; see the module docstring."""

    def __init__(self, backup: Path, base: str, max_batches: int, save_every: Optional[int] = None,
                 save_last_every: int = 100):
        self.backup = Path(backup)
        self.base = base
        self.save_every = save_every or (1000 if max_batches < 10000 else 10000)
        self.save_last_every = save_last_every

    def path(self, tag: "str | int") -> Path:
        return self.backup / f"{self.base}_{tag}.weights"

    def check_fresh_start(self, overwrite: bool) -> None:
        """Refuse to overwrite an earlier run's checkpoints when starting from iteration 0."""
        if overwrite:
            return
        existing = [p for p in (self.path("last"), self.path("final"), self.path("best")) if p.exists()]
        if existing:
            raise DarkcfgError(
                f"{existing[0]} exists from an earlier run; resume from it (pass it as WEIGHTS), choose "
                "another --out directory, or pass --overwrite to replace it")

    def prepare(self) -> None:
        try:
            self.backup.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DarkcfgError(f"{self.backup}: cannot create the backup directory: {exc.strerror or exc}") from exc

    def save(self, model, tag: "str | int", seen: int) -> Path:
        """Write ``<base>_<tag>.weights`` atomically (``save_weights`` writes then renames)."""
        model.header = header_with_seen(model, seen)
        if hasattr(model, "seen"):
            model.seen = seen
        path = self.path(tag)
        model.save_weights(path)
        return path

    def due(self, iteration: int, last_saved: int) -> bool:
        return iteration >= last_saved + self.save_every or iteration % self.save_every == 0

    def last_due(self, iteration: int, last_saved: int) -> bool:
        return self.save_every > self.save_last_every and (
            iteration >= last_saved + self.save_last_every or (iteration % self.save_last_every == 0 and iteration > 1))
