"""The copies people make of a photo (issue 18's list), for the dedup tests: each as published bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from dedup.views import fill_keep


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def crop(img: Image.Image, frac: float, fx: float, fy: float) -> Image.Image:
    """Remove ``frac`` of each side's length, ``fx``/``fy`` of it from the left/top end."""
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    left, top = round(dx * fx), round(dy * fy)
    return img.crop((left, top, w - (dx - left), h - (dy - top)))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def caption(img: Image.Image) -> Image.Image:
    out = img.copy()
    size = max(10, img.height // 11)
    ImageDraw.Draw(out).text(
        (img.width // 20, img.height - int(size * 1.6)),
        "when the weekend finally arrives",
        font=_font(size),
        fill="white",
        stroke_width=max(1, size // 12),
        stroke_fill="black",
    )
    return out


def canvas(img: Image.Image, colour: tuple[int, int, int], at: tuple[float, float]) -> Image.Image:
    """``img`` covering 70 % of each side of a plain canvas, at relative position ``at``."""
    w, h = img.size
    cw, ch = round(w / 0.7), round(h / 0.7)
    out = Image.new("RGB", (cw, ch), colour)
    out.paste(img, (round((cw - w) * at[0]), round((ch - h) * at[1])))
    return out


def copies(data: bytes, i: int) -> dict[str, bytes]:
    """Every copy kind of one photo; ``i`` varies the offsets and colours from photo to photo."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    corner = (float(i % 2), float((i // 2) % 2))
    sign = 1 if i % 2 else -1
    k = fill_keep(5, w, h)
    rotated = img.rotate(5 * sign, Image.BICUBIC)
    return {
        "exact": data,
        "resize 0.5": jpeg(img.resize((w // 2, h // 2), Image.BICUBIC)),
        "jpeg q30": jpeg(img, 30),
        "grayscale": jpeg(img.convert("L")),
        "brightness +20%": jpeg(ImageEnhance.Brightness(img).enhance(1.2)),
        "contrast -20%": jpeg(ImageEnhance.Contrast(img).enhance(0.8)),
        "crop 5% off-centre": jpeg(crop(img, 0.05, *corner)),
        "crop 10% anywhere": jpeg(crop(img, 0.10, (i * 0.37) % 1, (i * 0.61) % 1)),
        "border 5%": jpeg(ImageOps.expand(img, border=round(max(w, h) * 0.05), fill=(255, 255, 255))),
        "caption": jpeg(caption(img)),
        "hflip": jpeg(ImageOps.mirror(img)),
        "rotate 5 in place": jpeg(rotated),
        "rotate 5 crop-fill": jpeg(crop(rotated, 1 - k, 0.5, 0.5).resize((w, h), Image.BICUBIC)),
        "squash 0.75": jpeg(img.resize((round(w * 0.75), h), Image.BICUBIC)),
        "canvas 70%": jpeg(canvas(img, (255, 255, 255) if i % 2 else (20, 20, 20), corner)),
    }


def random_photo_ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)
