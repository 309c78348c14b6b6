"""Darknet's box arithmetic for the loss layers (``box.c``), scalar, in Darknet's own conventions.

Boxes are ``(x_center, y_center, w, h)`` tuples.  ``dx_box_iou`` is Darknet's IoU-loss "gradient",
which is deliberately NOT the derivative of any of the reported IoU values (see
``shared/training/README.md`` and the notes on each quirk below); the [yolo] loss injects it as is.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

Box = Tuple[float, float, float, float]

# box.c defines M_PI as 3.141592 only when math.h lacks it; glibc has it.
_PI2 = math.pi * math.pi


def _overlap(x1: float, w1: float, x2: float, w2: float) -> float:
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def box_intersection(a: Box, b: Box) -> float:
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    if w < 0 or h < 0:
        return 0.0
    return w * h


def box_union(a: Box, b: Box) -> float:
    return a[2] * a[3] + b[2] * b[3] - box_intersection(a, b)


def box_iou(a: Box, b: Box) -> float:
    i = box_intersection(a, b)
    u = box_union(a, b)
    if i == 0 or u == 0:
        return 0.0
    return i / u


def _enclosing(a: Box, b: Box) -> Tuple[float, float]:
    top = min(a[1] - a[3] / 2, b[1] - b[3] / 2)
    bot = max(a[1] + a[3] / 2, b[1] + b[3] / 2)
    left = min(a[0] - a[2] / 2, b[0] - b[2] / 2)
    right = max(a[0] + a[2] / 2, b[0] + b[2] / 2)
    return right - left, bot - top


def box_giou(a: Box, b: Box) -> float:
    w, h = _enclosing(a, b)
    c = w * h
    iou = box_iou(a, b)
    if c == 0:
        return iou
    return iou - (c - box_union(a, b)) / c


def box_diou(a: Box, b: Box) -> float:
    """Reported DIoU: the distance term is raised to the power 0.6 (the delta uses it unpowered)."""
    w, h = _enclosing(a, b)
    c = w * w + h * h
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    return iou - (d / c) ** 0.6


def box_ciou(a: Box, b: Box) -> float:
    w, h = _enclosing(a, b)
    c = w * w + h * h
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / c
    ar = _safe_atan_ratio(b[2], b[3]) - _safe_atan_ratio(a[2], a[3])
    ar_loss = 4 / _PI2 * ar * ar
    alpha = ar_loss / (1 - iou + ar_loss + 0.000001)
    return iou - (d + alpha * ar_loss)


def box_iou_kind(a: Box, b: Box, kind: str) -> float:
    return {"giou": box_giou, "diou": box_diou, "ciou": box_ciou}.get(kind, box_iou)(a, b)


def _safe_atan_ratio(w: float, h: float) -> float:
    if h == 0:
        return math.copysign(math.pi / 2, w) if w != 0 else float("nan")
    return math.atan(w / h)


def _div(a: float, b: float) -> float:
    """C float division: x/0 is +-inf or nan instead of an exception (fix_nan_inf cleans it later)."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return float("nan")
        return math.copysign(float("inf"), a) * math.copysign(1.0, b)
    return a / b


class BoxGrad(NamedTuple):
    dx: float
    dy: float
    dw: float
    dh: float


def dx_box_iou(pred: Box, truth: Box, kind: str) -> BoxGrad:
    """Darknet's ``dx_box_iou``: the IoU / GIoU / DIoU / CIoU box delta, quirks included.

    Quirks kept on purpose (they are Darknet's gradient): no 1/lw factor on x, y; w, h terms are
    ``dr - dl`` (not halved); intersection sides are not clamped at 0; GIoU/DIoU/CIoU REPLACE the
    IoU part when the boxes do not overlap; the DIoU x/y enclosing-box term has the opposite sign
    of the true derivative; CIoU's alpha comes from the unclamped I/U and its aspect term drops the
    1/(w^2+h^2) factor.
    """
    px, py, pw, ph = pred
    tx, ty, tw, th = truth
    p_top, p_bot = py - ph / 2, py + ph / 2
    p_left, p_right = px - pw / 2, px + pw / 2
    pred_t, pred_b = min(p_top, p_bot), max(p_top, p_bot)
    pred_l, pred_r = min(p_left, p_right), max(p_left, p_right)
    t_top, t_bot = ty - th / 2, ty + th / 2
    t_left, t_right = tx - tw / 2, tx + tw / 2

    X = (pred_b - pred_t) * (pred_r - pred_l)
    Xhat = (t_bot - t_top) * (t_right - t_left)
    Ih = min(pred_b, t_bot) - max(pred_t, t_top)
    Iw = min(pred_r, t_right) - max(pred_l, t_left)
    I = Iw * Ih
    U = X + Xhat - I
    S = (px - tx) ** 2 + (py - ty) ** 2
    giou_Cw = max(pred_r, t_right) - min(pred_l, t_left)
    giou_Ch = max(pred_b, t_bot) - min(pred_t, t_top)
    giou_C = giou_Cw * giou_Ch

    dX_t, dX_b = -(pred_r - pred_l), pred_r - pred_l
    dX_l, dX_r = -(pred_b - pred_t), pred_b - pred_t
    dI_t = -Iw if pred_t > t_top else 0.0
    dI_b = Iw if pred_b < t_bot else 0.0
    dI_l = -Ih if pred_l > t_left else 0.0
    dI_r = Ih if pred_r < t_right else 0.0
    dU_t, dU_b, dU_l, dU_r = dX_t - dI_t, dX_b - dI_b, dX_l - dI_l, dX_r - dI_r
    dC_t = -giou_Cw if pred_t < t_top else 0.0
    dC_b = giou_Cw if pred_b > t_bot else 0.0
    dC_l = -giou_Ch if pred_l < t_left else 0.0
    dC_r = giou_Ch if pred_r > t_right else 0.0

    p_dt = p_db = p_dl = p_dr = 0.0
    if U > 0:
        uu = U * U
        p_dt = (U * dI_t - I * dU_t) / uu
        p_db = (U * dI_b - I * dU_b) / uu
        p_dl = (U * dI_l - I * dU_l) / uu
        p_dr = (U * dI_r - I * dU_r) / uu
    if not p_top < p_bot:
        p_dt = p_db
    if not p_left < p_right:
        p_dl = p_dr

    if kind == "giou":
        cc = giou_C * giou_C
        g_t = _div(giou_C * dU_t - U * dC_t, cc)
        g_b = _div(giou_C * dU_b - U * dC_b, cc)
        g_l = _div(giou_C * dU_l - U * dC_l, cc)
        g_r = _div(giou_C * dU_r - U * dC_r, cc)
        if giou_C > 0:
            p_dt, p_db, p_dl, p_dr = p_dt + g_t, p_db + g_b, p_dl + g_l, p_dr + g_r
        if Iw <= 0 or Ih <= 0:
            p_dt, p_db, p_dl, p_dr = g_t, g_b, g_l, g_r

    p_dx = p_dl + p_dr
    p_dy = p_dt + p_db
    p_dw = p_dr - p_dl
    p_dh = p_db - p_dt

    if kind in ("diou", "ciou"):
        Ct = min(py - ph / 2, ty - th / 2)
        Cb = max(py + ph / 2, ty + th / 2)
        Cl = min(px - pw / 2, tx - tw / 2)
        Cr = max(px + pw / 2, tx + tw / 2)
        Cw, Ch = Cr - Cl, Cb - Ct
        C = Cw * Cw + Ch * Ch
        top_out = pred_t < t_top
        bot_out = pred_b > t_bot
        left_out = pred_l < t_left
        right_out = pred_r > t_right
        dCw_dx = (1.0 if right_out else 0.0) - (1.0 if left_out else 0.0)
        dCw_dw = (0.5 if right_out else 0.0) - (-0.5 if left_out else 0.0)
        dCh_dy = (1.0 if bot_out else 0.0) - (1.0 if top_out else 0.0)
        dCh_dh = (0.5 if bot_out else 0.0) - (-0.5 if top_out else 0.0)
        CC = C * C
        d_x = _div(2 * (tx - px) * C - (2 * Cw * dCw_dx) * S, CC)
        d_y = _div(2 * (ty - py) * C - (2 * Ch * dCh_dy) * S, CC)
        d_w = _div((2 * Cw * dCw_dw) * S, CC)
        d_h = _div((2 * Ch * dCh_dh) * S, CC)
        if kind == "ciou":
            ar = _safe_atan_ratio(tw, th) - _safe_atan_ratio(pw, ph)
            ar_loss = 4 / _PI2 * ar * ar
            alpha = _div(ar_loss, 1 - _div(I, U) + ar_loss + 0.000001)
            d_w += alpha * (8 / _PI2 * ar * ph)
            d_h += alpha * (-8 / _PI2 * ar * pw)
        if C > 0:
            p_dx, p_dy, p_dw, p_dh = p_dx + d_x, p_dy + d_y, p_dw + d_w, p_dh + d_h
        if Iw <= 0 or Ih <= 0:
            p_dx, p_dy, p_dw, p_dh = d_x, d_y, d_w, d_h
    return BoxGrad(p_dx, p_dy, p_dw, p_dh)
