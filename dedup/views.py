"""Views of an image that are hashed besides the plain pHash, and their 32×32 thumbnails.

A *view* is a box of the decoded grayscale image, resized to 32×32 and hashed like pHash:

* ``phash``: the whole image (imagehash-identical);
* ``trim``: the image without uniform borders (letterbox bars, mats, padding); equals ``phash``
  when there is no border;
* ``square`` (evaluation images only): the centre square of the trimmed image — what
  img2dataset's ``center_crop`` resize mode (webclip's download default) keeps of a non-square image;
* ``zoomKK_xy`` (evaluation images only): a crop keeping KK % of each side of the trimmed image,
  placed at anchor ``x``, ``y`` ∈ {0, 1, 2} (left/top, centre, right/bottom) — with one anchor per
  axis the name is just ``zoomKK`` (centre).

Training images are the huge side, so they get two views only (``phash``, ``trim``). The extra views
go on the evaluation side (10^4–10^5 images): a training image that is a crop of an eval image
meets one of the eval image's crop views at about the same scale and position (a 10 % crop with 3
anchors leaves at most 2.5 % of the side, under 1 px at 32×32, of misalignment), and the view that
matched tells the verification step how the two images align.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dedup.phash import THUMB, thumb

MIN_TRIM_SIDE = 8  # images smaller than this are never trimmed


@dataclass(frozen=True)
class View:
    """A box relative to the trimmed image: ``keep`` of each side (``square``: of the longer side only,
    down to the shorter one), anchored at (``ax``, ``ay``) ∈ [0, 1]²."""

    name: str
    keep: float = 1.0
    ax: float = 0.5
    ay: float = 0.5
    trimmed: bool = True  # relative to the trimmed box; False only for the plain ``phash`` view
    square: bool = False


PHASH = View("phash", trimmed=False)
TRIM = View("trim")
SQUARE = View("square", square=True)
TRAIN_VIEWS: tuple[View, ...] = (PHASH, TRIM)
#: Views that coincide with the plain one for many images (no border, a square image); the search
#: skips them where their hash equals the plain hash, they would only repeat its pairs.
OFTEN_PLAIN = frozenset({"trim", "square"})


def eval_views(zooms: tuple[float, ...], anchors: int, square: bool = True) -> tuple[View, ...]:
    """``phash``, ``trim``, ``square`` and, per zoom, ``anchors``×``anchors`` crops (``anchors`` 1: centre only)."""
    if anchors < 1:
        raise ValueError("anchors must be >= 1")
    out = [PHASH, TRIM, SQUARE] if square else [PHASH, TRIM]
    pos = [0.5] if anchors == 1 else [i / (anchors - 1) for i in range(anchors)]
    for z in zooms:
        if not 0 < z < 1:
            raise ValueError(f"zoom {z} must be in (0, 1)")
        tag = f"zoom{round(z * 100)}"
        for iy, ay in enumerate(pos):
            for ix, ax in enumerate(pos):
                out.append(View(tag if anchors == 1 else f"{tag}_{ix}{iy}", z, ax, ay))
    return tuple(out)


def trim_boxes(grays: np.ndarray, tol: int = 16, min_frac: float = 0.98, max_trim: float = 0.3) -> np.ndarray:
    """Boxes ``(left, top, right, bottom)`` without uniform borders of a stack ``(B, H, W)`` of uint8 images.

    A border row/column is one where at least ``min_frac`` of its pixels lie within ``tol`` grey
    levels of that side's border colour (the median of its outermost line); counted from the outside
    in. A side that is "border" all the way to ``max_trim`` of the image is content (sky, a blank
    page), not a border, and is left alone. JPEG ringing at a border edge stays within ``tol``.
    Vectorised over the stack: a few NumPy calls per side for the whole batch.
    """
    grays = np.asarray(grays)
    b, h, w = grays.shape
    boxes = np.zeros((b, 4), np.int64)
    boxes[:, 2], boxes[:, 3] = w, h
    if b == 0 or min(h, w) < MIN_TRIM_SIDE:
        return boxes
    kh, kw = max(1, int(h * max_trim)), max(1, int(w * max_trim))
    # Each side as (B, k, n): k lines from the outside in, n pixels per line.
    sides = (
        grays[:, :kh, :],
        grays[:, ::-1, :][:, :kh, :],
        grays[:, :, :kw].transpose(0, 2, 1),
        grays[:, :, ::-1][:, :, :kw].transpose(0, 2, 1),
    )
    runs = []
    for lines in sides:
        ref = np.median(lines[:, 0, :], axis=1).astype(np.int16)[:, None, None]
        near = np.abs(lines.astype(np.int16) - ref) <= tol
        ok = near.sum(axis=2) >= min_frac * lines.shape[2]  # (B, k): line is border-coloured
        run = np.where(ok.all(axis=1), 0, np.argmin(ok, axis=1))  # all k lines uniform: content
        runs.append(run)
    top, bottom, left, right = runs
    boxes[:, 0], boxes[:, 1] = left, top
    boxes[:, 2], boxes[:, 3] = w - right, h - bottom
    return boxes


def view_box(view: View, trim: tuple[int, ...], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The view's box in pixels of an image of ``size`` (w, h) whose trimmed box is ``trim``."""
    left, top, right, bottom = trim if view.trimmed else (0, 0, *size)
    w, h = right - left, bottom - top
    cw, ch = (min(w, h), min(w, h)) if view.square else (w * view.keep, h * view.keep)
    x0, y0 = left + (w - cw) * view.ax, top + (h - ch) * view.ay
    return (x0, y0, x0 + cw, y0 + ch)


def box_thumb(gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """32×32 LANCZOS thumbnail of the (sub-pixel) ``box`` of ``gray``, seeing no pixel outside the box.

    The enclosing whole-pixel region is cut out first, so nothing outside it (a trimmed border, the
    content a crop removed) leaks in through the filter's support; the fractional remainder goes to
    Pillow's ``box`` argument. A whole-image box is exactly imagehash's resize.
    """
    h, w = gray.shape
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return thumb(gray)
    left, top = max(math.floor(x0), 0), max(math.floor(y0), 0)
    right = min(max(math.ceil(x1 - 1e-9), left + 1), w)
    bottom = min(max(math.ceil(y1 - 1e-9), top + 1), h)
    sub = Image.fromarray(np.ascontiguousarray(gray[top:bottom, left:right]))
    inner = (x0 - left, y0 - top, x1 - left, y1 - top)
    if inner == (0, 0, right - left, bottom - top):  # whole pixels: plain resize of the cut-out
        out = sub.resize((THUMB, THUMB), Image.LANCZOS)
    else:
        inner = (
            max(inner[0], 0.0),
            max(inner[1], 0.0),
            min(inner[2], right - left),
            min(inner[3], bottom - top),
        )
        out = sub.resize((THUMB, THUMB), Image.LANCZOS, box=inner)
    return np.frombuffer(out.tobytes(), np.uint8).reshape(THUMB, THUMB)


def image_view_thumbs(gray: np.ndarray, views: tuple[View, ...], trim: tuple[int, ...]) -> np.ndarray:
    """Thumbnails ``(V, 32, 32)`` of every view of one decoded grayscale image."""
    size = (gray.shape[1], gray.shape[0])
    full = (0, 0, *size)
    out = np.empty((len(views), THUMB, THUMB), np.uint8)
    plain = None
    for i, v in enumerate(views):
        box = view_box(v, trim, size)
        if box == full:
            plain = thumb(gray) if plain is None else plain
            out[i] = plain
        else:
            out[i] = box_thumb(gray, box)
    return out


def train_thumbs(grays: list[np.ndarray], tol: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``phash`` and ``trim`` thumbnails ``(B, 32, 32)`` of decoded training images, and ``trimmed`` (B,).

    Images are grouped by shape so the border search runs once per group (a shard of 256-px images
    decoded at 1/8 is one group of 32×32 arrays, whose ``phash`` thumbnail is the array itself).
    """
    n = len(grays)
    plain = np.empty((n, THUMB, THUMB), np.uint8)
    trimmed_thumbs = np.empty((n, THUMB, THUMB), np.uint8)
    trimmed = np.zeros(n, bool)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grays):
        groups.setdefault(g.shape, []).append(i)
    for (h, w), idx in groups.items():
        stack = np.stack([grays[i] for i in idx])
        boxes = trim_boxes(stack, tol)
        if (h, w) == (THUMB, THUMB):
            plain[idx] = stack
        else:
            for i in idx:
                plain[i] = thumb(grays[i])
        full = (boxes == np.array([0, 0, w, h])).all(axis=1)
        for j, i in enumerate(idx):
            if full[j]:
                trimmed_thumbs[i] = plain[i]
            else:
                trimmed[i] = True
                trimmed_thumbs[i] = box_thumb(grays[i], tuple(float(x) for x in boxes[j]))
    return plain, trimmed_thumbs, trimmed
