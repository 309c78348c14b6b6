"""The exception hierarchy.

Every error darkcfg raises on bad input derives from :class:`DarkcfgError`, which is a
``ValueError`` so that callers who already guard against bad values keep working.
Messages always name *where* the problem is (file, line, section, layer) because
the user's next step is to open that file at that line.
"""

from __future__ import annotations


class DarkcfgError(ValueError):
    """Base class of every darkcfg input error."""


class CfgError(DarkcfgError):
    """A ``.cfg`` file is malformed or describes an impossible network."""


class WeightsError(DarkcfgError):
    """A ``.weights`` file does not fit the network (too short, too long, bad header)."""


class ImageError(DarkcfgError):
    """An image cannot be read or decoded."""


class ImageBatchError(ImageError):
    """Some images of a ``detect``/``classify`` call failed; the others were processed.

    ``errors`` maps the position of each failed input to its :class:`ImageError`; ``results``
    holds one entry per input, ``None`` where it failed, so no finished work is lost by raising.
    """

    def __init__(self, errors: "dict[int, ImageError]", results: list):
        self.errors = dict(errors)
        self.results = results
        msgs = [str(e) for e in self.errors.values()]
        if len(msgs) == 1:
            text = msgs[0]
        else:
            shown = "; ".join(msgs[:3]) + ("; ..." if len(msgs) > 3 else "")
            text = f"{len(msgs)} of {len(results)} images failed: {shown}"
        super().__init__(text + " (the other images' results are in .results)" if len(results) > 1 else text)
