"""Finding a model's files from what the user typed: a cfg path or zoo name, and its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import DarkcfgError


def resolve_cfg(arg: str) -> Path:
    """A cfg path, or a zoo model name (fetched and verified into the zoo store)."""
    path = Path(arg)
    if path.exists() or path.suffix == ".cfg" or os.sep in arg:
        return path
    from .zoo import fetch

    return fetch(arg)["cfg"]


def find_weights(cfg: Path, explicit: Optional[str]) -> Path:
    """``--weights``; else ``<cfg stem>.weights`` beside the cfg; else the weights store."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DarkcfgError(f"{path}: weights file not found")
        return path
    from .zoo import store_dirs

    looked = [cfg.with_suffix(".weights")] + [d / (cfg.stem + ".weights") for d in store_dirs()]
    for cand in looked:
        if cand.is_file():
            return cand
    raise DarkcfgError(f"no weights for {cfg}: looked for " + ", ".join(str(p) for p in looked)
                       + " (pass --weights FILE)")
