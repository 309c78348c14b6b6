"""Spec rules, one small module per family of section types.

Importing this package registers every rule in :data:`darkcfg.graph.SPEC_RULES`.
"""

from . import conv, heads, merge, misc, pool  # noqa: F401
