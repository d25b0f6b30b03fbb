"""The verification score of a pair of aligned 32×32 grayscale thumbnails: their best Pearson correlation.

Two stages, both vectorised over pairs:

1. **coarse**: the central 30×30 pixels of ``a`` against the 30×30 window of ``b`` at each integer
   offset up to ±1 pixel; the window sums come from the window itself, no per-pair Python.
2. **refined** (for pairs whose coarse score is already close to a threshold): ``b`` is resampled
   (bilinear, edge-clamped) under a small similarity warp around the best integer offset — scale
   0.97 / 1 / 1.03 and sub-pixel offsets, searched coarse to fine (±0.5 px in 0.5 steps, then ±0.25)
   — and the central 28×28 pixels are correlated. This recovers what an anchor crop view leaves
   misaligned: a crop between two anchors is off by up to ~0.8 px and by a few percent in scale,
   which costs a sharp thumbnail 5–10 points of correlation.

The score is invariant to brightness and contrast. Two flat thumbnails score 1 when their levels
are within 8 grey levels, else 0; a flat one against a textured one scores 0.
"""

from __future__ import annotations

import numpy as np

THUMB = 32
SCALES = (0.97, 1.0, 1.03)
_FLAT = 1e-6  # variance (grey levels²) below which a thumbnail is flat


def _window_stats(b: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares ``(P, k, k)`` of every w×w window of ``b`` (P, 32, 32), k = 33 - w: column
    ranges first, then row ranges (exact in float64, a few reductions for the whole batch)."""
    k = THUMB + 1 - w
    out = []
    for x in (b, b * b):
        cols = np.stack([x[:, :, dx : dx + w].sum(axis=2) for dx in range(k)], axis=2)  # (P, 32, k)
        out.append(np.stack([cols[:, dy : dy + w].sum(axis=1) for dy in range(k)], axis=1))
    return out[0], out[1]


def _centre(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-norm central ``(32-2m)²`` region of each thumbnail (float32), and which are flat."""
    w = THUMB - 2 * m
    c = np.ascontiguousarray(a[:, m : THUMB - m, m : THUMB - m], dtype=np.float64).reshape(len(a), w * w)
    c -= c.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("pi,pi->p", c, c))
    flat = norm < np.sqrt(_FLAT * w * w)
    c /= np.where(flat, 1.0, norm)[:, None]
    return c.astype(np.float32).reshape(len(a), w, w), flat


def coarse(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation over integer offsets ±1 px, and that offset ``(P, 2)`` as (dy, dx)."""
    a, b = np.asarray(a), np.asarray(b)
    p, w = len(a), THUMB - 2
    n = w * w
    a_c, flat_a = _centre(a, 1)
    b32, b64 = b.astype(np.float32), b.astype(np.float64)
    sums, sq = _window_stats(b64, w)  # (P, 3, 3)
    var = sq - sums * sums / n
    r = np.zeros((p, 3, 3))
    for dy in range(3):
        for dx in range(3):
            # a_c is zero-mean, so a_c · window equals a_c · (window - its mean).
            num = np.einsum("pij,pij->p", a_c, b32[:, dy : dy + w, dx : dx + w])
            ok = var[:, dy, dx] > _FLAT * n
            r[:, dy, dx] = np.where(ok, num / np.sqrt(np.where(ok, var[:, dy, dx], 1.0)), 0.0)
    r = r.reshape(p, 9)
    best = r.argmax(axis=1)
    score = r[np.arange(p), best]
    b_sum = b64.sum(axis=(1, 2))
    flat_b = np.einsum("pij,pij->p", b64, b64) - b_sum * b_sum / THUMB**2 < _FLAT * THUMB**2
    close = np.abs(a.reshape(p, -1).mean(axis=1, dtype=np.float64) - b_sum / THUMB**2) <= 8
    score = np.where(flat_a | flat_b, np.where(flat_a & flat_b & close, 1.0, 0.0), score)
    offset = np.stack(np.divmod(best, 3), axis=1).astype(np.float64) - 1.0
    return score, offset


def _warp(b: np.ndarray, scale: np.ndarray, dy: np.ndarray, dx: np.ndarray, m: int) -> np.ndarray:
    """Bilinear samples of ``b`` (P, 32, 32) on the central ``(32-2m)²`` grid under a per-pair warp
    ``x -> c + (x - c) * scale + d`` (edge pixels repeated outside the thumbnail)."""
    p = len(b)
    c = (THUMB - 1) / 2
    grid = np.arange(m, THUMB - m, dtype=np.float64)
    ys = np.clip(c + (grid[None, :] - c) * scale[:, None] + dy[:, None], 0, THUMB - 1)
    xs = np.clip(c + (grid[None, :] - c) * scale[:, None] + dx[:, None], 0, THUMB - 1)
    y0 = np.minimum(ys.astype(np.int64), THUMB - 2)
    x0 = np.minimum(xs.astype(np.int64), THUMB - 2)
    fy = (ys - y0).astype(np.float32)[:, :, None]
    fx = (xs - x0).astype(np.float32)[:, None, :]
    # One flat gather per corner: index of (pair, row, column) in the raveled stack.
    i00 = (np.arange(p) * THUMB * THUMB)[:, None, None] + y0[:, :, None] * THUMB + x0[:, None, :]
    flat = b.reshape(-1)
    top = flat[i00] * (1 - fx) + flat[i00 + 1] * fx
    bottom = flat[i00 + THUMB] * (1 - fx) + flat[i00 + THUMB + 1] * fx
    return top * (1 - fy) + bottom * fy


def _corr(a_c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Correlation of zero-mean unit-norm ``a_c`` with samples ``w`` (both (P, k, k))."""
    p, n = len(w), w.shape[1] * w.shape[2]
    w = w.reshape(p, n)
    s = w.sum(axis=1, dtype=np.float64)
    var = np.einsum("pi,pi->p", w, w).astype(np.float64) - s * s / n
    ok = var > _FLAT * n
    num = np.einsum("pi,pi->p", a_c.reshape(p, n), w)  # a_c is zero-mean
    return np.where(ok, num / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def refined(a: np.ndarray, b: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Best correlation under small similarity warps of ``b`` around the integer ``offset`` (P, 2)."""
    m = 2
    a_c, _ = _centre(np.asarray(a), m)
    b = np.asarray(b, np.float32)
    p = len(a_c)
    best = np.full(p, -1.0)
    best_s, best_y, best_x = np.ones(p), offset[:, 0].copy(), offset[:, 1].copy()
    for s in SCALES:  # level 1: scales × offsets in 0.5 steps
        for fy in (-0.5, 0.0, 0.5):
            for fx in (-0.5, 0.0, 0.5):
                y, x = offset[:, 0] + fy, offset[:, 1] + fx
                r = _corr(a_c, _warp(b, np.full(p, s), y, x, m))
                up = r > best
                best = np.where(up, r, best)
                best_s = np.where(up, s, best_s)
                best_y, best_x = np.where(up, y, best_y), np.where(up, x, best_x)
    y_c, x_c = best_y.copy(), best_x.copy()
    for fy in (-0.25, 0.0, 0.25):  # level 2: quarter pixels around the best
        for fx in (-0.25, 0.0, 0.25):
            if fy == 0 and fx == 0:
                continue
            best = np.maximum(best, _corr(a_c, _warp(b, best_s, y_c + fy, x_c + fx, m)))
    return best


def overlay_scores(a: np.ndarray, b: np.ndarray, offset: np.ndarray, drop: float) -> np.ndarray:
    """Correlation of the two thumbnails at the integer ``offset`` over all but the ``drop`` fraction of
    pixels where they disagree most (after matching brightness and contrast).

    A caption, a watermark or a logo changes a minority of the pixels completely and leaves the
    rest identical: without those pixels a copy correlates at ~1.0, while two different pictures
    still differ everywhere. Vectorised over pairs (P, 32, 32) -> (P,).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    p, w = len(a), THUMB - 2
    ca = a[:, 1 : THUMB - 1, 1 : THUMB - 1].reshape(p, -1)
    oy, ox = (offset[:, 0] + 1).astype(np.int64), (offset[:, 1] + 1).astype(np.int64)
    iy = oy[:, None, None] + np.arange(w)[None, :, None]
    ix = ox[:, None, None] + np.arange(w)[None, None, :]
    cb = b[np.arange(p)[:, None, None], iy, ix].reshape(p, -1)

    def z(x: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
        n = x.shape[1] if m is None else m.sum(axis=1, keepdims=True)
        xm = x if m is None else x * m
        mu = xm.sum(axis=1, keepdims=True) / n
        d = (x - mu) if m is None else (x - mu) * m
        sd = np.sqrt((d * d).sum(axis=1, keepdims=True) / n)
        return d / np.where(sd > 1e-6, sd, np.inf)

    resid = np.abs(z(ca) - z(cb))
    cut = np.quantile(resid, 1.0 - drop, axis=1, keepdims=True)
    keep = (resid <= cut).astype(np.float64)
    za, zb = z(ca, keep), z(cb, keep)
    return (za * zb).sum(axis=1) / keep.sum(axis=1)


def band_scores(a: np.ndarray, b: np.ndarray, offset: np.ndarray, rows: int) -> np.ndarray:
    """Correlation of the two thumbnails at the integer ``offset`` without their top or bottom ``rows``
    rows (of the central 30), the better of the two: a caption across the top or the bottom of a copy
    (a meme, a news still) covers such a band, and can hold most of a thumbnail's contrast when the
    photo itself is soft. Vectorised over pairs (P, 32, 32) -> (P,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    p, w = len(a), THUMB - 2
    ca = a[:, 1 : THUMB - 1, 1 : THUMB - 1]
    oy, ox = (offset[:, 0] + 1).astype(np.int64), (offset[:, 1] + 1).astype(np.int64)
    iy = oy[:, None, None] + np.arange(w)[None, :, None]
    ix = ox[:, None, None] + np.arange(w)[None, None, :]
    cb = b[np.arange(p)[:, None, None], iy, ix]
    best = np.full(p, -1.0)
    for part in (slice(0, w - rows), slice(rows, w)):
        x, y = ca[:, part].reshape(p, -1), cb[:, part].reshape(p, -1)
        x = x - x.mean(axis=1, keepdims=True)
        y = y - y.mean(axis=1, keepdims=True)
        den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
        r = np.where(den > 1e-9, (x * y).sum(axis=1) / np.where(den > 1e-9, den, 1.0), 0.0)
        best = np.maximum(best, r)
    return best


def verify_scores(
    a: np.ndarray,
    b: np.ndarray,
    refine_from: float | None,
    block: int = 8192,
    overlay: tuple[float, float] | None = None,
    band: int = 0,
) -> np.ndarray:
    """Score of each thumbnail pair: the coarse score, raised by the refined one where coarse ≥ ``refine_from``.

    ``refine_from`` ``None``: coarse only. ``overlay`` ``(drop, margin)``: every pair is also scored
    by :func:`overlay_scores` and, with ``band`` > 0, by :func:`band_scores`; those less ``margin``
    (so that an overlay score must exceed the threshold by ``margin`` to confirm), and the pair keeps
    the highest score.
    Memory is bounded by processing ``block`` pairs at a time.
    """
    n = len(a)
    out = np.empty(n, np.float32)
    for i in range(0, n, block):
        pa_, pb_ = np.asarray(a[i : i + block]), np.asarray(b[i : i + block])
        score, offset = coarse(pa_, pb_)
        robust = None
        if overlay is not None:  # at the coarse alignment, before refinement moves the score
            drop, margin = overlay
            robust = overlay_scores(pa_, pb_, offset, drop) - margin
            if band:
                robust = np.maximum(robust, band_scores(pa_, pb_, offset, band) - margin)
        if refine_from is not None:
            idx = np.flatnonzero((score >= refine_from) & (score < 1.0))
            if len(idx):
                score[idx] = np.maximum(score[idx], refined(pa_[idx], pb_[idx], offset[idx]))
        if robust is not None:
            score = np.maximum(score, robust)
        out[i : i + len(pa_)] = score
    return out
