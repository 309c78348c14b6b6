"""Image loading and Darknet-exact preprocessing.

Darknet's ``detector test`` (``detector.c test_detector``) feeds the network with::

    load_image(path, 0, 0, 3)          # RGB, planar CHW, byte/255 in float
    resize_image(im, net_w, net_h)     # or letterbox_image(...) with -letter_box / [net] letter_box=1

This module reproduces those two steps with vectorised numpy, including the quirks of
darknet's own bilinear resize (see :func:`darknet_resize`).

Decoder caveat (measured, see ``tests/test_image.py``): darknet's default build (OPENCV=0, the
build that produced ``shared/conformance``) decodes JPEGs with stb_image, whose IDCT / chroma
upsampling / YCbCr conversion differ from OpenCV's libjpeg-turbo by a few grey levels. With the
OpenCV decode used here, ``darknet_resize(to_chw_float(load_image(x)), 320, 320)`` differs from
darknet's own 320x320 tensors by (max abs / mean abs, in [0,1] units)::

    dog      0.0105 / 0.000372   (conformance/cases/real-yolo-fastest-1.1/input.npy; 78.7% bit-exact)
    person   0.0114 / 0.000363   (conformance/real-inputs/person_320x320.npy;     79.9% bit-exact)
    horses   0.0108 / 0.000259   (horses_320x320.npy;                              85.8% bit-exact)
    eagle    0.0099 / 0.000510   (eagle_320x320.npy;                               72.4% bit-exact)
    giraffe  0.0074 / 0.000105   (giraffe_320x320.npy;                             90.4% bit-exact)

i.e. at most ~3 grey levels, and 72-90% of the values are bit-identical (everywhere the two
decoders agree, the resize is exact). For comparison ``cv2.resize(INTER_LINEAR)`` on the same
decode is off by up to 0.32 / mean 0.007-0.020 (different sampling grid), so the remaining error
is the JPEG decoder, not the resize.
"""

from __future__ import annotations

import os
from typing import Union

import cv2
import numpy as np
import torch

from darkcfg.errors import ImageError

PathLike = Union[str, "os.PathLike[str]"]

# IMREAD_ANYCOLOR|IMREAD_ANYDEPTH (not IMREAD_UNCHANGED): keeps grey and 16-bit data so that we
# can convert them ourselves, while still letting OpenCV apply the EXIF orientation (OpenCV skips
# orientation only for IMREAD_UNCHANGED / IMREAD_IGNORE_ORIENTATION) and drop alpha, exactly
# like darknet's OpenCV build (imread(IMREAD_COLOR)).
_IMREAD_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

_LETTERBOX_FILL = 0.5  # letterbox_image: fill_image(boxed, .5)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 **RGB** array, like darknet's ``load_image``.

    * grey images are replicated to 3 channels, alpha is dropped (stb_image with 3 requested
      components and OpenCV's IMREAD_COLOR both do this: no compositing);
    * 16-bit images become 8-bit by ``>> 8`` (what both stb_image ``stbi__convert_16_to_8`` and
      OpenCV's IMREAD_COLOR do; checked against IMREAD_COLOR in the tests);
    * the EXIF orientation is applied (darknet's OpenCV build does, its stb build does not).

    The file is read with ``numpy.fromfile`` + ``cv2.imdecode`` so that non-ASCII paths work and
    "missing", "empty" and "not decodable" can be told apart.

    Raises:
        ImageError: naming the path and the reason.
    """
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise ImageError(f"{spath}: no such file")
    if os.path.isdir(spath):
        raise ImageError(f"{spath}: is a directory, not an image file")
    try:
        data = np.fromfile(spath, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{spath}: cannot read file ({exc})") from exc
    if data.size == 0:
        raise ImageError(f"{spath}: empty file (0 bytes)")
    decoded = cv2.imdecode(data, _IMREAD_FLAGS)
    if decoded is None or decoded.size == 0:
        raise ImageError(
            f"{spath}: cannot decode image data ({data.size} bytes; not an image, truncated, "
            "or a format this OpenCV build does not support)"
        )
    try:
        return image_from_array(decoded, bgr=True)
    except ImageError as exc:
        raise ImageError(f"{spath}: {exc}") from exc


def image_from_array(arr: np.ndarray, bgr: bool = True) -> np.ndarray:
    """Normalise an array as OpenCV returns it to ``HxWx3`` uint8 RGB.

    Accepts ``HxW`` (grey), ``HxWx1``, ``HxWx3`` and ``HxWx4`` (alpha dropped, not composited)
    with dtype uint8, uint16 (``>> 8``) or float (values in [0, 1], mapped with
    ``rint(v*255)`` after clipping). ``bgr=True`` means the channels are in OpenCV's BGR(A)
    order and are swapped to RGB; pass ``bgr=False`` for data that is already RGB.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageError(f"unsupported image array shape {a.shape} (expected HxW, HxWx1, HxWx3 or HxWx4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image has zero size {a.shape}")
    a = a[:, :, :3]
    if bgr:
        a = a[:, :, ::-1]
    return np.ascontiguousarray(_to_uint8(a))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Convert pixel values to uint8 following the decoders darknet uses (see load_image)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"unsupported pixel dtype {a.dtype} (expected uint8, uint16 or float in [0,1])")


def to_chw_float(img_rgb_uint8: np.ndarray) -> np.ndarray:
    """``HxWx3`` uint8 → float32 ``3xHxW`` in [0, 1], value = byte/255.

    darknet (stb path) divides in double and rounds to float; a float32 division of the exact
    float32 operands gives the identical value for all 256 bytes (checked in the tests).
    """
    a = np.asarray(img_rgb_uint8)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 image, got shape {a.shape} dtype {a.dtype}")
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------------------------
# darknet's bilinear resize (image.c resize_image)
# --------------------------------------------------------------------------------------------


def _sample_positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer source index and float32 fraction for each output position.

    darknet uses "align corners" scale ``(n_in-1)/(n_out-1)`` computed in float, and position
    ``s = k*scale`` in float32; ``i = (int)s`` and ``d = s - i`` in float32. Reproducing the float32
    rounding matters: for some sizes ``(n_out-1)*scale`` lands just below ``n_in-1`` (the last-row
    quirk of :func:`darknet_resize`).
    """
    if n_out == 1:
        # darknet would compute 0*inf = NaN here (undefined behaviour); we sample index 0.
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    s = np.arange(n_out, dtype=np.float32) * scale
    i = s.astype(np.int64)  # truncation == floor for s >= 0
    d = s - i.astype(np.float32)
    return i, d


def _resize_columns(src: np.ndarray, out_w: int) -> np.ndarray:
    """Pass 1 of resize_image: along x, into a ``C x H x out_w`` buffer.

    The last output column (or every column when the source has width 1) is a plain copy of the
    last source column; the others blend columns i and i+1 as ``(1-d)*a + d*b`` in float32.
    """
    c, h, w_in = src.shape
    if w_in == 1:
        return np.repeat(src[:, :, :1], out_w, axis=2)
    i, d = _sample_positions(w_in, out_w)
    i1 = np.minimum(i + 1, w_in - 1)
    one = np.float32(1.0)
    out = (one - d) * src[:, :, i] + d * src[:, :, i1]
    out[:, :, out_w - 1] = src[:, :, w_in - 1]
    return out.astype(np.float32, copy=False)


def _resize_rows(tmp: np.ndarray, out_h: int) -> np.ndarray:
    """Pass 2 of resize_image: along y.

    Every row gets ``(1-d)*tmp[i]``; all rows except the last one (and none when the source has
    height 1) then get ``+ d*tmp[i+1]`` as a separate float32 add (darknet stores then adds).
    No copy of the last source row here -- hence the quirk: when ``(out_h-1)*scale`` rounds to
    just below ``H-1``, the last row is ``(1-d)*tmp[H-2]`` with ``d ≈ 1``, i.e. nearly black.
    """
    c, h_in, w = tmp.shape
    i, d = _sample_positions(h_in, out_h)
    one = np.float32(1.0)
    out = (one - d)[None, :, None] * tmp[:, i, :]
    if h_in > 1 and out_h > 1:
        rows = slice(0, out_h - 1)
        out[:, rows, :] += d[rows][None, :, None] * tmp[:, i[rows] + 1, :]
    return out.astype(np.float32, copy=False)


def darknet_resize(chw_float: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize a float32 ``CxHxW`` image exactly like darknet's ``resize_image``.

    Align-corners bilinear, horizontal pass then vertical pass, float32 arithmetic, last column
    copied, and the last-row quirk (see :func:`_resize_rows`; it hits e.g. 512→448). When the size
    already matches, darknet still goes through the loops but the result is the input, so we
    return a copy. Vectorised: one gather per pass, no per-pixel Python loops.

    >>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    >>> darknet_resize(x, 7, 1)[0, 0].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    """
    src = np.asarray(chw_float, dtype=np.float32)
    if src.ndim != 3:
        raise ValueError(f"darknet_resize expects a CxHxW array, got shape {src.shape}")
    if out_w < 1 or out_h < 1:
        raise ValueError(f"darknet_resize: invalid output size {out_w}x{out_h}")
    _, h_in, w_in = src.shape
    if (w_in, h_in) == (out_w, out_h):
        return src.copy()
    return _resize_rows(_resize_columns(src, out_w), out_h)


# --------------------------------------------------------------------------------------------
# letterbox (image.c letterbox_image) and the full preprocessing
# --------------------------------------------------------------------------------------------


def letterbox_size(img_w: int, img_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Size the image is resized to inside the letterbox (letterbox_image / correct_yolo_boxes).

    The axis with the smaller float ratio ``net/img`` is filled; the other side is scaled with
    C integer arithmetic ``(img_other * net) / img`` (truncating).
    """
    if np.float32(net_w) / np.float32(img_w) < np.float32(net_h) / np.float32(img_h):
        return net_w, (img_h * net_w) // img_w
    return (img_w * net_h) // img_h, net_h


def letterbox(chw_float: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """darknet ``letterbox_image``: resize keeping aspect, paste on a 0.5-grey canvas.

    The resized image is placed at the *integer* offset ``((net_w-new_w)//2, (net_h-new_h)//2)``
    (box correction uses the fractional offset; see detect.correct_boxes).
    """
    src = np.asarray(chw_float, dtype=np.float32)
    c, h, w = src.shape
    new_w, new_h = letterbox_size(w, h, net_w, net_h)
    resized = darknet_resize(src, new_w, new_h)
    canvas = np.full((c, net_h, net_w), _LETTERBOX_FILL, dtype=np.float32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2
    canvas[:, dy : dy + new_h, dx : dx + new_w] = resized
    return canvas


def preprocess(img_rgb_uint8: np.ndarray, net_w: int, net_h: int, letterbox: bool = False) -> torch.Tensor:
    """RGB uint8 image → ``1x3xHxW`` float32 tensor, as ``test_detector`` feeds ``network_predict``.

    Stretch (``resize_image``) by default, ``letterbox_image`` when ``letterbox`` is true
    (``-letter_box`` or ``[net] letter_box=1``). No mean/std normalisation.
    """
    chw = to_chw_float(img_rgb_uint8)
    if letterbox:
        net_in = _letterbox(chw, net_w, net_h)
    else:
        net_in = darknet_resize(chw, net_w, net_h)
    return torch.from_numpy(np.ascontiguousarray(net_in)).unsqueeze(0)


_letterbox = letterbox  # the `letterbox` flag of preprocess shadows the function name


def resize_min(chw_float: np.ndarray, size: int) -> np.ndarray:
    """darknet ``resize_min``: the shorter side becomes ``size``, the other ``(other*size)/short``
    (C integer arithmetic), with darknet's bilinear; a no-op when nothing changes."""
    _, h, w = chw_float.shape
    new_w, new_h = (size, (h * size) // w) if w < h else ((w * size) // h, size)
    return chw_float if (new_w, new_h) == (w, h) else darknet_resize(chw_float, new_w, new_h)


def crop_clamped(chw_float: np.ndarray, dx: int, dy: int, w: int, h: int) -> np.ndarray:
    """darknet ``crop_image``: a ``w x h`` window at (dx, dy); outside pixels repeat the edge."""
    _, src_h, src_w = chw_float.shape
    rows = np.clip(np.arange(h) + dy, 0, src_h - 1)
    cols = np.clip(np.arange(w) + dx, 0, src_w - 1)
    return chw_float[:, rows[:, None], cols[None, :]]


def classifier_preprocess(img_rgb_uint8: np.ndarray, net_w: int, net_h: int) -> torch.Tensor:
    """RGB uint8 image -> ``1x3xHxW`` tensor as ``darknet classifier predict`` feeds the network:
    ``resize_min`` to ``net_w``, then a centre crop at ``((W'-net_w)/2, (H'-net_h)/2)``."""
    resized = resize_min(to_chw_float(img_rgb_uint8), net_w)
    _, h, w = resized.shape
    crop = crop_clamped(resized, (w - net_w) // 2, (h - net_h) // 2, net_w, net_h)
    return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).unsqueeze(0)
