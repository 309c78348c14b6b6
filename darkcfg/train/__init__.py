"""Training support.

Model side: Darknet's train-mode batch norm, its loss layers' deltas and the loss API.  Every
gradient here is Darknet's own: where Darknet's backward is not the exact derivative of its
forward (batch norm, the [yolo] box deltas), the module injects Darknet's numbers through a
custom autograd function instead of letting autograd differentiate something else.

Loop side (``darkcfg train``): Darknet's SGD (:mod:`.sgd`), learning-rate policies (:mod:`.lr`),
augmentation (:mod:`.augment`), the data pipeline (:mod:`.dataset`), checkpoints and the loop
(:mod:`.trainer`), torchrun/DDP (:mod:`.distributed`).
"""

from typing import Any

from .bn import set_bn_backward
from .init import darknet_init
from .loss import LossResult, darknet_loss
from .lr import learning_rate
from .settings import TrainSettings, read_train_settings
from .sgd import DarknetSGD, darknet_param_groups, make_optimizer

__all__ = ["DarknetSGD", "LossResult", "TrainOptions", "TrainResult", "TrainSettings", "darknet_init",
           "darknet_loss", "darknet_param_groups", "learning_rate", "make_optimizer", "read_train_settings",
           "set_bn_backward", "train"]


def __getattr__(name: str) -> Any:
    # the loop pulls in the data pipeline (OpenCV, DataLoader); load it only when asked for
    if name in ("TrainOptions", "TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
