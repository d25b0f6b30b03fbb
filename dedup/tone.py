"""Verification of copies whose highlights or shadows were clipped by a tone edit (brightness, contrast).

The verification score (:mod:`dedup.score`) is a Pearson correlation, invariant to any *affine*
change of tone. A brightness or contrast edit is affine only until it reaches white or black: a copy
brightened by 20 % has every pixel above ~213 clipped to 255. The clipping happens at full
resolution, before either image is reduced to its 32×32 thumbnail, so the copy's thumbnail is *not*
a tone curve of the original's thumbnail (a thumbnail pixel averages clipped and unclipped pixels)
and no remapping of thumbnails undoes it. On a soft, bright photo (mist, snow, an overcast sky) the
clipped part is where the texture was, and the correlation drops under the threshold.

What is done instead is to re-render the edit on the evaluation side: when the training thumbnail
has more clipped highlights (shadows) than the eval view's, the eval image is decoded again, clipped at a level ``h`` (``l``),
cut to the view that matched and reduced to a thumbnail, then scored as before. Pearson is
invariant to the edit's scale and offset, so the clip level is the edit's only parameter left; it
is searched over a few quantiles of the eval image's own levels (:data:`CLIP_QUANTILES`): one
parameter, monotone, and only ever the one a brightness/contrast edit has. Two different pictures
gain little from it (clipping removes information on the eval side, it cannot add the training
side's texture), while a clipped copy is rendered as it was made. Tried and dropped: matching the
thumbnails' histograms (any monotone curve: it lifted a distinct pair over the threshold) and
leaving the saturated thumbnail pixels out (the partly clipped ones around them still differ).
"""

from __future__ import annotations

import numpy as np

from dedup.score import coarse
from dedup.views import View, box_thumb, transformed, view_box

#: the eval image's clip levels tried: these quantiles of its grey levels (for shadows, 1 - q)
CLIP_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
#: a thumbnail pixel within this many levels of white (black) is clipped
SATURATED = 5


def clipped(train: np.ndarray, evals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of thumbnails ``(P, 32, 32)``: whether the training one has more clipped highlights
    than the eval one, and more clipped shadows: what an edit that reached white (black) leaves.
    A pair clipped alike on both sides (an exact copy of a photo with a white sky) is not re-rendered."""
    t = np.asarray(train).reshape(len(train), -1)
    e = np.asarray(evals).reshape(len(evals), -1)
    hi, lo = 255 - SATURATED, SATURATED
    return (t >= hi).sum(axis=1) > (e >= hi).sum(axis=1), (t <= lo).sum(axis=1) > (e <= lo).sum(axis=1)


def clip_renders(gray: np.ndarray, view: View, trim: tuple[int, ...], high: bool, low: bool) -> np.ndarray:
    """Thumbnails ``(R, 32, 32)`` of ``view`` of the eval image ``gray`` (decoded, content box ``trim``)
    with its highlights (``high``) and/or shadows (``low``) clipped at each level tried."""
    src = transformed(gray, view)
    box = view_box(view, trim, (gray.shape[1], gray.shape[0]))
    highs = np.quantile(gray, CLIP_QUANTILES) if high else np.array([255.0])
    lows = np.quantile(gray, [1.0 - q for q in CLIP_QUANTILES]) if low else np.array([0.0])
    out = [
        box_thumb(np.clip(src, lo, hi).astype(np.uint8), box)
        for hi in np.unique(np.round(highs))
        for lo in np.unique(np.round(lows))
        if lo < hi
    ]
    return np.stack(out) if out else np.zeros((0, 32, 32), np.uint8)


def clip_score(train_thumb: np.ndarray, renders: np.ndarray) -> float:
    """The best verification score (coarse, ±1 px) of a training thumbnail against the clipped
    renders of the eval view (:func:`clip_renders`); -1 when there are none."""
    if not len(renders):
        return -1.0
    score, _ = coarse(np.repeat(train_thumb[None], len(renders), axis=0), renders)
    return float(score.max())
