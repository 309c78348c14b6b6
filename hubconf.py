"""torch.hub entry points: every zoo model by name, e.g.

    model = torch.hub.load("path/to/darkcfg", "yolov4", pretrained=True, source="local")

Names with ``-`` or ``.`` are also reachable with ``_`` (``yolov4_tiny``, ``yolov4_conv_137``), or
through ``darkcfg_model(name)``.  ``pretrained=True`` fetches and verifies the cfg and weights
into the zoo store (``$DARKCFG_HOME``, else the user cache); ``pretrained=False`` builds the net
from its cfg with Darknet's initialisation.  Keyword arguments go to ``darkcfg.load`` (``size``,
``device``).  Unverified models need ``trust=True`` the first time.
"""

from __future__ import annotations

from typing import Any, Callable

dependencies = ["torch", "numpy", "cv2"]


def darkcfg_model(name: str, pretrained: bool = True, trust: bool = False, **kwargs: Any) -> Any:
    """The zoo model ``name`` as a ``darkcfg.Darknet`` (an ``nn.Module``, eval mode)."""
    import darkcfg
    from darkcfg.zoo import fetch, find_model

    entry = find_model(name)
    paths = fetch(name, trust=True if trust else None, roles=None if pretrained else ("cfg", "names"))
    model = darkcfg.load(paths["cfg"], None, **kwargs)
    if pretrained:  # a partial backbone (*.conv.N) covers only its first N layers
        model.load_weights(paths["weights"], upto=entry.upto)
    return model


def _entry(name: str) -> Callable[..., Any]:
    def entry(pretrained: bool = True, trust: bool = False, **kwargs: Any) -> Any:
        return darkcfg_model(name, pretrained=pretrained, trust=trust, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"darkcfg zoo model {name!r} (see `darkcfg zoo list`)."
    return entry


def _register() -> None:
    from darkcfg.zoo import load_index

    for model in load_index():
        for alias in {model.name, model.name.replace("-", "_").replace(".", "_")}:
            globals().setdefault(alias, _entry(model.name))


_register()
