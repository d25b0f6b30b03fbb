"""The one image decoder of dedup: image bytes -> grayscale ``uint8`` array, used for training and eval images alike.

pHash looks at a 32×32 thumbnail, so decoding a 256-px JPEG at full size only to throw most of it
away is wasted work. JPEGs are therefore decoded by libjpeg-turbo straight to grayscale (the luma
channel) at a reduced DCT scale 1/N, N ∈ {1, 2, 4, 8}: the largest N with ``min(w, h) // N >=
min_side``. That is exactly what Pillow's draft mode does (``img.draft("L", (min_side, min_side))``,
then ``convert("L")``); the decode itself goes through OpenCV's ``imdecode`` with the
``IMREAD_REDUCED_GRAYSCALE_N`` flags because it costs about a third less per image than Pillow's
Python-level JPEG plugin (measured in BENCHMARKS.md). Pixel equality with Pillow's draft decode is a
test (``tests/dedup/test_decode.py``). EXIF orientation is ignored, as Pillow (and so ``imagehash``)
ignores it.

JPEGs whose colour model is not luma-based (CMYK/YCCK, 4 components) and every other format (PNG,
WebP, GIF, …) are decoded with Pillow in full and converted with ``convert("L")``: a dispatch on the
file's own header, the same for every caller, never a retry after a failure.

The pHash ``phash`` view is bit-identical to ``imagehash.phash`` applied to the image this module
returns (``Image.fromarray(decode_gray(data))``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pipeline.images import to_8bit

# OpenCV's decode is single-threaded, but keep its pool from spawning threads in Ray workers.
cv2.setNumThreads(1)

_REDUCED = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Start-of-frame markers carrying the image size (SOF0..SOF15 except DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
DEFAULT_MIN_SIDE = 32


class UndecodableImage(ValueError):
    """The bytes are not an image this decoder can read."""


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Size and component count from a JPEG's start-of-frame segment; ``None`` if ``data`` is not a JPEG.

    Walks the marker segments only (a few iterations), never the entropy-coded data.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise UndecodableImage(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if i + 10 > n:
                break
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return JpegHeader(width, height, data[i + 9])
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + length
    raise UndecodableImage("JPEG without a frame header")


def scale_for(width: int, height: int, min_side: int) -> int:
    """The DCT scale denominator N: the largest of 8, 4, 2, 1 with ``min(width, height) // N >= min_side``.

    Pillow's draft mode picks ``scale = min(w // min_side, h // min_side)`` and then the largest
    N <= scale; this is the same rule.
    """
    scale = min(width, height) // max(min_side, 1)
    for n in (8, 4, 2):
        if n <= scale:
            return n
    return 1


def decode_gray(data: bytes, min_side: int = DEFAULT_MIN_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode image bytes to a grayscale ``uint8`` array (H×W); also return the original ``(width, height)``.

    ``min_side``: JPEGs are decoded at the smallest DCT scale keeping at least this many pixels on the
    shorter side (0 or 1: full size). Raises :class:`UndecodableImage` (or Pillow's error) when the
    bytes cannot be decoded.
    """
    if not data:
        raise UndecodableImage("empty image")
    head = jpeg_header(data)
    if head is not None and head.components in (1, 3) and head.width > 0 and head.height > 0:
        n = scale_for(head.width, head.height, min_side) if min_side > 1 else 1
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[n] | cv2.IMREAD_IGNORE_ORIENTATION)
        if gray is None:
            raise UndecodableImage("libjpeg could not decode the JPEG")
        return gray, (head.width, head.height)
    img = Image.open(io.BytesIO(data))
    size = img.size
    if img.format == "JPEG" and min_side > 1:
        img.draft("L", (min_side, min_side))  # CMYK/YCCK JPEGs: DCT scaling still applies
    return np.asarray(to_8bit(img).convert("L")), size  # 16-bit scaled, not clipped
