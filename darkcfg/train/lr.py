"""Darknet's learning-rate schedule (``get_current_rate`` in network.c), as a pure function.

``batch_num`` is Darknet's ``get_current_batch``: ``seen / (batch * subdivisions)``,
evaluated in ``update_network`` *after* the iteration's images were counted, so the
first update of a fresh run uses ``batch_num = 1`` (see :func:`rate_for_update`).
"""

from __future__ import annotations

import math
import random as _random
from typing import Optional

from .settings import TrainSettings


def learning_rate(s: TrainSettings, batch_num: int, rng: Optional[_random.Random] = None) -> float:
    """The rate Darknet uses at ``batch_num`` (burn-in first, then the policy)."""
    base = s.learning_rate
    if batch_num < s.burn_in:
        return base * (batch_num / s.burn_in) ** s.power
    policy = s.policy
    if policy == "constant":
        return base
    if policy == "step":
        return base * s.scale ** (batch_num // s.step)
    if policy == "steps":
        rate = base
        for step, scale in zip(s.steps, s.scales):
            if step > batch_num:
                return rate
            rate *= scale
        return rate
    if policy == "exp":
        return base * s.gamma ** batch_num
    if policy == "poly":
        return base * (1.0 - batch_num / s.max_batches) ** s.power if s.max_batches else base
    if policy == "random":
        u = (rng or _random).random()
        return base * u ** s.power
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(s.gamma * (batch_num - s.step))))
    if policy == "sgdr":
        start, cycle = 0, s.sgdr_cycle
        while start + cycle < batch_num:
            start += cycle
            cycle *= s.sgdr_mult
        return s.learning_rate_min + 0.5 * (base - s.learning_rate_min) * (
            1.0 + math.cos((batch_num - start) * 3.14159265 / cycle))
    raise ValueError(f"unknown learning-rate policy {policy!r}")


def rate_for_update(s: TrainSettings, iteration: int, rng: Optional[_random.Random] = None) -> float:
    """The rate of the update that ENDS iteration ``iteration`` (1-based, as Darknet counts it)."""
    return learning_rate(s, iteration, rng)
