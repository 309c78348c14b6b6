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
import stat
from typing import Optional, Union

import cv2
import numpy as np
import torch

from darkcfg import native
from darkcfg.errors import ImageError
from darkcfg.image_header import header_size

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

#: Default cap on decoded pixels (width x height) of one image file: 2**28 = 268,435,456, e.g.
#: 16384 x 16384, about 0.8 GB as 8-bit RGB. Override per call (``max_pixels=``), or for the
#: process with the environment variable ``DARKCFG_MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS = 1 << 28

#: Bytes of file allowed per permitted pixel (16-bit RGBA uncompressed is 8 bytes a pixel),
#: so a multi-gigabyte file is refused before it is read into memory.
_FILE_BYTES_PER_PIXEL = 8


def max_image_pixels(max_pixels: Optional[int] = None) -> int:
    """The pixel cap in force: ``max_pixels`` if given, else ``$DARKCFG_MAX_IMAGE_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`."""
    if max_pixels is not None:
        if max_pixels < 1:
            raise ImageError(f"max_pixels must be >= 1, got {max_pixels}")
        return int(max_pixels)
    env = os.environ.get("DARKCFG_MAX_IMAGE_PIXELS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ImageError(f"DARKCFG_MAX_IMAGE_PIXELS={env!r} is not a whole number") from None
        if value < 1:
            raise ImageError(f"DARKCFG_MAX_IMAGE_PIXELS={env!r} must be >= 1")
        return value
    return DEFAULT_MAX_PIXELS


def _check_pixels(spath: str, width: int, height: int, cap: int, when: str) -> None:
    if width * height > cap:
        raise ImageError(
            f"{spath}: image {when} {width} x {height} = {width * height:,} pixels, above the limit of {cap:,} "
            "(raise it with max_pixels= / --max-pixels / DARKCFG_MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise ImageError(f"{spath}: image {when} an empty size {width} x {height}")


def load_image(path: PathLike, max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 **RGB** array, like darknet's ``load_image``.

    * grey images are replicated to 3 channels, alpha is dropped (stb_image with 3 requested
      components and OpenCV's IMREAD_COLOR both do this: no compositing);
    * 16-bit images become 8-bit by ``>> 8`` (what both stb_image ``stbi__convert_16_to_8`` and
      OpenCV's IMREAD_COLOR do; checked against IMREAD_COLOR in the tests);
    * the EXIF orientation is applied (darknet's OpenCV build does, its stb build does not).

    The file is read with ``numpy.fromfile`` + ``cv2.imdecode`` so that non-ASCII paths work and
    "missing", "empty" and "not decodable" can be told apart. Images above ``max_pixels``
    (see :func:`max_image_pixels`) are refused from their header, before decoding, so an image
    bomb costs nothing; only regular files are read (a FIFO or device would block or never end).

    Raises:
        ImageError: naming the path and the reason.
    """
    spath = os.fspath(path)
    cap = max_image_pixels(max_pixels)
    try:
        st = os.stat(spath)
    except FileNotFoundError:
        raise ImageError(f"{spath}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{spath}: cannot read file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{spath}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{spath}: not a regular file (a pipe, socket or device); give an image file")
    if st.st_size == 0:
        raise ImageError(f"{spath}: empty file (0 bytes)")
    if st.st_size > max(cap * _FILE_BYTES_PER_PIXEL, 1 << 26):
        raise ImageError(f"{spath}: file of {st.st_size:,} bytes is too large for an image of at most "
                         f"{cap:,} pixels (raise the limit with max_pixels= / --max-pixels)")
    try:
        data = np.fromfile(spath, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{spath}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError(f"{spath}: empty file (0 bytes)")
    declared = header_size(data[:65536].tobytes())
    if declared is not None:
        _check_pixels(spath, declared[0], declared[1], cap, "header declares")
    try:
        decoded = cv2.imdecode(data, _IMREAD_FLAGS)
    except cv2.error as exc:  # e.g. OpenCV's own size limit, or a decoder failing mid-stream
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"{spath}: cannot decode image data ({data.size} bytes): {reason}") from None
    if decoded is None or decoded.size == 0:
        raise ImageError(
            f"{spath}: cannot decode image data ({data.size} bytes; not an image, truncated, "
            "or a format this OpenCV build does not support)"
        )
    _check_pixels(spath, decoded.shape[1], decoded.shape[0], cap, "decodes to")
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
    # BGR(A) -> RGB by one gather of the channels (numpy's copy of a reversed channel axis moved
    # the bytes one at a time: 2.4 -> 0.45 ms for a 768x576 photo).  Not cv2.cvtColor, 0.07 ms:
    # images are also read in forked loader processes, where OpenCV's thread pool, once the
    # parent has used it, can hang (the full test suite's evaluation tests did, after the detection ones).
    a = a[:, :, [2, 1, 0]] if bgr else a[:, :, :3]
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


def _sample_positions(n_in: int, n_out: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer source index and float32 fraction for the output positions ``idx``.

    darknet uses "align corners" scale ``(n_in-1)/(n_out-1)`` computed in float, and position
    ``s = k*scale`` in float32; ``i = (int)s`` and ``d = s - i`` in float32. Reproducing the float32
    rounding matters: for some sizes ``(n_out-1)*scale`` lands just below ``n_in-1`` (the last-row
    quirk of :func:`darknet_resize`). Only the requested positions are computed, so a window of a
    huge virtual output (``resize_min`` of a 1 x 60000 image) costs only the window.
    """
    if n_out == 1:
        # darknet would compute 0*inf = NaN here (undefined behaviour); we sample index 0.
        return np.zeros(len(idx), dtype=np.int64), np.zeros(len(idx), dtype=np.float32)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    s = idx.astype(np.float32) * scale
    i = s.astype(np.int64)  # truncation == floor for s >= 0
    d = s - i.astype(np.float32)
    return i, d


def _as_float(a: np.ndarray) -> np.ndarray:
    """Pixels as float32: bytes become byte/255 (exactly :func:`to_chw_float`'s value)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.float32, copy=False)


def _resize_columns(rows_hwc: np.ndarray, out_w: int, cols: np.ndarray) -> np.ndarray:
    """Pass 1 of resize_image, along x, at output columns ``cols`` of the source rows ``rows_hwc``
    (``n x W x C``): an ``n x (len(cols)*C)`` float32 buffer, pixel after pixel.

    The last output column (or every column when the source has width 1) is a plain copy of the
    last source column; the others blend columns i and i+1 as ``(1-d)*a + d*b`` in float32.
    ``rows_hwc`` may be uint8 (converted after the gather, so only ``len(cols)`` columns ever
    become float) or float32.  Whole pixels are gathered with ``np.take`` (2x faster than fancy
    indexing) and the arithmetic runs on rows of ``len(cols)*C`` values (long inner loops).
    """
    n, w_in, c = rows_hwc.shape
    if w_in == 1:
        return np.repeat(_as_float(rows_hwc[:, :1, :]), len(cols), axis=1).reshape(n, -1)
    i, d = _sample_positions(w_in, out_w, cols)
    i1 = np.minimum(i + 1, w_in - 1)
    one = np.float32(1.0)
    out = np.repeat(one - d, c) * _as_float(np.take(rows_hwc, i, axis=1).reshape(n, -1)) \
        + np.repeat(d, c) * _as_float(np.take(rows_hwc, i1, axis=1).reshape(n, -1))
    last = cols == out_w - 1
    if last.any():
        out.reshape(n, len(cols), c)[:, last, :] = _as_float(rows_hwc[:, w_in - 1:w_in, :])
    return out.astype(np.float32, copy=False)


def _resize_window(src: np.ndarray, out_w: int, out_h: int, cols: Optional[np.ndarray] = None,
                   rows: Optional[np.ndarray] = None) -> np.ndarray:
    """darknet ``resize_image`` of a ``C x H x W`` array evaluated only at output ``rows`` x
    ``cols`` (default: all); a ``C x len(rows) x len(cols)`` float32 result (contiguous from the
    native pass, :func:`darkcfg.native.resize_u8`, for uint8 images; else a transposed view).

    Pass 2 (along y): every row gets ``(1-d)*tmp[i]``; all rows except the last one (and none when
    the source has height 1) then get ``+ d*tmp[i+1]`` as a separate float32 add (darknet stores
    then adds). No copy of the last source row here -- hence the quirk: when ``(out_h-1)*scale``
    rounds to just below ``H-1``, the last row is ``(1-d)*tmp[H-2]`` with ``d ~ 1``, nearly black.

    Pass 1 is computed only for the source rows pass 2 reads, and uint8 sources are converted to
    float only after both gathers, so memory is O(output), whatever the input size. Every output
    value is computed by the same float32 operations as the full two-pass resize.  The work runs
    on the source's H x W x C view: a decoded image (the usual source) is H x W x 3 in memory,
    and its ``C x H x W`` view (:func:`_chw_view`) is just that transposed.
    """
    hwc = src.transpose(1, 2, 0)
    h_in, w_in, c = hwc.shape
    cols = np.arange(out_w) if cols is None else np.asarray(cols, dtype=np.int64)
    rows = np.arange(out_h) if rows is None else np.asarray(rows, dtype=np.int64)
    iy, dy = _sample_positions(h_in, out_h, rows)
    iy1 = np.minimum(iy + 1, h_in - 1)
    add = (rows != out_h - 1) if (h_in > 1 and out_h > 1) else np.zeros(len(rows), dtype=bool)
    if hwc.dtype == np.uint8 and hwc.flags.c_contiguous and len(rows) and len(cols):
        ix, dx = _sample_positions(w_in, out_w, cols)  # (one native pass of the same float32 operations)
        last = (cols == out_w - 1) | (w_in == 1)
        out = np.empty((c, len(rows), len(cols)), dtype=np.float32)
        if native.resize_u8(hwc, (ix, np.minimum(ix + 1, w_in - 1), dx, last), (iy, iy1, dy, add), out):
            return out
    needed = np.unique(np.concatenate([iy, iy1[add]]))
    tmp = _resize_columns(np.take(hwc, needed, axis=0), out_w, cols)
    pos, pos1 = np.searchsorted(needed, iy), np.searchsorted(needed, iy1)
    one = np.float32(1.0)
    out = (one - dy)[:, None] * np.take(tmp, pos, axis=0)
    if add.any():
        out[add] += dy[add][:, None] * np.take(tmp, pos1[add], axis=0)
    return out.astype(np.float32, copy=False).reshape(len(rows), len(cols), c).transpose(2, 0, 1)


def darknet_resize(chw_float: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize a float32 ``CxHxW`` image exactly like darknet's ``resize_image``.

    Align-corners bilinear, horizontal pass then vertical pass, float32 arithmetic, last column
    copied, and the last-row quirk (see :func:`_resize_window`; it hits e.g. 512→448). When the size
    already matches, darknet still goes through the loops but the result is the input, so we
    return a copy. Vectorised: one gather per pass, no per-pixel Python loops.

    >>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    >>> darknet_resize(x, 7, 1)[0, 0].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    """
    src = np.asarray(chw_float, dtype=np.float32)
    if src.ndim != 3:
        raise ImageError(f"darknet_resize expects a CxHxW array, got shape {src.shape}")
    if out_w < 1 or out_h < 1:
        raise ImageError(f"darknet_resize: invalid output size {out_w}x{out_h}")
    _, h_in, w_in = src.shape
    if (w_in, h_in) == (out_w, out_h):
        return src.copy()
    return np.ascontiguousarray(_resize_window(src, out_w, out_h))


def _resize_any(src: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """:func:`darknet_resize` for a uint8 or float32 CxHxW source; float32 out."""
    _, h_in, w_in = src.shape
    if (w_in, h_in) == (out_w, out_h):
        return _as_float(src).copy()
    return _resize_window(src, out_w, out_h)


# --------------------------------------------------------------------------------------------
# letterbox (image.c letterbox_image) and the full preprocessing
# --------------------------------------------------------------------------------------------


def letterbox_size(img_w: int, img_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Size the image is resized to inside the letterbox (letterbox_image / correct_yolo_boxes).

    The axis with the smaller float ratio ``net/img`` is filled; the other side is scaled with
    C integer arithmetic ``(img_other * net) / img`` (truncating). The one place this is computed:
    preprocessing and box correction must agree. A side that would truncate to 0 (a 1 x 4000
    image in a 320 x 320 letterbox) is kept at 1 pixel; Darknet would resize to an empty image.
    """
    if np.float32(net_w) / np.float32(img_w) < np.float32(net_h) / np.float32(img_h):
        return net_w, max(1, (img_h * net_w) // img_w)
    return max(1, (img_w * net_h) // img_h), net_h


def _letterbox_any(src: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    c, h, w = src.shape
    new_w, new_h = letterbox_size(w, h, net_w, net_h)
    resized = _resize_any(src, new_w, new_h)
    canvas = np.full((c, net_h, net_w), _LETTERBOX_FILL, dtype=np.float32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2
    canvas[:, dy : dy + new_h, dx : dx + new_w] = resized
    return canvas


def letterbox(chw_float: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """darknet ``letterbox_image``: resize keeping aspect, paste on a 0.5-grey canvas.

    The resized image is placed at the *integer* offset ``((net_w-new_w)//2, (net_h-new_h)//2)``
    (box correction uses the fractional offset; see detect.correct_boxes).
    """
    return _letterbox_any(np.asarray(chw_float, dtype=np.float32), net_w, net_h)


def _chw_view(img_rgb_uint8: np.ndarray) -> np.ndarray:
    """A 3xHxW *view* of an HxWx3 uint8 image (no copy, no float conversion yet)."""
    a = np.asarray(img_rgb_uint8)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 image, got shape {a.shape} dtype {a.dtype}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"image has zero size {a.shape}")
    return a.transpose(2, 0, 1)


def preprocess(img_rgb_uint8: np.ndarray, net_w: int, net_h: int, letterbox: bool = False) -> torch.Tensor:
    """RGB uint8 image → ``1x3xHxW`` float32 tensor, as ``test_detector`` feeds ``network_predict``.

    Stretch (``resize_image``) by default, ``letterbox_image`` when ``letterbox`` is true
    (``-letter_box`` or ``[net] letter_box=1``). No mean/std normalisation. The bytes are
    resized first and become floats only at network size (same values as converting first),
    so a large photo never gets a full-resolution float copy.
    """
    src = _chw_view(img_rgb_uint8)
    net_in = _letterbox_any(src, net_w, net_h) if letterbox else _resize_any(src, net_w, net_h)
    return torch.from_numpy(np.ascontiguousarray(net_in)).unsqueeze(0)


def resize_min_size(w: int, h: int, size: int) -> tuple[int, int]:
    """darknet ``resize_min``'s target: the shorter side becomes ``size``, the other
    ``(other*size)/short`` in C integer arithmetic."""
    return (size, (h * size) // w) if w < h else ((w * size) // h, size)


def resize_min(chw_float: np.ndarray, size: int) -> np.ndarray:
    """darknet ``resize_min``: the shorter side becomes ``size``, the other ``(other*size)/short``
    (C integer arithmetic), with darknet's bilinear; a no-op when nothing changes."""
    _, h, w = chw_float.shape
    new_w, new_h = resize_min_size(w, h, size)
    return chw_float if (new_w, new_h) == (w, h) else darknet_resize(chw_float, new_w, new_h)


def crop_clamped(chw_float: np.ndarray, dx: int, dy: int, w: int, h: int) -> np.ndarray:
    """darknet ``crop_image``: a ``w x h`` window at (dx, dy); outside pixels repeat the edge."""
    _, src_h, src_w = chw_float.shape
    rows = np.clip(np.arange(h) + dy, 0, src_h - 1)
    cols = np.clip(np.arange(w) + dx, 0, src_w - 1)
    return chw_float[:, rows[:, None], cols[None, :]]


def classifier_preprocess(img_rgb_uint8: np.ndarray, net_w: int, net_h: int) -> torch.Tensor:
    """RGB uint8 image -> ``1x3xHxW`` tensor as ``darknet classifier predict`` feeds the network:
    ``resize_min`` to ``net_w``, then a centre crop at ``((W'-net_w)/2, (H'-net_h)/2)``.

    Only the crop window of the resized image is computed (same values): ``resize_min`` of a
    1 x 60000 strip would otherwise be a 224 x 13,440,000 float image.
    """
    src = _chw_view(img_rgb_uint8)
    _, h, w = src.shape
    new_w, new_h = resize_min_size(w, h, net_w)
    rows = np.clip(np.arange(net_h) + (new_h - net_h) // 2, 0, new_h - 1)
    cols = np.clip(np.arange(net_w) + (new_w - net_w) // 2, 0, new_w - 1)
    if (new_w, new_h) == (w, h):
        crop = _as_float(src[:, rows[:, None], cols[None, :]])
    else:
        crop = _resize_window(src, new_w, new_h, cols, rows)
    return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).unsqueeze(0)
