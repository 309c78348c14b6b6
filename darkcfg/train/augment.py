"""Darknet's detector augmentation (``load_data_detection`` + ``image_data_augmentation``,
the OpenCV build) on HxWx3 uint8 RGB arrays and normalized ``(x, y, w, h, class)`` boxes.

Each image gets a random crop (``jitter`` of its size on each side, plus the head's
``resize`` range; areas outside the image filled with the image's mean colour), a resize
to the network size, a horizontal flip, an HSV jitter (``hue``, ``saturation``,
``exposure``) done in 8-bit HSV like OpenCV does it for Darknet, optional Gaussian blur
(``blur``: of the background only, or of everything), and optionally a 4-image
``mosaic``.  The boxes go through exactly the same geometry (Darknet's
``correct_boxes`` + the filters of ``fill_truth_detection``), so labels follow pixels.

Randomness comes from a ``numpy.random.Generator`` (one per image, seeded by the
loader), so a run is reproducible with a seed, but it cannot be bit-equal to Darknet's
``rand()`` stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import cv2
import numpy as np

from .settings import TrainSettings

Boxes = np.ndarray  # (N, 5) float32: x_center, y_center, w, h, class_id (normalized)


@dataclass
class AugParams:
    """One image's random draw (pixels of the ORIGINAL image for the crop offsets)."""

    pleft: int = 0
    pright: int = 0
    ptop: int = 0
    pbot: int = 0
    flip: bool = False
    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0
    blur: int = 0


def rand_scale(rng: np.random.Generator, s: float) -> float:
    """Darknet's ``rand_scale``: a factor in [1, s], inverted half of the time."""
    lo, hi = (1.0, s) if s >= 1.0 else (s, 1.0)
    scale = lo + (hi - lo) * rng.random()
    return scale if rng.integers(2) else 1.0 / scale


def _between(lo: float, hi: float, r: float) -> float:
    """Darknet's ``rand_precalc_random``: ``lo + r (hi - lo)`` with the bounds ordered."""
    if hi < lo:
        lo, hi = hi, lo
    return r * (hi - lo) + lo


def draw_params(rng: np.random.Generator, ow: int, oh: int, w: int, h: int, s: TrainSettings,
                mosaic_part: Optional[int] = None) -> AugParams:
    """Random crop/flip/colour/blur for one ``ow x oh`` image going to a ``w x h`` network.

    ``mosaic_part`` (0..3): the image is one quarter of a mosaic; half of the time its
    crop is pushed towards the mosaic's centre, as Darknet does.
    """
    dw, dh = int(ow * s.jitter), int(oh * s.jitter)
    down = s.resize if s.resize <= 1.0 else 1.0 / s.resize
    up = s.resize if s.resize >= 1.0 else 1.0 / s.resize
    min_rdw, min_rdh = int(ow * (1 - 1 / down) / 2), int(oh * (1 - 1 / down) / 2)
    max_rdw, max_rdh = int(ow * (1 - 1 / up) / 2), int(oh * (1 - 1 / up) / 2)
    rr1, rr2 = rng.random(), rng.random()
    r1, r2, r3, r4 = rng.random(4)
    p = AugParams()
    p.flip = bool(s.flip and rng.integers(2))
    p.dhue = float(-s.hue + 2 * s.hue * rng.random())
    p.dsat = rand_scale(rng, s.saturation)
    p.dexp = rand_scale(rng, s.exposure)
    if s.blur:
        choice = int(rng.integers(3))  # 0: none, 1: background, 2: everything
        p.blur = 0 if choice == 0 else (1 if choice == 1 else s.blur)
    hi_w, hi_h = (0, 0) if s.resize < 1 else (max_rdw, max_rdh)
    pleft = _between(-dw, dw, r1) + _between(min_rdw, hi_w, rr1)
    pright = _between(-dw, dw, r2) + _between(min_rdw, hi_w, rr2)
    ptop = _between(-dh, dh, r3) + _between(min_rdh, hi_h, rr1)
    pbot = _between(-dh, dh, r4) + _between(min_rdh, hi_h, rr2)
    if s.letter_box:  # widen the crop so the image keeps its aspect ratio inside the network
        img_ar, net_ar = ow / oh, w / h
        if img_ar / net_ar > 1:
            delta = (ow / net_ar - oh) / 2
            ptop, pbot = ptop - delta, pbot - delta
        else:
            delta = (oh * net_ar - ow) / 2
            pleft, pright = pleft - delta, pright - delta
    p.pleft, p.pright, p.ptop, p.pbot = int(pleft), int(pright), int(ptop), int(pbot)
    if mosaic_part is not None and rng.integers(2) == 0:
        # keep the part of the crop that lands next to the mosaic's centre
        right_side = mosaic_part in (1, 3)
        bottom = mosaic_part in (2, 3)
        if right_side != p.flip:
            p.pleft, p.pright = p.pleft + p.pright, 0
        else:
            p.pright, p.pleft = p.pleft + p.pright, 0
        if bottom:
            p.ptop, p.pbot = p.ptop + p.pbot, 0
        else:
            p.pbot, p.ptop = p.pbot + p.ptop, 0
    if ow - p.pleft - p.pright <= 0 or oh - p.ptop - p.pbot <= 0 or ow - p.pleft <= 0 or oh - p.ptop <= 0:
        p.pleft = p.pright = p.ptop = p.pbot = 0  # Darknet's "invalid resize" fallback
    return p


def transform_boxes(boxes: Boxes, p: AugParams, ow: int, oh: int, w: int, h: int, classes: int,
                    max_boxes: int, rng: Optional[np.random.Generator] = None) -> Boxes:
    """Darknet's ``correct_boxes`` + ``fill_truth_detection`` for the crop/flip in ``p``.

    Boxes outside the image or degenerate are dropped, the rest clipped to [0, 1]; boxes
    narrower than one network pixel, and class ids >= ``classes`` (when > 0), are dropped.
    """
    if boxes.size == 0:
        return np.zeros((0, 5), np.float32)
    b = np.asarray(boxes, np.float64).reshape(-1, 5).copy()
    if rng is not None:
        b = b[rng.permutation(len(b))]  # randomize_boxes: which boxes survive the max_boxes cap
    b = b[:max_boxes]
    x, y, bw, bh, cls = b.T
    valid = ~((x == 0) & (y == 0))
    valid &= ~((x + bw / 2 < 0) | (y + bh / 2 < 0) | (x - bw / 2 > 1) | (y - bh / 2 > 1))
    swidth, sheight = ow - p.pleft - p.pright, oh - p.ptop - p.pbot
    sx, sy = swidth / ow, sheight / oh
    dx, dy = (p.pleft / ow) / sx, (p.ptop / oh) / sy
    left, right = (x - bw / 2) / sx - dx, (x + bw / 2) / sx - dx
    top, bottom = (y - bh / 2) / sy - dy, (y + bh / 2) / sy - dy
    if p.flip:
        left, right = 1.0 - right, 1.0 - left
    left, right, top, bottom = (np.clip(v, 0.0, 1.0) for v in (left, right, top, bottom))
    nx, ny = (left + right) / 2, (top + bottom) / 2
    nw, nh = np.clip(right - left, 0, 1), np.clip(bottom - top, 0, 1)
    keep = valid & (nw >= 1.0 / w) & (nh >= 1.0 / h) & (nx > 0) & (nx <= 1) & (ny > 0) & (ny <= 1)
    if classes > 0:
        keep &= (cls >= 0) & (cls < classes)
    out = np.stack([nx, ny, nw, nh, cls], axis=1)[keep]
    return out.astype(np.float32)


def crop_resize(img: np.ndarray, p: AugParams, w: int, h: int) -> np.ndarray:
    """The crop rectangle of ``p`` (mean colour outside the image), resized to ``w x h``, flipped."""
    oh, ow = img.shape[:2]
    swidth, sheight = ow - p.pleft - p.pright, oh - p.ptop - p.pbot
    if p.pleft == 0 and p.ptop == 0 and swidth == ow and sheight == oh:
        cropped = img
    else:
        mean = img.reshape(-1, img.shape[2]).mean(axis=0)
        cropped = np.empty((sheight, swidth, img.shape[2]), img.dtype)
        cropped[:] = np.rint(mean).astype(img.dtype)
        x0, y0 = max(p.pleft, 0), max(p.ptop, 0)
        x1, y1 = min(p.pleft + swidth, ow), min(p.ptop + sheight, oh)
        if x1 > x0 and y1 > y0:
            dx0, dy0 = x0 - p.pleft, y0 - p.ptop
            cropped[dy0:dy0 + (y1 - y0), dx0:dx0 + (x1 - x0)] = img[y0:y1, x0:x1]
    sized = cv2.resize(cropped, (w, h), interpolation=cv2.INTER_LINEAR)
    if p.flip:
        sized = np.ascontiguousarray(sized[:, ::-1])
    return sized


def color_jitter(img: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """HSV jitter on 8-bit pixels as Darknet's OpenCV code does it (saturating channel maths)."""
    if dsat == 1 and dexp == 1 and dhue == 0:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= dsat
    hsv[..., 2] *= dexp
    hsv[..., 0] += 179 * dhue
    hsv = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def blur_image(img: np.ndarray, blur: int, boxes: Boxes) -> np.ndarray:
    """``blur=1``: blur all but the boxes (17x17 Gaussian); ``blur>1``: the whole image."""
    if not blur:
        return img
    ksize = 17 if blur == 1 else (blur // 2) * 2 + 1
    out = cv2.GaussianBlur(img, (ksize, ksize), 0)
    if blur == 1:
        hh, ww = img.shape[:2]
        for x, y, bw, bh, _ in boxes:
            left, top = int((x - bw / 2) * ww), int((y - bh / 2) * hh)
            x0, y0 = max(left, 0), max(top, 0)
            x1, y1 = min(left + int(bw * ww), ww), min(top + int(bh * hh), hh)
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = img[y0:y1, x0:x1]
    return out


def augment_image(img: np.ndarray, boxes: Boxes, w: int, h: int, s: TrainSettings, rng: np.random.Generator,
                  mosaic_part: Optional[int] = None) -> Tuple[np.ndarray, Boxes, AugParams]:
    """One image through Darknet's augmentation: ``(w x h x 3 uint8, boxes, the draw)``."""
    oh, ow = img.shape[:2]
    p = draw_params(rng, ow, oh, w, h, s, mosaic_part)
    out_boxes = transform_boxes(boxes, p, ow, oh, w, h, s.classes, s.max_boxes, rng)
    if p.blur > 1 and len(out_boxes):
        min_wh = int(min((out_boxes[:, 2] * w).min(), (out_boxes[:, 3] * h).min()))
        if min_wh // 8 < p.blur:
            p.blur = min_wh // 8  # Darknet: no strong blur when an object is small
    sized = crop_resize(img, p, w, h)
    sized = color_jitter(sized, p.dhue, p.dsat, p.dexp)
    sized = blur_image(sized, p.blur, out_boxes)
    return sized, out_boxes, p


def _mosaic_boxes(boxes: Boxes, part: int, shift_x: int, shift_y: int, w: int, h: int, cut_x: int, cut_y: int,
                  bound: bool) -> Boxes:
    """One quarter's boxes moved into the mosaic (``blend_truth_mosaic``)."""
    out = []
    for x, y, bw, bh, cls in boxes:
        xb, yb = x - shift_x / w, y - shift_y / h
        left, right = int((xb - bw / 2) * w), int((xb + bw / 2) * w)
        top, bot = int((yb - bh / 2) * h), int((yb + bh / 2) * h)
        if bound:
            lb, rb = (0, cut_x) if part in (0, 2) else (cut_x, w)
            tb, bb = (0, cut_y) if part in (0, 1) else (cut_y, h)
            left, right, top, bot = max(left, lb), min(right, rb), max(top, tb), min(bot, bb)
            xb, bw = (right + left) / 2 / w, (right - left) / w
            yb, bh = (bot + top) / 2 / h, (bot - top) / h
        else:
            if left < 0:
                d = left / w
                xb, bw = xb - d / 2, bw + d
            if right > w:
                d = (right - w) / w
                xb, bw = xb - d / 2, bw - d
            if top < 0:
                d = top / h
                yb, bh = yb - d / 2, bh + d
            if bot > h:
                d = (bot - h) / h
                yb, bh = yb - d / 2, bh - d
            left, right = int((xb - bw / 2) * w), int((xb + bw / 2) * w)
            top, bot = int((yb - bh / 2) * h), int((yb + bh / 2) * h)
        if (left >= 0 and right <= w and top >= 0 and bot <= h and 0 < bw < 1 and 0 < bh < 1
                and 0 < xb < 1 and 0 < yb < 1 and bw > 1 / w and bh > 1 / h):
            out.append((xb, yb, bw, bh, cls))
    return np.asarray(out, np.float32).reshape(-1, 5)


def mosaic(load: Callable[[int], Tuple[np.ndarray, Boxes]], indices: Sequence[int], w: int, h: int,
           s: TrainSettings, rng: np.random.Generator) -> Tuple[np.ndarray, Boxes]:
    """Four images (``load(index)`` -> (RGB uint8, boxes)) into one ``w x h`` mosaic.

    Each quarter is a full augmented image of which the part next to the random centre
    ``(cut_x, cut_y)`` (20-80 % of the size) is kept, as Darknet's ``use_mixup == 3``.
    """
    cut_x = int(rng.integers(int(w * 0.2), int(w * 0.8) + 1))
    cut_y = int(rng.integers(int(h * 0.2), int(h * 0.8) + 1))
    canvas = np.zeros((h, w, 3), np.uint8)
    all_boxes = []
    for part, index in enumerate(indices[:4]):
        img, boxes = load(index)
        oh, ow = img.shape[:2]
        ai, b, p = augment_image(img, boxes, w, h, s, rng, mosaic_part=part)
        pleft, pright = (p.pright, p.pleft) if p.flip else (p.pleft, p.pright)
        left_shift = min(cut_x, max(0, int(-pleft * w / ow)))
        top_shift = min(cut_y, max(0, int(-p.ptop * h / oh)))
        right_shift = min(w - cut_x, max(0, int(-pright * w / ow)))
        bot_shift = min(h - cut_y, max(0, int(-p.pbot * h / oh)))
        x0, x1 = (0, cut_x) if part in (0, 2) else (cut_x, w)
        y0, y1 = (0, cut_y) if part in (0, 1) else (cut_y, h)
        # source offset: where this quarter's pixels come from inside the augmented image
        sx0 = w - cut_x - right_shift if part in (0, 2) else left_shift
        sy0 = h - cut_y - bot_shift if part in (0, 1) else top_shift
        canvas[y0:y1, x0:x1] = ai[sy0:sy0 + (y1 - y0), sx0:sx0 + (x1 - x0)]
        all_boxes.append(_mosaic_boxes(b, part, sx0 - x0, sy0 - y0, w, h, cut_x, cut_y, bool(s.mosaic_bound)))
    boxes_out = np.concatenate(all_boxes)[: s.max_boxes] if all_boxes else np.zeros((0, 5), np.float32)
    return canvas, boxes_out
