"""Training settings read from a cfg the way Darknet's ``parse_net_options`` reads them.

Inference ignores most of ``[net]`` (batch, learning rate, augmentation); training needs
all of it, plus the augmentation keys Darknet takes from the *last* detection layer
(``jitter``, ``resize``, ``random``, ``max_boxes``).  Keeping them in one dataclass means
the loop, the lr schedule and the data loader agree on every value, and a bad value is a
:class:`~darkcfg.errors.CfgError` naming the cfg line before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ..cfg import Cfg, Section

#: Learning-rate policies Darknet's ``get_policy`` knows (anything else is "constant" there;
#: here it is an error, since a typo silently training at a constant rate wastes a run).
POLICIES = ("constant", "step", "steps", "exp", "poly", "random", "sigmoid", "sgdr")
HEAD_TYPES = ("yolo", "gaussian_yolo", "region", "detection")


@dataclass
class TrainSettings:
    """Darknet's training knobs (names as in the cfg; ``batch`` is the FULL batch)."""

    batch: int = 1
    subdivisions: int = 1
    max_batches: int = 0
    learning_rate: float = 0.001
    learning_rate_min: float = 0.00001
    momentum: float = 0.9
    decay: float = 0.0001
    policy: str = "constant"
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    steps: List[int] = field(default_factory=list)
    scales: List[float] = field(default_factory=list)
    sgdr_cycle: int = 0
    sgdr_mult: int = 2
    # augmentation ([net])
    flip: int = 1
    blur: int = 0
    mosaic: int = 0
    mosaic_bound: int = 0
    letter_box: int = 0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    resize_step: int = 32
    # augmentation (last detection layer)
    jitter: float = 0.2
    resize: float = 1.0
    random: float = 0.0
    max_boxes: int = 200
    classes: int = 0

    @property
    def mini_batch(self) -> int:
        """Images per forward/backward (Darknet's ``net.batch`` after ``/= subdivisions``)."""
        return self.batch // self.subdivisions


def _steps_lists(net: Section, policy: str) -> tuple[list[int], list[float]]:
    """``steps``/``scales`` as Darknet pairs them (scale 1.0 where ``scales`` runs short)."""
    if not net.has("steps"):
        if policy == "steps":
            raise net.error("policy=steps needs 'steps' and 'scales'")
        return [], []
    steps = net.get_ints("steps")
    if policy == "steps" and not net.has("scales"):
        raise net.error("policy=steps needs 'scales' as well as 'steps'", "steps")
    scales = net.get_floats("scales") if net.has("scales") else []
    if len(scales) > len(steps):
        raise net.error(f"{len(scales)} scales for {len(steps)} steps", "scales")
    scales = scales + [1.0] * (len(steps) - len(scales))
    return steps, scales


def read_train_settings(cfg: Cfg) -> TrainSettings:
    """All training settings of ``cfg`` (with Darknet's defaults and a few sanity checks)."""
    net = cfg.net
    s = TrainSettings()
    s.batch = net.get_int("batch", 1)
    s.subdivisions = net.get_int("subdivisions", 1)
    if s.batch < 1 or s.subdivisions < 1:
        raise net.error(f"batch={s.batch} and subdivisions={s.subdivisions} must both be >= 1")
    if s.batch % s.subdivisions:
        raise net.error(f"batch={s.batch} is not a multiple of subdivisions={s.subdivisions} "
                        "(Darknet would silently drop the remainder)", "subdivisions")
    s.max_batches = net.get_int("max_batches", 0)
    s.learning_rate = net.get_float("learning_rate", 0.001)
    s.learning_rate_min = net.get_float("learning_rate_min", 0.00001)
    s.momentum = net.get_float("momentum", 0.9)
    s.decay = net.get_float("decay", 0.0001)
    s.policy = (net.get_str("policy", "constant") or "constant").split("#", 1)[0].strip()
    if s.policy not in POLICIES:
        raise net.error(f"unknown learning-rate policy '{s.policy}' (one of {', '.join(POLICIES)})", "policy")
    s.burn_in = net.get_int("burn_in", 0)
    s.power = net.get_float("power", 4.0)
    s.sgdr_cycle = net.get_int("sgdr_cycle", s.max_batches)
    s.sgdr_mult = net.get_int("sgdr_mult", 2)
    if s.policy == "step":
        s.step = net.get_int("step", 1)
        s.scale = net.get_float("scale", 1.0)
    elif s.policy in ("steps", "sgdr"):
        s.steps, s.scales = _steps_lists(net, s.policy)
    elif s.policy == "exp":
        s.gamma = net.get_float("gamma", 1.0)
    elif s.policy == "sigmoid":
        s.gamma = net.get_float("gamma", 1.0)
        s.step = net.get_int("step", 1)
    if s.policy == "step" and s.step < 1:
        raise net.error("step must be >= 1", "step")
    if s.policy == "sgdr" and s.sgdr_cycle < 1:
        raise net.error("policy=sgdr needs max_batches or sgdr_cycle >= 1", "sgdr_cycle")
    if net.get_int("adam", 0):
        raise net.error("adam=1 is not supported by darkcfg train (Darknet's SGD only)", "adam")
    s.flip = net.get_int("flip", 1)
    s.blur = net.get_int("blur", 0)
    s.mosaic = net.get_int("mosaic", 0)
    s.mosaic_bound = net.get_int("mosaic_bound", 0)
    s.letter_box = net.get_int("letter_box", 0)
    if s.mosaic and s.letter_box:
        raise net.error("letter_box=1 and mosaic=1 together are not supported (Darknet refuses them too)")
    s.hue = net.get_float("hue", 0.0)
    s.saturation = net.get_float("saturation", 1.0)
    s.exposure = net.get_float("exposure", 1.0)
    s.resize_step = int(net.get_float("resize_step", 32))
    heads = [sec for sec in cfg.layers if sec.type in HEAD_TYPES]
    if heads:
        head = heads[-1]  # train_detector takes these from the last detection layer
        s.jitter = head.get_float("jitter", 0.2)
        s.resize = head.get_float("resize", 1.0)
        s.random = head.get_float("random", 0.0)
        s.max_boxes = head.get_int("max", 200)
        s.classes = head.get_int("classes", 1 if head.type == "detection" else 20)
    return s
