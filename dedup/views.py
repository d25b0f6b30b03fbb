"""Views of an image that are hashed besides the plain pHash, and their 32×32 thumbnails.

A *view* is a box of the decoded grayscale image (optionally mirrored or rotated first), resized to
32×32 and hashed like pHash:

* ``phash``: the whole image (imagehash-identical);
* ``trim``: the content box: the image without real borders (letterbox bars, mats, padding, the
  plain canvas an image was pasted on; :func:`trim_boxes`); equals ``phash`` when there is none;
* ``inner`` (training images): the centre ``INNER_KEEP`` of each side of the content box: what a
  copy rotated in place keeps clear of the corners its rotation filled;
* ``square`` (evaluation images only): the centre square of the full frame — what img2dataset's
  ``center_crop`` keeps of a non-square image (the download default; used for shards hashed from
  the stored image, without original hashes);
* ``flip`` (evaluation images only): the mirrored full frame (a horizontally flipped copy);
* ``rotp5`` / ``rotm5`` (evaluation images only): the frame rotated by +5° / −5° and cropped to the
  largest centred box of its aspect inside the rotated content (a copy straightened and cropped to
  fill); ``rotp5_inner`` / ``rotm5_inner``: the same rotation, centre ``INNER_KEEP`` — what the
  training side's ``inner`` view sees of a copy rotated in place with filled corners;
* ``zoomKK_xy`` (evaluation images only): a crop of the full frame keeping KK % of each side, placed
  at anchor ``x``, ``y`` ∈ {0, 1, 2} (left/top, centre, right/bottom) — with one anchor per axis the
  name is just ``zoomKK`` (centre).

Training images are the huge side, so they get three views only (``phash``, ``trim``, ``inner``);
``trim`` is searched only where it differs from ``phash``. The extra views go on the evaluation side
(10^4–10^5 images): a training image that is a crop of an eval image meets one of the eval image's
crop views at about the same scale and position (a 10 % crop with 3 anchors leaves at most 2.5 % of
the side, under 1 px at 32×32, of misalignment), and the view that matched tells the verification
step how the two images align. Crops, squares, flips and rotations are cut from the *full* frame,
never from the trimmed one, so a border search that errs cannot misalign them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dedup.phash import THUMB, thumb

MIN_TRIM_SIDE = 8  # images smaller than this are never trimmed
INNER_KEEP = 0.8  # inside a ±5° in-place rotation's filled corners for any aspect up to 2:1


@dataclass(frozen=True)
class View:
    """A box ``keep`` of each side (``square``: of the longer side only, down to the shorter one;
    ``fill``: the largest box of the frame's aspect inside the rotated content), anchored at
    (``ax``, ``ay``) ∈ [0, 1]², of the frame mirrored (``flip``) and rotated by ``angle`` degrees
    (counter-clockwise, about the centre, same size), or of the content box (``trimmed``)."""

    name: str
    keep: float = 1.0
    ax: float = 0.5
    ay: float = 0.5
    trimmed: bool = False  # relative to the content box (trim) instead of the full frame
    square: bool = False
    flip: bool = False
    angle: float = 0.0
    fill: bool = False


PHASH = View("phash")
TRIM = View("trim", trimmed=True)
INNER = View("inner", keep=INNER_KEEP, trimmed=True)
SQUARE = View("square", square=True)
FLIP = View("flip", flip=True)
TRAIN_VIEWS: tuple[View, ...] = (PHASH, TRIM, INNER)
#: Views that coincide with the plain one for many images (no border, a square image); the search
#: skips them where their hash equals the plain hash, they would only repeat its pairs.
OFTEN_PLAIN = frozenset({"trim", "square"})


def _angle_tag(angle: float) -> str:
    return f"rot{'p' if angle > 0 else 'm'}{abs(angle):g}".replace(".", "_")


def eval_views(
    zooms: tuple[float, ...],
    anchors: int,
    square: bool = True,
    flip: bool = True,
    angles: tuple[float, ...] = (5.0, -5.0),
) -> tuple[View, ...]:
    """``phash``, ``trim``, ``square``, ``flip``, per angle a fill and an inner rotation view, and, per
    zoom, ``anchors``×``anchors`` crops (``anchors`` 1: centre only)."""
    if anchors < 1:
        raise ValueError("anchors must be >= 1")
    out = [PHASH, TRIM]
    if square:
        out.append(SQUARE)
    if flip:
        out.append(FLIP)
    for a in angles:
        if not 0 < abs(a) <= 20:
            raise ValueError(f"rotation angle {a} must be in [-20, 20], not 0")
        tag = _angle_tag(a)
        out += [View(tag, angle=a, fill=True), View(f"{tag}_inner", keep=INNER_KEEP, angle=a)]
    pos = [0.5] if anchors == 1 else [i / (anchors - 1) for i in range(anchors)]
    for z in zooms:
        if not 0 < z < 1:
            raise ValueError(f"zoom {z} must be in (0, 1)")
        tag = f"zoom{round(z * 100)}"
        for iy, ay in enumerate(pos):
            for ix, ax in enumerate(pos):
                out.append(View(tag if anchors == 1 else f"{tag}_{ix}{iy}", z, ax, ay))
    return tuple(out)


def fill_keep(angle: float, w: float, h: float) -> float:
    """Fraction of each side of a ``w``×``h`` frame rotated by ``angle`` degrees that a centred box of
    the same aspect keeps inside the rotated content (no filled corner in it)."""
    t = math.radians(abs(angle))
    c, s = math.cos(t), math.sin(t)
    # the box (k·w, k·h) fits inside the rotated frame when both of its rotated extents fit
    return min(1.0, 1.0 / (c + s * max(w / h, h / w)))


def trim_boxes(
    grays: np.ndarray,
    tol: int = 16,
    min_frac: float = 0.98,
    max_trim: float = 0.45,
    edge_frac: float = 0.5,
    drift: float = 3.0,
    flat_std: float = 1.0,
) -> np.ndarray:
    """Content boxes ``(left, top, right, bottom)`` of a stack ``(B, H, W)`` of uint8 images: the
    image without its real borders.

    A side's border is a run of lines from the outside in that are *uniform*: at least ``min_frac`` of
    the pixels within ``tol`` grey levels of the outermost line's median, and the line's own level
    within ``drift`` levels of it (a sky's slow gradient is not a flat band). The run only counts as
    a border when it *differs from what it frames*: in the first line or two past it, at least
    ``edge_frac`` of the pixels (over the span of the content box) lie more than ``tol`` from the
    border colour — a straight edge such as a mat, a letterbox or a pasted picture has, and a plain
    sky above a skyline, a white studio background around an object, or a dark stage do not — and
    when it is *flat*: pixel standard deviation ≤ ``flat_std`` (a digital fill; a sky has grain).
    A run reaching ``max_trim`` of the side is content too, and so is one that would leave less
    than 30 % of the image. Per side a few NumPy calls for the whole batch, then the edge check.
    """
    grays = np.asarray(grays)
    b, h, w = grays.shape
    boxes = np.zeros((b, 4), np.int64)
    boxes[:, 2], boxes[:, 3] = w, h
    if b == 0 or min(h, w) < MIN_TRIM_SIDE:
        return boxes
    # Most photos have no border: a side whose outermost line is not uniform has none (the run of
    # uniform lines is empty), so only images with a uniform outer line on some side are searched.
    # The same test as below on one line per side: at download time this is most of the saving.
    # (top and bottom lines in one call, left and right in another: 2 medians instead of 4)
    rows = _uniform_lines(np.concatenate([grays[:, :1, :], grays[:, -1:, :]]), tol, min_frac, drift)[0]
    cols = _uniform_lines(
        np.concatenate([grays[:, None, :, 0], grays[:, None, :, -1]]), tol, min_frac, drift
    )[0]
    maybe = rows[:b, 0] | rows[b:, 0] | cols[:b, 0] | cols[b:, 0]
    if maybe.any():
        boxes[maybe] = _trim_search(grays[maybe], tol, min_frac, max_trim, edge_frac, drift, flat_std)
    return boxes


def _uniform_lines(
    lines: np.ndarray, tol: int, min_frac: float, drift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which lines of ``lines`` (B, k, n: k lines from the outside in) are uniform with the outermost
    line's median (``ok``, (B, k)), and that median (B,)."""
    ref = np.median(lines[:, 0, :], axis=1).astype(np.int16)
    signed = lines.astype(np.int16) - ref[:, None, None]
    near = np.abs(signed) <= tol
    count = near.sum(axis=2)
    # the line's level: the mean of its pixels near the border colour (a median per line costs
    # more than the rest of the hash at download time, and the outliers are already left out)
    level = np.where(near, signed, 0).sum(axis=2) / np.maximum(count, 1)
    return (count >= min_frac * lines.shape[2]) & (np.abs(level) <= drift), ref


def _trim_search(
    grays: np.ndarray,
    tol: int,
    min_frac: float,
    max_trim: float,
    edge_frac: float,
    drift: float,
    flat_std: float,
) -> np.ndarray:
    """:func:`trim_boxes` for images that may have a border (the whole search)."""
    b, h, w = grays.shape
    boxes = np.zeros((b, 4), np.int64)
    boxes[:, 2], boxes[:, 3] = w, h
    kh, kw = max(1, int(h * max_trim)), max(1, int(w * max_trim))
    # Each side as (B, k, n): k lines from the outside in, n pixels per line.
    sides = (
        grays[:, :kh, :],
        grays[:, ::-1, :][:, :kh, :],
        grays[:, :, :kw].transpose(0, 2, 1),
        grays[:, :, ::-1][:, :, :kw].transpose(0, 2, 1),
    )
    runs, refs, prefixes = [], [], []
    for lines in sides:
        ok, ref = _uniform_lines(lines, tol, min_frac, drift)
        uniform = np.where(ok.all(axis=1), ok.shape[1], np.argmin(ok, axis=1))  # uniform lines from outside
        runs.append(np.where(uniform == ok.shape[1], 0, uniform))  # all k lines uniform: content
        prefixes.append(uniform)
        refs.append(ref)
    top, bottom, left, right = runs
    for i in np.flatnonzero((top > 0) | (bottom > 0) | (left > 0) | (right > 0)):
        t, bo, le, ri = int(top[i]), int(bottom[i]), int(left[i]), int(right[i])
        if (h - t - bo) < 0.3 * h or (w - le - ri) < 0.3 * w:
            continue
        g = grays[i].astype(np.int16)
        keep = [t, bo, le, ri]
        for side, run in enumerate(keep):
            if run == 0:
                continue
            ref = int(refs[side][i])
            # the first two lines past the run, over the span the other sides leave
            if side == 0:
                edge = g[t : t + 2, le : w - ri]
            elif side == 1:
                edge = g[h - bo - 2 : h - bo, le : w - ri]
            elif side == 2:
                edge = g[t : h - bo, le : le + 2].T
            else:
                edge = g[t : h - bo, w - ri - 2 : w - ri].T
            frac = (np.abs(edge - ref) > tol).mean(axis=1).max() if edge.size else 0.0
            if frac < edge_frac or _band(g, side, run).std() > flat_std:
                # a plain band that fades into the content, or one with the grain of a real sky
                # (a border or canvas is a digital fill: flat to within JPEG noise)
                keep[side] = 0
        # A frame is usually as wide on every side (a mat, ImageOps.expand): where the picture's own
        # edge has the frame's colour, that side shows no edge, but its first lines are as uniform
        # and as coloured as the confirmed sides' frame. Trim it by the confirmed width.
        sure = [j for j in range(4) if keep[j] > 0]
        if sure:
            width = min(keep[j] for j in sure)
            colours = [int(refs[j][i]) for j in sure]
            if max(colours) - min(colours) <= tol:
                for j in range(4):
                    if (
                        keep[j] == 0
                        and prefixes[j][i] >= width
                        and abs(int(refs[j][i]) - colours[0]) <= tol
                        # (less the 2 lines at the edge: the picture's JPEG ringing bleeds into them)
                        and _band(g, j, width, inset=2).std() <= flat_std
                    ):
                        keep[j] = width
        t, bo, le, ri = keep
        boxes[i] = (le, t, w - ri, h - bo)
    return boxes


def _band(g: np.ndarray, side: int, run: int, inset: int = 0) -> np.ndarray:
    """The ``run`` outermost lines of side ``side`` (0 top, 1 bottom, 2 left, 3 right) of ``g``, less
    ``inset`` lines next to the content when there are more."""
    h, w = g.shape
    run = run - inset if run > inset + 1 else run
    return (g[:run], g[h - run :], g[:, :run], g[:, w - run :])[side]


def view_box(view: View, trim: tuple[int, ...], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The view's box in pixels of an image of ``size`` (w, h) whose content box is ``trim`` (in the
    mirrored / rotated frame for views that transform it: same size, same centre)."""
    left, top, right, bottom = trim if view.trimmed else (0, 0, *size)
    w, h = right - left, bottom - top
    if view.square:
        cw = ch = min(w, h)
    elif view.fill:
        k = fill_keep(view.angle, w, h)
        cw, ch = w * k, h * k
    else:
        cw, ch = w * view.keep, h * view.keep
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


def transformed(gray: np.ndarray, view: View) -> np.ndarray:
    """The frame a view is cut from: ``gray`` mirrored and/or rotated (same size, bicubic)."""
    if view.flip:
        gray = gray[:, ::-1]
    if view.angle:
        gray = np.asarray(Image.fromarray(np.ascontiguousarray(gray)).rotate(view.angle, Image.BICUBIC))
    return np.ascontiguousarray(gray)


def image_view_thumbs(gray: np.ndarray, views: tuple[View, ...], trim: tuple[int, ...]) -> np.ndarray:
    """Thumbnails ``(V, 32, 32)`` of every view of one decoded grayscale image."""
    size = (gray.shape[1], gray.shape[0])
    full = (0, 0, *size)
    out = np.empty((len(views), THUMB, THUMB), np.uint8)
    plain = None
    frames: dict[tuple[bool, float], np.ndarray] = {}
    for i, v in enumerate(views):
        box = view_box(v, trim, size)
        key = (v.flip, v.angle)
        if key == (False, 0.0):
            src = gray
        else:
            if key not in frames:
                frames[key] = transformed(gray, v)
            src = frames[key]
        if box == full and src is gray:
            plain = thumb(gray) if plain is None else plain
            out[i] = plain
        else:
            out[i] = box_thumb(src, box)
    return out


def train_thumbs(grays: list[np.ndarray], tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails ``(B, len(TRAIN_VIEWS), 32, 32)`` of decoded training images, and ``trimmed`` (B,):
    whether a border was found (else the ``trim`` thumbnail is the ``phash`` one).

    Images are grouped by shape so the border search runs once per group (a shard of 256-px images
    decoded at 1/8 is one group of 32×32 arrays, whose ``phash`` thumbnail is the array itself).
    """
    n = len(grays)
    out = np.empty((n, len(TRAIN_VIEWS), THUMB, THUMB), np.uint8)
    trimmed = np.zeros(n, bool)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grays):
        groups.setdefault(g.shape, []).append(i)
    for (h, w), idx in groups.items():
        stack = np.stack([grays[i] for i in idx])
        boxes = trim_boxes(stack, tol)
        full = (boxes == np.array([0, 0, w, h])).all(axis=1)
        for j, i in enumerate(idx):
            g = grays[i]
            out[i, 0] = g if (h, w) == (THUMB, THUMB) else thumb(g)
            box = tuple(float(x) for x in boxes[j])
            if full[j]:
                out[i, 1] = out[i, 0]
            else:
                trimmed[i] = True
                out[i, 1] = box_thumb(g, box)
            out[i, 2] = box_thumb(g, view_box(INNER, tuple(int(x) for x in boxes[j]), (w, h)))
    return out, trimmed
