"""Darknet's training batch norm: batch statistics, rolling update and Darknet's own backward.

Forward (``forward_batchnorm_layer``, train): mean over (batch, h, w), the UNBIASED variance
(``/(N-1)``) used both to normalise and for the rolling statistics, ``rolling = 0.9*rolling +
0.1*batch`` (0.95/0.05 in ``[connected]``).

Backward (``backward_batchnorm_layer``) is not the derivative of that forward: the final
normalisation divides by ``sqrt(var) + eps`` (epsilon OUTSIDE the root) while the mean and
variance terms use ``sqrt(var + eps)``, and both spread over ``N`` rather than ``N - 1``.  On
small maps this differs from the exact gradient by up to ~3e-3 relative, so matching Darknet's
weight updates needs this formula; ``exact=True`` gives autograd's true gradient instead.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from ..layers.functional import bn_denominator

EPS = 1e-5


def _stats(x: Tensor) -> Tuple[Tensor, Tensor, Tuple[int, ...], int]:
    """Per-channel mean and unbiased variance over every dim but 1; also the reduce dims and N."""
    dims = (0,) + tuple(range(2, x.dim()))
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=True) if n > 1 else torch.zeros_like(mean)
    return mean, var, dims, n


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (x.dim() - 2))


class _DarknetBatchNormFn(torch.autograd.Function):
    """``y = scale * (x - mean) / sqrt(var + eps) + bias`` with Darknet's backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, bias: Optional[Tensor], mean: Tensor, var: Tensor,
                pjreddie: bool) -> Tensor:  # type: ignore[override]
        denom = bn_denominator(var, pjreddie)
        x_norm = (x - _bcast(mean, x)) / _bcast(denom, x)
        y = x_norm * _bcast(scale, x)
        if bias is not None:
            y = y + _bcast(bias, x)
        ctx.save_for_backward(x, x_norm, scale, mean, var)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        x, x_norm, scale, mean, var = ctx.saved_tensors
        dims = (0,) + tuple(range(2, x.dim()))
        n = x.numel() // x.shape[1]
        d_scale = (gy * x_norm).sum(dim=dims)  # backward_scale_cpu
        d_bias = gy.sum(dim=dims) if ctx.has_bias else None
        g = gy * _bcast(scale, x)
        mean_delta = g.sum(dim=dims) * (-1.0 / (var + EPS).sqrt())
        centered = x - _bcast(mean, x)
        var_delta = (g * centered).sum(dim=dims) * (-0.5) * (var + EPS).pow(-1.5)
        dx = (g / _bcast(var.sqrt() + EPS, x) + _bcast(var_delta, x) * 2.0 * centered / n
              + _bcast(mean_delta, x) / n)
        return dx, d_scale, d_bias, None, None, None


def batch_norm_train(x: Tensor, scale: Tensor, bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor,
                     momentum: float = 0.1, exact: bool = False, pjreddie: bool = False) -> Tensor:
    """Normalise ``x`` with its batch statistics and update the rolling ones in place (Darknet train mode).

    ``bias=None`` leaves the shift to the caller (``[connected]`` adds its own bias afterwards).
    """
    with torch.no_grad():
        mean, var, _, _ = _stats(x.detach())
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(var.to(running_var.dtype), alpha=momentum)
    if not exact:
        return _DarknetBatchNormFn.apply(x, scale, bias, mean, var, pjreddie)
    # Exact gradient: let autograd differentiate through the batch statistics.
    dims = (0,) + tuple(range(2, x.dim()))
    m = x.mean(dim=dims)
    v = x.var(dim=dims, unbiased=True) if x.numel() // x.shape[1] > 1 else torch.zeros_like(m)
    denom = bn_denominator(v, pjreddie)
    y = (x - _bcast(m, x)) / _bcast(denom, x) * _bcast(scale, x)
    return y + _bcast(bias, x) if bias is not None else y


def batch_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Darknet's batch mean and unbiased variance of ``x`` (for tests and diagnostics)."""
    mean, var, _, _ = _stats(x)
    return mean, var


def set_bn_backward(model: torch.nn.Module, exact: bool) -> int:
    """Choose the batch-norm backward of every BN in ``model``: Darknet's (default) or ``exact``.

    Returns how many batch norms were switched.
    """
    from ..layers.conv import DarknetBatchNorm

    count = 0
    for m in model.modules():
        if isinstance(m, DarknetBatchNorm):
            m.exact_backward = bool(exact)
            count += 1
    return count
