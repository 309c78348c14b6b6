"""Finding a model's files from what the user typed: a cfg path or zoo name, and its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from .errors import DarkcfgError


def resolve_cfg(arg: str) -> Path:
    """A cfg path, or a zoo model name (fetched and verified into the zoo store)."""
    path = Path(arg)
    if path.exists() or path.suffix == ".cfg" or os.sep in arg:
        return path
    from .zoo import fetch

    return fetch(arg)["cfg"]


def weights_argument(positional: Optional[str], option: Optional[str]) -> Optional[str]:
    """The weights file the user named: after the cfg, in Darknet's order (``CFG WEIGHTS ...``),
    or with ``--weights``; both naming different files is an error (which one was meant?)."""
    if positional and option and os.path.realpath(positional) != os.path.realpath(option):
        raise DarkcfgError(f"two weights files given: {positional} (after the cfg) and --weights {option}; "
                           "give one")
    return option or positional


def weights_among_inputs(inputs: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``run CFG [WEIGHTS] INPUT...``: a first input ending in ``.weights`` is the weights file
    (Darknet's ``detector test data cfg weights image`` order), the rest are inputs.

    Why: taken as an image, that file fails to decode while the weights found beside the cfg
    -- possibly other ones than the user named -- run silently.  A ``.weights`` file anywhere
    else among the inputs is an error for the same reason.
    """
    weights = inputs[0] if inputs and _is_weights_name(inputs[0]) else None
    rest = list(inputs[1:] if weights is not None else inputs)
    stray = [arg for arg in rest if _is_weights_name(arg)]
    if stray:
        raise DarkcfgError(f"{stray[0]}: a weights file among the inputs; give it right after the cfg "
                           "(CFG WEIGHTS INPUT...) or with --weights")
    if weights is not None and not rest:
        raise DarkcfgError(f"no INPUT after the weights file {weights}: give images, folders, videos or a camera")
    return weights, rest


def _is_weights_name(arg: str) -> bool:
    return arg.lower().endswith(".weights")


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
