"""Pixels as a person sees them, before img2dataset's resizer decodes the bytes.

img2dataset's ``Resizer`` decodes with ``cv2.imdecode(..., IMREAD_UNCHANGED)``, which

* keeps 16 bits per channel (any 16-bit PNG or TIFF), and its alpha matting and JPEG encoder then
  saturate every value to 255: the stored image is all white;
* ignores the EXIF orientation tag (``IMREAD_UNCHANGED`` turns it off): a portrait photo taken with
  the camera on its side is stored lying down.

:func:`normalized` finds those images from the header alone (no decode for the others, so the common
case costs one header parse) and re-expresses them as an 8-bit, upright, uncompressed PPM/PGM that
the resizer decodes as it should. :class:`NormalizingResizer` wraps the resizer with it; the stream
img2dataset hashes (``sha256``) is left as downloaded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps

ORIENTATION = 0x0112
#: Pillow modes that are not 8 bits per channel (cv2 keeps the depth, the resizer saturates it).
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def _is_wide(img: Image.Image, data: bytes) -> bool:
    """More than 8 bits per channel as OpenCV would decode it."""
    if img.mode in _WIDE_MODES:
        return True
    if img.format == "PNG":
        return len(data) > 24 and data[24] == 16  # IHDR bit depth (Pillow shows 16-bit RGB as "RGB")
    if img.format == "TIFF":
        return any("16" in str(t[3]) or "32" in str(t[3]) for t in img.tile)
    return False


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not a broken image: leave it as it is
        return 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit L or RGB; alpha composited onto white as img2dataset's resizer does."""
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img)
        if img.mode == "F":
            arr = arr * 255.0 if float(np.nanmax(arr, initial=0)) <= 1.0 else arr
            return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L")
        # 16-bit samples (I;16*, or I holding them): keep the high byte
        return Image.fromarray((np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("L") if img.mode in ("1", "L") else img.convert("RGB")


def normalized(data: bytes, exif_transpose: bool = True) -> bytes | None:
    """An 8-bit upright PPM/PGM of ``data`` when the resizer would get it wrong, else None (use as is)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            wide = _is_wide(img, data)
            turn = exif_transpose and _orientation(img) not in (0, 1)
            if not (wide or turn):
                return None
            img.load()
            if turn:
                img = ImageOps.exif_transpose(img)
            out = _to_8bit(img)
    except Exception:  # what Pillow cannot read, the resizer reports as a decode error
        return None
    buf = io.BytesIO()
    out.save(buf, "PPM")  # PGM for L; uncompressed: cheap to write and to decode
    return buf.getvalue()


class NormalizingResizer:
    """img2dataset's resizer, fed :func:`normalized` pixels; same call signature and results."""

    def __init__(self, resizer: Any, exif_transpose: bool = True):
        self.resizer = resizer
        self.exif_transpose = exif_transpose

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> Any:
        img_stream.seek(0)
        fixed = normalized(img_stream.read(), self.exif_transpose)
        img_stream.seek(0)
        return self.resizer(io.BytesIO(fixed) if fixed is not None else img_stream, blurring_bbox_list)
