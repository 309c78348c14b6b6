"""The layer graph: cfg sections turned into typed layer specs with every shape known.

This is the first of two passes (the OpenCV importer's design): a bad cfg fails
here, before a single tensor is allocated, and ``darkcfg info`` needs nothing
else.  Each section type has one *spec rule* (see :mod:`darkcfg.specs`) that
reads the section's keys once, into a frozen ``attrs`` dataclass, and returns
the layer's output shape, its float blocks in ``.weights`` order, its parameter
count and Darknet's own BFLOPs figure.

Shapes follow Darknet's bookkeeping exactly (``parse_network_cfg_custom``):
layer *i* receives layer *i-1*'s ``(out_c, out_h, out_w, outputs)``; layers that
leave their image shape unset ([softmax], [cost], [detection], [contrastive])
report ``(0, 0, 0)`` and only ``outputs``.

>>> from darkcfg.cfg import parse_cfg_text
>>> g = build_graph(parse_cfg_text("[net]\\nwidth=16\\nheight=16\\nchannels=3\\n"
...                                "[convolutional]\\nfilters=4\\nsize=3\\nstride=2\\npad=1\\n"))
>>> g.layers[0].out_shape, g.layers[0].params
((4, 8, 8), 108)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .cfg import Cfg, Section, iter_unused
from .errors import CfgError
from .limits import Limits, human_bytes

Shape = tuple[int, int, int]  # (channels, height, width), as Darknet's out_c/out_h/out_w


@dataclass(frozen=True)
class WeightBlock:
    """One contiguous run of float32 values in a ``.weights`` file.

    ``role`` is Darknet's name for it (``biases``, ``scales``, ``rolling_mean``,
    ``rolling_variance``, ``weights``...), as in the conformance ``rolemap.tsv``.
    ``optional_bn`` marks the conv/connected BN trio that ``dontloadscales`` removes
    from the stream.
    """

    role: str
    count: int
    optional_bn: bool = False


@dataclass(frozen=True)
class RuleResult:
    """What a spec rule returns for one section."""

    attrs: Any
    out_shape: Shape
    outputs: int | None = None  # flat size when it differs from prod(out_shape)
    inputs: tuple[int, ...] = ()  # absolute indices read besides the previous layer
    reads_prev: bool = True
    blocks: tuple[WeightBlock, ...] = ()
    params: int = 0
    bflops: float = 0.0
    # Shape the *next* layer receives, when it differs from out_shape (antialiasing).
    next_shape: Shape | None = None


@dataclass(frozen=True)
class LayerSpec:
    """Everything known about one Darknet layer before any tensor exists."""

    index: int
    kind: str
    section: Section = field(repr=False, compare=False)
    attrs: Any
    in_shape: Shape
    in_outputs: int
    out_shape: Shape
    outputs: int
    inputs: tuple[int, ...]  # absolute indices of layers whose output this layer reads (-1: network input)
    blocks: tuple[WeightBlock, ...]
    params: int
    bflops: float
    next_shape: Shape
    dontload: bool = False
    dontloadscales: bool = False

    @property
    def weight_floats(self) -> int:
        return sum(b.count for b in self.blocks)

    @property
    def is_flat(self) -> bool:
        """True for layers whose output is a flat vector (Darknet leaves out_c/h/w at 0)."""
        c, h, w = self.out_shape
        return c * h * w != self.outputs

    @property
    def tensor_shape(self) -> Shape:
        """Shape of one image's output tensor in darkcfg: flat layers are (outputs, 1, 1).

        An antialiased conv/maxpool outputs its blur's (strided) shape, ``next_shape``;
        ``out_shape`` keeps Darknet's reported (unstrided) one.
        """
        return (self.outputs, 1, 1) if self.is_flat else self.next_shape

    @property
    def where(self) -> str:
        return self.section.where()


@dataclass(frozen=True)
class NetSpec:
    """The inference-relevant keys of ``[net]``."""

    width: int
    height: int
    channels: int
    inputs: int
    letter_box: bool


@dataclass
class Graph:
    """The whole network: ``[net]`` settings and one spec per layer."""

    cfg: Cfg
    net: NetSpec
    layers: list[LayerSpec]
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.cfg.path

    @property
    def output_indices(self) -> list[int]:
        """Layers whose output a user wants: detection heads, or the last non-cost layer.

        Mirrors Darknet's notion of network output (``get_network_output`` skips
        trailing [cost] layers); detection networks output every head layer.
        """
        heads = [s.index for s in self.layers if s.kind in HEAD_KINDS]
        if heads:
            return heads
        i = len(self.layers) - 1
        while i > 0 and self.layers[i].kind in ("cost", "contrastive"):
            i -= 1
        return [i]

    @property
    def params(self) -> int:
        return sum(s.params for s in self.layers)

    @property
    def weight_floats(self) -> int:
        return sum(s.weight_floats for s in self.layers)

    @property
    def bflops(self) -> float:
        return sum(s.bflops for s in self.layers if s.bflops > 0)

    def unused_options(self) -> list[str]:
        """Darknet's "Unused field" list, each entry naming file, line and section."""
        return [f"{sec.file}:{opt.line}: [{sec.raw_type}] (layer {sec.index}): unused field "
                f"'{opt.key}={opt.value}'" for sec, opt in iter_unused(self.cfg)]


HEAD_KINDS = ("yolo", "Gaussian_yolo", "region", "detection")


class Context:
    """What a spec rule may look at: the section, the layers before it, the net."""

    def __init__(self, section: Section, net: NetSpec, previous: list[LayerSpec], warnings: list[str],
                 limits: Limits | None = None):
        self.section = section
        self.limits = limits or Limits()
        self.warnings = warnings
        self.net = net
        self.previous = previous
        self.index = section.index
        if previous:
            last = previous[-1]
            self.in_shape: Shape = last.next_shape
            self.in_outputs: int = last.outputs
        else:
            self.in_shape = (net.channels, net.height, net.width)
            self.in_outputs = net.inputs

    def error(self, message: str, key: str | None = None) -> CfgError:
        return self.section.error(message, key)

    def warn(self, message: str, key: str | None = None) -> None:
        """Record something Darknet tolerates but the user should fix (see :attr:`Graph.warnings`)."""
        self.warnings.append(str(self.section.error(message, key)))

    def resolve(self, key: str, value: int) -> int:
        """Darknet's layer reference: negative = relative to this layer, else absolute."""
        target = self.index + value if value < 0 else value
        if target < 0 or target >= self.index:
            direction = "forward (or to itself)" if target >= self.index else "before the first layer"
            raise self.error(f"'{key}' value {value} refers to layer {target}, which is {direction}; "
                             f"layer {self.index} can only read layers 0..{self.index - 1}", key)
        return target

    def layer(self, index: int) -> LayerSpec:
        return self.previous[index]

    def require_image(self) -> Shape:
        """The input shape, refusing flat inputs (a conv after a [softmax], say)."""
        c, h, w = self.in_shape
        if c <= 0 or h <= 0 or w <= 0:
            raise self.error(f"needs an image input (C x H x W) but the previous layer's output is "
                             f"{c}x{h}x{w} (flat, {self.in_outputs} values)")
        return self.in_shape

    def positive(self, key: str, value: int) -> int:
        if value <= 0:
            raise self.error(f"'{key}' must be positive, got {value}", key)
        return value

    def check_anchors(self, count: int, key: str) -> int:
        """Refuse an anchor count that would build a huge list (``num=1000000000``)."""
        if count > self.limits.anchors:
            raise self.error(f"{count} anchors is over the limit of {self.limits.anchors} per head "
                             "(set $DARKCFG_MAX_ANCHORS to raise it)", key)
        return count

    def check_kernel(self, span: int, padding: int) -> None:
        """Refuse a kernel wider than the padded input.

        Darknet's shape formula truncates toward zero, so a large stride can still report a
        1x1 output; its im2col then reads zeros beyond the image, a case darkcfg refuses.
        """
        _, h, w = self.in_shape
        if min(h, w) + 2 * padding < span:
            raise self.error(f"the input is too small: the {span}x{span} kernel is larger than the {h}x{w} input "
                             f"with padding {padding} (network size {self.net.width}x{self.net.height})")

    def check_transient(self, shape: Shape, what: str) -> None:
        """Refuse a temporary tensor (a padded input) over the activation limit."""
        nbytes = 4 * shape[0] * shape[1] * shape[2]
        if nbytes > self.limits.activation_bytes:
            raise self.error(f"the {what} ({'x'.join(map(str, shape))}) would need {human_bytes(nbytes)}, over the "
                             f"{human_bytes(self.limits.activation_bytes)} limit "
                             "(set $DARKCFG_MAX_ACTIVATION_BYTES to raise it)")

    def check_shape(self, shape: Shape, what: str = "output") -> Shape:
        if any(v <= 0 for v in shape):
            c, h, w = shape
            raise self.error(f"{what} shape would be {c}x{h}x{w} for input "
                             f"{'x'.join(map(str, self.in_shape))}: the input is too small "
                             f"(network size {self.net.width}x{self.net.height})")
        return shape


SpecRule = Callable[[Context], RuleResult]
SPEC_RULES: dict[str, SpecRule] = {}


def spec_rule(*kinds: str) -> Callable[[SpecRule], SpecRule]:
    """Register the spec rule of one or more canonical section types."""

    def deco(fn: SpecRule) -> SpecRule:
        for kind in kinds:
            if kind in SPEC_RULES:
                raise RuntimeError(f"duplicate spec rule for [{kind}]")
            SPEC_RULES[kind] = fn
        return fn

    return deco


# Keys read for every layer type (parse_network_cfg_custom); only the first two matter at inference.
_COMMON_KEYS = ("dontload", "dontloadscales", "stopbackward", "onlyforward", "dont_update",
                "burnin_update", "train_only_bn", "clip", "learning_rate", "stream", "wait_stream")


def parse_net(net: Section, size: tuple[int, int] | None = None) -> NetSpec:
    """Read ``[net]``; ``size=(width, height)`` overrides the cfg's size."""
    width = net.get_int("width", 0)
    height = net.get_int("height", 0)
    channels = net.get_int("channels", 0)
    if size is not None:
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise CfgError(f"{net.where()}: requested size {width}x{height} must be positive")
    inputs = net.get_int("inputs", width * height * channels)
    for key, value in (("width", width), ("height", height), ("channels", channels)):
        if value < 0:
            raise net.error(f"'{key}' must not be negative, got {value}", key)
    if inputs <= 0 or (channels == 0 and width * height > 0):
        raise net.error("[net] needs width, height and channels (or inputs) greater than 0")
    letter_box = net.get_int("letter_box", 0) != 0
    net.used.update(net.options)  # Darknet never reports unused [net] keys.
    return NetSpec(width=width, height=height, channels=channels, inputs=inputs, letter_box=letter_box)


def build_graph(cfg: Cfg, size: tuple[int, int] | None = None, limits: Limits | None = None) -> Graph:
    """Run every section's spec rule in order; raise :class:`CfgError` on the first problem.

    ``limits`` (default: :meth:`Limits.from_env`) bounds the parameter and activation
    bytes; the layer that crosses a bound is named before anything is allocated.
    """
    from . import specs  # noqa: F401  (registers the rules)

    limits = limits or Limits.from_env()
    net = parse_net(cfg.net, size)
    budget = _Budget(limits, cfg.net, 4 * net.inputs)
    layers: list[LayerSpec] = []
    warnings: list[str] = []
    for section in cfg.layers:
        rule = SPEC_RULES.get(section.type)
        if rule is None:  # pragma: no cover - every alias has a rule
            raise section.error(f"no spec rule for section type [{section.type}]")
        ctx = Context(section, net, layers, warnings, limits)
        section.mark_used(*_COMMON_KEYS)
        result = rule(ctx)
        spec = _make_spec(ctx, result)
        budget.add(spec)
        layers.append(spec)
    return Graph(cfg=cfg, net=net, layers=layers, warnings=warnings)


class _Budget:
    """Running totals of float32 bytes: parameters, and activations for one image.

    Activations count the input and every layer's output (darkcfg, like Darknet, keeps
    them all), plus the antialiasing blur's output where there is one.
    """

    def __init__(self, limits: Limits, net: Section, input_bytes: int):
        self.limits = limits
        self.params = 0
        self.activations = input_bytes
        if input_bytes > limits.activation_bytes:
            raise net.error(f"the network input needs {human_bytes(input_bytes)}, over the "
                            f"{human_bytes(limits.activation_bytes)} activation limit "
                            "(set $DARKCFG_MAX_ACTIVATION_BYTES to raise it)")

    def add(self, spec: LayerSpec) -> None:
        out = spec.outputs + (_prod(spec.next_shape) if spec.next_shape != spec.out_shape else 0)
        self.activations += 4 * out
        self.params += 4 * spec.weight_floats
        for total, limit, what, env in ((self.activations, self.limits.activation_bytes, "activations",
                                         "DARKCFG_MAX_ACTIVATION_BYTES"),
                                        (self.params, self.limits.param_bytes, "parameters",
                                         "DARKCFG_MAX_PARAM_BYTES")):
            if total > limit:
                raise spec.section.error(
                    f"the network's {what} would need {human_bytes(total)} up to this layer (output "
                    f"{'x'.join(map(str, spec.tensor_shape))}, {spec.weight_floats} weights), over the "
                    f"{human_bytes(limit)} limit (set ${env} to raise it)")


def _prod(shape: Shape) -> int:
    return shape[0] * shape[1] * shape[2]


def _make_spec(ctx: Context, r: RuleResult) -> LayerSpec:
    sec = ctx.section
    outputs = r.outputs if r.outputs is not None else r.out_shape[0] * r.out_shape[1] * r.out_shape[2]
    inputs = ((ctx.index - 1,) if r.reads_prev else ()) + tuple(r.inputs)
    return LayerSpec(
        index=ctx.index, kind=sec.type, section=sec, attrs=r.attrs,
        in_shape=ctx.in_shape, in_outputs=ctx.in_outputs,
        out_shape=r.out_shape, outputs=outputs, inputs=inputs,
        blocks=tuple(r.blocks), params=r.params, bflops=r.bflops,
        next_shape=r.next_shape or r.out_shape,
        dontload=sec.get_int("dontload", 0) != 0,
        dontloadscales=sec.get_int("dontloadscales", 0) != 0,
    )
