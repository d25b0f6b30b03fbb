"""Perceptual hashes, vectorised over a batch, bit-identical to ``imagehash.phash``.

``imagehash.phash(img)`` is: ``img.convert("L").resize((32, 32), LANCZOS)``, a 2-D DCT-II
(``scipy.fftpack.dct`` along rows then columns, no normalisation), the top-left 8×8 coefficients,
and ``coefficient > median`` as 64 bits, the first (row-major) being the most significant bit of
``int(str(hash), 16)``. Here the resize is per image (PIL), and the DCT, median and bit packing run
once over a ``(B, 32, 32)`` stack, with the same scipy function so the floats are the same.

Views (each a 32×32 grayscale thumbnail, hashed the same way):

* ``phash``: the image as decoded; identical to ``imagehash.phash``.
* ``trim``: uniform borders (letterbox bars, mats, padding) trimmed before resizing; equals
  ``phash`` when there is no border.
* ``zoomNN``: a centre crop keeping NN % of each side of the trimmed image. Computed on the
  evaluation side only: a training image that is a crop of an evaluation image then meets the eval
  image at about the same scale, while training hashing stays two views.
"""

from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

THUMB = 32
HASH_BITS = 8  # 8×8 = 64-bit hash, imagehash's default hash_size


def thumb(gray: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """32×32 LANCZOS thumbnail (uint8) of ``gray`` (mode ``L``), optionally of the crop ``box`` (l, t, r, b)."""
    img = gray if box is None or box == (0, 0, *gray.size) else gray.crop(box)
    return np.asarray(img.resize((THUMB, THUMB), Image.LANCZOS), dtype=np.uint8)


def phash_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """pHash (uint64) of each 32×32 thumbnail in ``thumbs`` (``(B, 32, 32)`` uint8), as imagehash computes it."""
    thumbs = np.asarray(thumbs)
    if thumbs.ndim != 3 or thumbs.shape[1:] != (THUMB, THUMB):
        raise ValueError(f"expected (B, 32, 32) thumbnails, got {thumbs.shape}")
    if len(thumbs) == 0:
        return np.zeros(0, dtype=np.uint64)
    # imagehash runs the DCT on the uint8 pixel array; scipy casts it to float64 the same way here.
    dct = scipy.fftpack.dct(scipy.fftpack.dct(thumbs, axis=1), axis=2)
    low = dct[:, :HASH_BITS, :HASH_BITS].reshape(len(thumbs), HASH_BITS * HASH_BITS)
    med = np.median(low, axis=1, keepdims=True)
    bits = low > med
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_images(images: list[Image.Image]) -> np.ndarray:
    """pHash of PIL images (any mode); equals ``[int(str(imagehash.phash(im)), 16) for im in images]``."""
    return phash_thumbs(
        np.stack([thumb(im.convert("L")) for im in images]) if images else np.zeros((0, 32, 32))
    )


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of uint64 hashes."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(
        np.int16
    )


def trim_box(
    gray: np.ndarray, tol: int = 16, min_frac: float = 0.98, max_trim: float = 0.3
) -> tuple[int, ...]:
    """Box ``(left, top, right, bottom)`` without uniform borders, in pixels of ``gray`` (H×W uint8).

    A border row/column is one where at least ``min_frac`` of its pixels lie within ``tol`` grey
    levels of that side's border colour (the median of its outermost line); at most ``max_trim`` of
    a side is trimmed, so a uniform image or a plain sky is left alone. JPEG ringing at a border
    edge stays within ``tol``.
    """
    h, w = gray.shape

    def run(lines: np.ndarray) -> int:
        # lines: (k, n) uint8 from the outside in; count leading lines that match the outermost colour.
        ref = int(np.median(lines[0]))
        lo, hi = max(0, ref - tol), min(255, ref + tol)
        outer = lines[0]
        if np.count_nonzero((outer >= lo) & (outer <= hi)) < min_frac * outer.size:
            return 0  # the common case, no border: one line looked at
        ok = np.count_nonzero((lines >= lo) & (lines <= hi), axis=1) >= min_frac * lines.shape[1]
        return int(np.argmin(ok)) if not ok.all() else len(ok)

    g = gray
    kh, kw = max(1, int(h * max_trim)), max(1, int(w * max_trim))
    top = run(g[:kh])
    bottom = run(g[::-1][:kh])
    left = run(g[:, :kw].T)
    right = run(g[:, ::-1][:, :kw].T)
    # A side that is uniform all the way to max_trim is not a border but content (sky, blank page).
    top, bottom = (0 if top >= kh else top), (0 if bottom >= kh else bottom)
    left, right = (0 if left >= kw else left), (0 if right >= kw else right)
    return (left, top, w - right, h - bottom)


def zoom_box(box: tuple[int, ...], keep: float) -> tuple[int, int, int, int]:
    """Centre crop of ``box`` keeping ``keep`` of each side."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return (left + dx, top + dy, right - dx, bottom - dy)


def view_thumbs(gray: Image.Image, zooms: tuple[float, ...] = ()) -> dict[str, np.ndarray]:
    """32×32 thumbnails of every view of one grayscale image: ``phash``, ``trim`` and ``zoomNN`` per zoom."""
    full = (0, 0, *gray.size)
    out = {"phash": thumb(gray)}
    box = trim_box(np.asarray(gray)) if min(gray.size) >= 8 else full
    out["trim"] = out["phash"] if box == full else thumb(gray, box)
    for z in zooms:
        zb = zoom_box(box, z)
        out[f"zoom{round(z * 100)}"] = thumb(gray, zb) if zb[2] > zb[0] and zb[3] > zb[1] else out["trim"]
    return out


def correlation(a: np.ndarray, b: np.ndarray, max_shift: int = 1, block: int = 16384) -> np.ndarray:
    """Verification score of paired thumbnails ``a``, ``b`` (``(N, 32, 32)``): the best Pearson correlation
    of their overlapping regions over integer shifts up to ``max_shift`` pixels in x and y.

    Invariant to brightness and contrast changes; the shift absorbs the sub-view misalignment a
    crop leaves (a 5 % crop split unevenly moves content by up to ~1 pixel at 32×32). Two flat
    thumbnails score 1 when their levels are within 8 grey levels, else 0; a flat one against a
    textured one scores 0.
    """
    if len(a) > block:  # bounded memory: float copies of a block at a time
        return np.concatenate(
            [
                correlation(a[i : i + block], b[i : i + block], max_shift, block)
                for i in range(0, len(a), block)
            ]
        )
    a = np.asarray(a, np.float64).reshape(len(a), THUMB, THUMB)
    b = np.asarray(b, np.float64).reshape(len(b), THUMB, THUMB)
    best = np.full(len(a), -1.0)
    n = THUMB
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pa_ = a[:, max(0, dy) : n + min(0, dy), max(0, dx) : n + min(0, dx)].reshape(len(a), -1)
            pb_ = b[:, max(0, -dy) : n + min(0, -dy), max(0, -dx) : n + min(0, -dx)].reshape(len(b), -1)
            best = np.maximum(best, _pearson(pa_, pb_))
    flat_a = a.reshape(len(a), -1).std(axis=1) < 1e-6
    flat_b = b.reshape(len(b), -1).std(axis=1) < 1e-6
    best = np.where(flat_a | flat_b, 0.0, best)
    close = np.abs(a.reshape(len(a), -1).mean(axis=1) - b.reshape(len(b), -1).mean(axis=1)) <= 8
    return np.where(flat_a & flat_b & close, 1.0, best)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a0, b0 = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a0 * a0).sum(axis=1) * (b0 * b0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a0 * b0).sum(axis=1) / den
    return np.nan_to_num(r, nan=0.0)
