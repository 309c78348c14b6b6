"""darkcfg: run upstream Darknet models in PyTorch, with Darknet's own numbers.

>>> import darkcfg
>>> model = darkcfg.load("yolov4-tiny.cfg", "yolov4-tiny.weights")      # doctest: +SKIP
>>> heads = model(torch.rand(1, 3, 416, 416))                          # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

from .errors import CfgError, DarkcfgError, ImageBatchError, ImageError, WeightsError

if TYPE_CHECKING:
    from .evaluation import Evaluation, evaluate
    from .model import Darknet, load

#: Public names whose modules import torch: loaded on first use, so the torch-free parts
#: (``darkcfg.cfg``, ``darkcfg.graph``, ``darkcfg info``) start without torch.
_LAZY = {"Darknet": "model", "load": "model", "Evaluation": "evaluation", "evaluate": "evaluation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'darkcfg' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["CfgError", "DarkcfgError", "Darknet", "Evaluation", "ImageBatchError", "ImageError", "WeightsError",
           "__version__", "evaluate", "load"]
