"""The activation names Darknet's ``get_activation`` recognises (exact, case-sensitive).

Torch-free, so that the spec pass (``darkcfg info``, :func:`darkcfg.graph.build_graph`)
can validate ``activation=`` without importing torch; :mod:`darkcfg.layers.activations`
implements exactly these (a test checks the two agree).
"""

from __future__ import annotations

ACTIVATION_NAMES: frozenset[str] = frozenset([
    "linear",
    "leaky",
    "logistic",
    "relu",
    "relu6",
    "elu",
    "selu",
    "gelu",
    "swish",
    "mish",
    "hard_mish",
    "tanh",
    "loggy",
    "relie",
    "ramp",
    "revleaky",
    "plse",
    "hardtan",
    "lhtan",
    "stair",
    "normalize_channels",
    "normalize_channels_softmax",
    "normalize_channels_softmax_maxval",
])
