"""Hostile and extreme images: bombs, odd shapes, FIFOs; memory stays bounded and every failure is an ImageError.

Each test reproduces a failure of issue 11 §1 (a raw cv2.error, 'invalid output size 0x320', a
multi-gigabyte float copy, a FIFO read that never returns).
"""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from darkcfg.errors import ImageError
from darkcfg.image import (DEFAULT_MAX_PIXELS, classifier_preprocess, crop_clamped, darknet_resize, letterbox,
                           letterbox_size, load_image, preprocess, resize_min, to_chw_float)
from darkcfg.image_header import header_size


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A tiny PNG whose header declares ``width x height`` RGB pixels (the data is a stub)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) \
        + _chunk(b"IEND", b"")
    path.write_bytes(blob)
    return path


def test_png_bomb_is_an_image_error_before_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb\.png.*50000 x 50000.*limit"):
        load_image(bomb)
    assert time.perf_counter() - t0 < 1.0
    # above OpenCV's own limit too: its cv2.error must still come out as an ImageError naming the file
    with pytest.raises(ImageError, match=r"bomb\.png"):
        load_image(bomb, max_pixels=10**10)


def test_pixel_cap_is_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), np.zeros((100, 50, 3), np.uint8))
    assert load_image(path, max_pixels=5000).shape == (100, 50, 3)
    with pytest.raises(ImageError, match="5,000 pixels, above the limit of 4,999"):
        load_image(path, max_pixels=4999)
    monkeypatch.setenv("DARKCFG_MAX_IMAGE_PIXELS", "4999")
    with pytest.raises(ImageError, match="limit of 4,999"):
        load_image(path)
    assert DEFAULT_MAX_PIXELS == 1 << 28


def test_decoded_size_is_checked_when_the_header_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), np.zeros((100, 50, 3), np.uint8))
    monkeypatch.setattr("darkcfg.image.header_size", lambda data: None)
    with pytest.raises(ImageError, match="decodes to 50 x 100"):
        load_image(path, max_pixels=4999)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm"])
def test_header_size_matches_the_encoder(ext: str) -> None:
    img = np.random.default_rng(0).integers(0, 255, (37, 91, 3), dtype=np.uint8)
    if ext == ".pgm":
        img = img[:, :, 0]
    ok, buf = cv2.imencode(ext, img)
    assert ok
    assert header_size(buf.tobytes()) == (91, 37)


def test_header_size_of_unknown_or_cut_data() -> None:
    assert header_size(b"") is None
    assert header_size(b"hello world") is None
    assert header_size(b"\x89PNG\r\n\x1a\n\x00\x00") is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)  # before the fix: blocked forever in np.fromfile


def test_thin_image_letterbox_never_rounds_to_zero() -> None:
    assert letterbox_size(1, 4000, 320, 320) == (1, 320)
    assert letterbox_size(4000, 1, 320, 320) == (320, 1)
    img = np.full((4000, 1, 3), 200, np.uint8)
    x = preprocess(img, 320, 320, letterbox=True)  # was: ValueError invalid output size 0x320
    assert x.shape == (1, 3, 320, 320)
    assert np.allclose(x[0, :, :, 159].numpy(), 200 / 255) and float(x[0, 0, 0, 0]) == 0.5


def test_correct_boxes_uses_the_same_letterbox_size() -> None:
    import torch

    from darkcfg.detect import correct_boxes

    # a box covering the pasted strip exactly maps back onto the whole thin image
    new_w, new_h = letterbox_size(1, 4000, 320, 320)
    box = torch.tensor([[0.5, 0.5, new_w / 320, new_h / 320]])
    out = correct_boxes(box, 1, 4000, 320, 320, letterbox=True)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5, 1.0, 1.0]]), atol=1e-6)


SIZES = [((37, 91), (64, 48)), ((512, 512), (448, 448)), ((5, 300), (320, 320)), ((300, 7), (32, 96)),
         ((1, 1), (16, 16)), ((48, 64), (64, 48))]


@pytest.mark.parametrize("shape,net", SIZES)
def test_bytes_first_preprocess_equals_float_first(shape: tuple[int, int], net: tuple[int, int]) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    chw = to_chw_float(img)
    stretched = preprocess(img, *net).numpy()[0]
    assert np.array_equal(stretched, darknet_resize(chw, *net))
    boxed = preprocess(img, *net, letterbox=True).numpy()[0]
    assert np.array_equal(boxed, letterbox(chw, *net))


@pytest.mark.parametrize("shape,net", [((37, 91), (32, 32)), ((300, 7), (24, 24)), ((9, 2000), (16, 16)),
                                        ((64, 64), (64, 64)), ((50, 40), (32, 48))])
def test_classifier_window_equals_full_resize_then_crop(shape: tuple[int, int], net: tuple[int, int]) -> None:
    img = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    full = resize_min(to_chw_float(img), net[0])
    _, h, w = full.shape
    expected = crop_clamped(full, (w - net[0]) // 2, (h - net[1]) // 2, *net)
    assert np.array_equal(classifier_preprocess(img, *net).numpy()[0], expected)


def _peak_bytes(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preprocess_never_makes_a_full_resolution_float_copy() -> None:
    img = np.zeros((3000, 4000, 3), np.uint8)  # 36 MB uint8; a float copy would be 144 MB
    peak = _peak_bytes(lambda: preprocess(img, 320, 320))
    assert peak < 25e6, peak
    peak = _peak_bytes(lambda: preprocess(img, 320, 320, letterbox=True))
    assert peak < 25e6, peak


def test_resize_min_of_a_strip_stays_small() -> None:
    strip = np.full((60000, 1, 3), 90, np.uint8)  # resize_min to 224 would be 224 x 13,440,000 floats
    out: list = []
    peak = _peak_bytes(lambda: out.append(classifier_preprocess(strip, 224, 224)))
    assert peak < 10e6, peak
    assert out[0].shape == (1, 3, 224, 224) and float(out[0].max()) == pytest.approx(90 / 255)
