"""The verification score: coarse equals a plain reference, refinement recovers sub-pixel misalignment,
and crops of real photos are found through the eval crop views and confirmed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dedup.config import DedupConfig
from dedup.decode import decode_gray
from dedup.detect import EvalViews, best_view_pair, match_views
from dedup.hashing import eval_thumbs
from dedup.phash import phash_thumbs
from dedup.score import coarse, refined, verify_scores
from dedup.views import TRAIN_VIEWS, box_thumb, eval_views, train_thumbs


def _reference_coarse(a: np.ndarray, b: np.ndarray) -> float:
    best = -1.0
    ca = a[1:31, 1:31].astype(float).ravel()
    for dy in range(3):
        for dx in range(3):
            wb = b[dy : dy + 30, dx : dx + 30].astype(float).ravel()
            best = max(best, float(np.corrcoef(ca, wb)[0, 1]))
    return best


def _gray(path) -> np.ndarray:
    return decode_gray(path.read_bytes(), 0)[0]


def test_coarse_equals_a_plain_pearson_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 32, 32)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    b[::2] = np.roll(b[::2], 1, axis=2)  # some pairs shifted by a pixel
    score, _ = coarse(a, b)
    ref = np.array([_reference_coarse(x, y) for x, y in zip(a, b, strict=True)])
    assert np.allclose(score, ref, atol=1e-5)
    assert np.array_equal(verify_scores(a, b, None), score.astype(np.float32))


def test_flat_thumbnails():
    flat, other = np.full((1, 32, 32), 9, np.uint8), np.full((1, 32, 32), 60, np.uint8)
    texture = np.random.default_rng(1).integers(0, 256, (1, 32, 32)).astype(np.uint8)
    assert verify_scores(flat, flat + 3, 0.5)[0] == 1.0
    assert verify_scores(flat, other, 0.5)[0] == 0.0
    assert verify_scores(flat, texture, 0.5)[0] == 0.0 and verify_scores(texture, flat, 0.5)[0] == 0.0


def test_refinement_recovers_subpixel_shift_and_scale(shared_data):
    files = sorted((shared_data / "photos").rglob("*.jpg"))[:12]
    a, b = [], []
    for f in files:
        g = _gray(f)
        h, w = g.shape
        box = (0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h)
        # The same region, 0.4 px (at 32×32) off and 2 % larger: what an anchor view leaves.
        dx, dy = 0.4 * 0.8 * w / 32, -0.4 * 0.8 * h / 32
        grow = 0.01 * 0.8
        a.append(box_thumb(g, box))
        b.append(
            box_thumb(
                g,
                (
                    box[0] + dx - grow * w,
                    box[1] + dy - grow * h,
                    box[2] + dx + grow * w,
                    box[3] + dy + grow * h,
                ),
            )
        )
    a, b = np.stack(a), np.stack(b)
    score, offset = coarse(a, b)
    fine = refined(a, b, offset)
    assert np.all(fine >= score - 1e-6) and np.mean(fine - score) > 0.005
    assert np.all(np.maximum(score, fine) >= 0.97)


@pytest.mark.parametrize("corner", [(0.0, 0.0), (1.0, 0.3), (0.5, 1.0), (0.7, 0.6)])
def test_ten_percent_crop_of_a_real_photo_is_found_and_confirmed(shared_data, corner):
    """A 10 % crop (at any offset) of an eval photo, stored as a 256-px JPEG like the downloader writes,
    meets one of the eval crop views within tau and passes verification at the default threshold;
    other photos are not confirmed."""
    cfg = DedupConfig()
    files = sorted((shared_data / "photos").rglob("*.jpg"))[40:70]
    views = eval_views(tuple(cfg.eval_zooms), cfg.eval_anchors)
    e_grays = [decode_gray(f.read_bytes(), cfg.decode_min_side)[0] for f in files]
    e_thumbs = np.stack([eval_thumbs(g, views, cfg.trim_tolerance) for g in e_grays])
    e_hash = phash_thumbs(e_thumbs.reshape(-1, 32, 32)).reshape(len(files), len(views))
    t_grays = []
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        left, top = round(0.1 * w * corner[0]), round(0.1 * h * corner[1])
        crop = img.crop((left, top, left + round(0.9 * w), top + round(0.9 * h))).resize((256, 192))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=95)
        t_grays.append(decode_gray(buf.getvalue(), cfg.decode_min_side)[0])
    t_thumbs, _ = train_thumbs(t_grays, cfg.trim_tolerance)
    train = {v.name: phash_thumbs(t_thumbs[:, i]) for i, v in enumerate(TRAIN_VIEWS)}
    evals = {v.name: e_hash[:, i] for i, v in enumerate(views)}
    ok = np.ones(len(files), bool)
    pairs = match_views(train, ok, EvalViews.build(evals, ok, cfg.tau))
    a = t_thumbs[pairs["train_row"], pairs["train_view"]]
    b = e_thumbs[pairs["eval_row"], pairs["eval_view"]]
    score = verify_scores(a, b, cfg.verify_threshold - cfg.refine_margin)
    best = best_view_pair(pairs, score)
    confirmed = score[best] >= cfg.verify_threshold
    same = pairs["train_row"][best] == pairs["eval_row"][best]
    found = set(pairs["train_row"][best][confirmed & same].tolist())
    assert len(found) >= 0.9 * len(files), f"only {len(found)} of {len(files)} crops confirmed"
    assert not np.any(confirmed & ~same), "a crop was confirmed against a different photo"
    names = [views[i].name for i in pairs["eval_view"][best][confirmed & same]]
    assert sum(n.startswith("zoom90") for n in names) >= 0.8 * len(names)  # aligned by the 10 % crop views
