"""Image transforms in Pillow/NumPy: random resized crop for training, resize + centre crop for eval.

Both return ``FloatTensor[3, size, size]`` normalised with CLIP's mean/std.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN = np.array(CLIP_MEAN, dtype=np.float32)
_STD = np.array(CLIP_STD, dtype=np.float32)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> normalised ``FloatTensor[3, H, W]``."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _rgb(img: Image.Image) -> Image.Image:
    # palette/alpha images: composite onto white so transparent regions are not black noise
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def random_resized_crop_box(
    width: int, height: int, rng: random.Random, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    # fallback: the central crop with the closest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(
    size: int, scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> Callable[..., torch.Tensor]:
    """Random resized crop to ``size`` (bicubic), CLIP normalisation.

    The returned callable takes ``(img, rng=None)``; pass a seeded ``random.Random`` for a crop that
    is reproducible per sample (the loader seeds it from the run seed, epoch and sample key).
    """

    def apply(img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        img = _rgb(img)
        box = random_resized_crop_box(img.width, img.height, rng or random.Random(), scale, ratio)
        return to_tensor(img.resize((size, size), Image.BICUBIC, box=box))

    return apply


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shortest side to ``size`` (bicubic), centre crop ``size``², CLIP normalisation."""

    def apply(img: Image.Image) -> torch.Tensor:
        img = _rgb(img)
        w, h = img.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return to_tensor(img.crop((left, top, left + size, top + size)))

    return apply
