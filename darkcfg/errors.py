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
