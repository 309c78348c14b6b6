"""Small helpers shared by the spec rules."""

from __future__ import annotations

from ..graph import Context, WeightBlock
from ..activation_names import ACTIVATION_NAMES


def cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as Darknet's shape formulas use."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def bn_trio(n: int) -> tuple[WeightBlock, ...]:
    return (WeightBlock("scales", n, True), WeightBlock("rolling_mean", n, True),
            WeightBlock("rolling_variance", n, True))


def activation_of(ctx: Context, default: str) -> str:
    """The layer's ``activation``; an unknown name is an error (Darknet silently uses relu)."""
    name = ctx.section.get_str("activation", default)
    assert name is not None
    if name not in ACTIVATION_NAMES:
        raise ctx.error(f"unknown activation '{name}' (Darknet would silently use relu)", "activation")
    return name


def positive_groups(ctx: Context) -> int:
    """``groups`` (default 1), refused when 0 or negative (Darknet silently uses 1 instead)."""
    groups = ctx.section.get_int("groups", 1)
    if groups < 1:
        raise ctx.error(f"'groups' must be at least 1, got {groups} (Darknet silently uses 1)", "groups")
    return groups


def layer_list(ctx: Context, key: str) -> tuple[int, ...]:
    """Resolve a list of layer references (``layers=-1,36``) to absolute indices."""
    values = ctx.section.get_ints(key)
    return tuple(ctx.resolve(key, v) for v in values)
