"""Training support: Darknet's train-mode batch norm, its loss layers' deltas and the loss API.

Every gradient here is Darknet's own: where Darknet's backward is not the exact derivative of
its forward (batch norm, the [yolo] box deltas), the module injects Darknet's numbers through a
custom autograd function instead of letting autograd differentiate something else.
"""

from .bn import set_bn_backward
from .init import darknet_init
from .loss import LossResult, darknet_loss

__all__ = ["LossResult", "darknet_loss", "darknet_init", "set_bn_backward"]
