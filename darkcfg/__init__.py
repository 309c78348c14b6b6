"""darkcfg: run upstream Darknet models in PyTorch, with Darknet's own numbers.

>>> import darkcfg
>>> model = darkcfg.load("yolov4-tiny.cfg", "yolov4-tiny.weights")      # doctest: +SKIP
>>> heads = model(torch.rand(1, 3, 416, 416))                          # doctest: +SKIP
"""

from .errors import CfgError, DarkcfgError, ImageBatchError, ImageError, WeightsError
from .evaluation import Evaluation, evaluate
from .model import Darknet, load

__version__ = "0.1.0"
__all__ = ["CfgError", "DarkcfgError", "Darknet", "Evaluation", "ImageBatchError", "ImageError", "WeightsError",
           "__version__", "evaluate", "load"]
