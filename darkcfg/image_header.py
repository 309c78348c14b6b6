"""Image dimensions read from a file's header, before any pixel is decoded.

Why: a few hundred bytes of PNG can declare 50000 x 50000 pixels, and decoding it first would
cost gigabytes (or an OpenCV exception) before we could refuse it. Reading width and height
from the header lets :func:`darkcfg.image.load_image` refuse an image bomb for free. Formats
not recognised here (JPEG 2000, OpenEXR, ...) return ``None``; the loader then checks the
decoded size instead.
"""

from __future__ import annotations

import re
import struct
from typing import Optional

Size = tuple[int, int]  # (width, height)

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def header_size(data: bytes) -> Optional[Size]:
    """(width, height) declared by the header of PNG, JPEG, GIF, BMP, WebP, TIFF or PNM data;
    ``None`` for other formats or when the header is cut short."""
    try:
        for sniff in (_png, _jpeg, _gif, _bmp, _webp, _tiff, _pnm):
            size = sniff(data)
            if size is not None:
                return size
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(d: bytes) -> Optional[Size]:
    if d[:8] != b"\x89PNG\r\n\x1a\n" or d[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", d[16:24])
    return w, h


def _jpeg(d: bytes) -> Optional[Size]:
    if d[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(d):
        if d[pos] != 0xFF:
            pos += 1  # stray byte between segments: scan on, as decoders do
            continue
        marker = d[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", d[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", d[pos + 5:pos + 9])
            return w, h
        pos += 2 + length
    return None


def _gif(d: bytes) -> Optional[Size]:
    if d[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    w, h = struct.unpack("<HH", d[6:10])
    return w, h


def _bmp(d: bytes) -> Optional[Size]:
    if d[:2] != b"BM":
        return None
    (dib,) = struct.unpack("<I", d[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", d[18:22])
        return w, h
    w, h = struct.unpack("<ii", d[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _webp(d: bytes) -> Optional[Size]:
    if d[:4] != b"RIFF" or d[8:12] != b"WEBP":
        return None
    chunk = d[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", d[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", d[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        return w, h
    return None


def _tiff(d: bytes) -> Optional[Size]:
    if d[:4] == b"II*\x00":
        end = "<"
    elif d[:4] == b"MM\x00*":
        end = ">"
    else:
        return None
    (ifd,) = struct.unpack(end + "I", d[4:8])
    (count,) = struct.unpack(end + "H", d[ifd:ifd + 2])
    found: dict[int, int] = {}
    for k in range(count):
        entry = d[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        tag, kind = struct.unpack(end + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = "H" if kind == 3 else "I"
            found[tag] = struct.unpack(end + fmt, entry[8:8 + struct.calcsize(fmt)])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_PNM = re.compile(rb"P[1-6](?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)")


def _pnm(d: bytes) -> Optional[Size]:
    m = _PNM.match(d[:1024])
    return (int(m.group(1)), int(m.group(2))) if m else None
