"""Any decoded Pillow image as the 8-bit RGB that models and hashes take, one rule for every stage.

Pillow's own ``convert("RGB")`` clips 16-bit grayscale (``I;16``, ``I``) at 255, so a 16-bit PNG
comes out nearly white; and it drops alpha onto black, so transparent logo backgrounds become black
noise. Here 16-bit values are scaled to 8 bits and transparency is composited onto white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_ALPHA_MODES = ("RGBA", "LA", "P", "PA", "RGBa", "La")


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer grayscale scaled to mode ``L`` (value / 257, rounded); others unchanged."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # "I" is how Pillow holds 16-bit PNG grayscale too; its values are 0..65535 there
        values = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: 16-bit scaled, not clipped; alpha composited onto white."""
    if img.mode == "RGB":
        return img
    img = to_8bit(img)
    if img.mode in _ALPHA_MODES:  # (a palette image without transparency composites to itself)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
