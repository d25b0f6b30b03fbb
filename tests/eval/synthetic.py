"""A learnable synthetic image–caption task: coloured shapes on noisy backgrounds, captioned in words.

Used by the eval tests to train a tiny CLIP in seconds and check that zero-shot classification
(through the real eval code) finds what the model learned.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
CAPTION_FORMS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a small {} on a background.")


def shape_image(colour: str, shape: str, rng: random.Random, size: int = 32) -> Image.Image:
    """One ``size``² image: a grey noisy background and a shape of random size and position."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    bg = nrng.integers(90, 170, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
    fill = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def samples(n: int, seed: int) -> list[tuple[Image.Image, int]]:
    """``n`` (image, class id) pairs, classes cycling so every class is equally frequent."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % len(CLASSES)
        colour, shape = CLASSES[label].split(" ")
        out.append((shape_image(colour, shape, rng), label))
    return out


def caption(label: int, rng: random.Random) -> str:
    """A caption of class ``label`` in one of several phrasings (so prompts at eval time are not copies)."""
    return rng.choice(CAPTION_FORMS).format(CLASSES[label])


def write_folder_evalset(root: Path, items: list[tuple[Image.Image, int]]) -> Path:
    """Write ``items`` as an image-folder eval set ``<root>/<class>/<i>.png`` (class folders sorted = class ids)."""
    for i, (img, label) in enumerate(items):
        d = root / f"{label:02d}_{CLASSES[label].replace(' ', '_')}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:05d}.png")
    return root
