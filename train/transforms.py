"""Image transforms in Pillow/NumPy/OpenCV: random resized crop for training, resize + centre crop for eval.

Training crops leave the loader as ``uint8`` ``[size, size, 3]`` arrays and are normalised with
CLIP's mean/std on the device (:func:`normalize_images`): a quarter of the bytes through the worker
queue, the pinned copy and the host-to-device copy, and no per-pixel float work on the loader's CPU
(that work was 40 % of a sample's loader time). The eval transform returns the normalised
``FloatTensor[3, size, size]`` directly, computed with the same formula.

The training crop is CLIP's (torchvision ``RandomResizedCrop``, bicubic) made cheaper where that
changes nothing a model can see:

- a JPEG whose crop box is at least twice the output size is decoded at 1/2, 1/4 or 1/8 scale in
  the DCT domain (Pillow's ``draft``), a proper low-pass, before the bicubic resize of the rest;
- a crop that is upscaled or downscaled by less than :data:`OPENCV_MAX_DOWNSCALE` is resized with
  OpenCV's SIMD cubic (3× faster than Pillow's): without antialiasing, which at these factors
  differs from Pillow's antialiased bicubic by less than Pillow's own bilinear/bicubic difference
  (``tests/train/test_data.py`` bounds both shortcuts against Pillow's full-resolution bicubic;
  ``benchmarks/train_loader.py`` measures the speed); larger downscales keep Pillow's antialiased bicubic.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.images import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# below this shrink factor a crop is resized with OpenCV's cubic (no antialiasing needed), above it
# with Pillow's antialiased bicubic
OPENCV_MAX_DOWNSCALE = 1.5
_DCT_SCALES = (8, 4, 2)

cv2.setNumThreads(1)  # one loader worker = one core; OpenCV's own pool would oversubscribe


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: building them per call would copy from pageable host memory every step,
    # and a blocking host-to-GPU copy waits for the GPU (a host sync per step)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` (any device) -> CLIP-normalised contiguous ``float32 [N, 3, H, W]``."""
    mean, std = _mean_std(images.device)
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return ((x - mean) / std).contiguous()


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> normalised ``FloatTensor[3, H, W]`` (the formula of :func:`normalize_images`)."""
    return normalize_images(torch.from_numpy(np.array(to_rgb(img)))[None])[0]


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


def _draft_scale(img: Image.Image, box: tuple[int, int, int, int], size: int) -> int:
    """Decode a JPEG at 1/k scale (k in 8, 4, 2) when the crop keeps at least ``size`` pixels; the k used."""
    if img.format != "JPEG":
        return 1
    shrink = min(box[2] - box[0], box[3] - box[1]) / size
    k = next((k for k in _DCT_SCALES if shrink >= k), 1)
    if k == 1:
        return 1
    width = img.width
    # Pillow applies the largest power of two <= min(width // w, height // h): floor division of the
    # request keeps that at k (a crop this large means the image is at least 2k pixels on each side)
    img.draft("RGB", (img.width // k, img.height // k))
    # libjpeg rounds the scaled size up; the true scale is the power of two it applied
    return 2 ** round(math.log2(width / img.width))


def crop_resize(img: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``box`` of a lazily opened image, resized to ``uint8 [size, size, 3]`` (see module docstring)."""
    k = _draft_scale(img, box, size)
    rgb = to_rgb(img)
    if k == 1 and min(box[2] - box[0], box[3] - box[1]) / size < OPENCV_MAX_DOWNSCALE:
        left, top, right, bottom = box
        region = np.asarray(rgb)[top:bottom, left:right]
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_CUBIC)
    scaled_box = tuple(v / k for v in box)  # fractional after a draft; Pillow resamples sub-pixel
    # reducing_gap: a large non-JPEG is first box-reduced by an integer factor, leaving >= 3x for the
    # bicubic (Pillow: "indistinguishable from fair resampling in most cases"); no-op after a draft
    return np.asarray(rgb.resize((size, size), Image.BICUBIC, box=scaled_box, reducing_gap=3.0))


def train_transform(
    size: int, scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> Callable[..., np.ndarray]:
    """Random resized crop to ``uint8 [size, size, 3]``; normalise on the device with :func:`normalize_images`.

    The returned callable takes ``(img, rng=None)`` where ``img`` may be a lazily opened image (only
    its header read), so a large JPEG can be decoded at reduced scale; pass a seeded
    ``random.Random`` for a crop that is reproducible per sample (the loader seeds it from the run
    seed, epoch and sample key).
    """

    def apply(img: Image.Image, rng: random.Random | None = None) -> np.ndarray:
        box = random_resized_crop_box(img.width, img.height, rng or random.Random(), scale, ratio)
        return crop_resize(img, box, size)

    return apply


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shortest side to ``size`` (bicubic), centre crop ``size``², CLIP normalisation.

    Exactly CLIP's evaluation preprocessing (full decode, Pillow bicubic), so zero-shot figures
    compare with published ones.
    """

    def apply(img: Image.Image) -> torch.Tensor:
        img = to_rgb(img)
        w, h = img.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return to_tensor(img.crop((left, top, left + size, top + size)))

    return apply
