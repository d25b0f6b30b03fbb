"""Issue 18: the copies people make of real photos are found; real borders are trimmed, plain skies are not.

The training side is hashed as the downloader hashes it (:func:`crawl.original_hashes.hash_as_downloaded`
on the published bytes), the eval side as the stage hashes an eval set; search and verification are the
stage's own functions with the default configuration.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from crawl.original_hashes import hash_as_downloaded
from dedup.config import DedupConfig
from dedup.decode import decode_gray
from dedup.detect import EvalViews, best_view_pair, compatible, match_views
from dedup.hashing import eval_thumbs
from dedup.original import hash_original
from dedup.phash import phash_thumbs
from dedup.score import overlay_scores, verify_scores
from dedup.verify import ThumbStack, clip_rescore
from dedup.views import TRAIN_VIEWS, eval_views, trim_boxes
from pipeline.evalsets import EvalRecord
from tests.dedup.copies import canvas, caption, copies, jpeg

CFG = DedupConfig()
VIEWS = eval_views(
    tuple(CFG.eval_zooms), CFG.eval_anchors, CFG.eval_square, CFG.eval_flip, tuple(CFG.eval_angles)
)
#: Real COCO photos (shared data) with a large plain area: a sky over the sea, a white studio
#: background, an overexposed sky over water, a field. The trim before issue 18 cut each of them.
PLAIN_AREAS = (
    "val2017/000000549055.jpg",
    "val2017/000000163951.jpg",
    "val2017/000000435206.jpg",
    "val2017/000000153797.jpg",
    "val2017/000000128051.jpg",
    "train2017/000000489520.jpg",
)
#: Real COCO photos with bright areas (overcast sky, snow, white walls, a lit window): brightened by
#: 40 %, their highlights clip to white and the plain correlation of thumbnails falls to 0.93-0.96.
BRIGHT_AREAS = (
    "train2017/000000129648.jpg",
    "train2017/000000183872.jpg",
    "train2017/000000213148.jpg",
    "val2017/000000034417.jpg",
    "val2017/000000126107.jpg",
    "val2017/000000205401.jpg",
    "val2017/000000273232.jpg",
    "val2017/000000349860.jpg",
)


def _coco(shared_data, n: int, start: int = 0) -> list[bytes]:
    files = sorted((shared_data / "photos" / "coco_mini").rglob("*.jpg"))
    return [f.read_bytes() for f in files[start : start + n]]


def _detect(train: list[bytes], evals: list[bytes]) -> tuple[dict, np.ndarray]:
    """(train row, eval row) -> (confirmed, score, train view, eval view) of the best view pair."""
    e_th = np.stack(
        [eval_thumbs(decode_gray(d, CFG.decode_min_side)[0], VIEWS, CFG.trim_tolerance) for d in evals]
    )
    e_h = phash_thumbs(e_th.reshape(-1, 32, 32)).reshape(len(evals), len(VIEWS))
    t = [hash_as_downloaded(d, CFG.original_decode_min_side, CFG.trim_tolerance) for d in train]
    t_h, t_th = np.stack([x[0] for x in t]), np.stack([x[1] for x in t])
    index = EvalViews.build(
        {v.name: e_h[:, i] for i, v in enumerate(VIEWS)}, np.ones(len(evals), bool), CFG.tau
    )
    pairs = match_views(
        {v.name: t_h[:, i] for i, v in enumerate(TRAIN_VIEWS)}, np.ones(len(train), bool), index
    )
    a = t_th[pairs["train_row"], pairs["train_view"]]
    b = e_th[pairs["eval_row"], pairs["eval_view"]]
    score = verify_scores(
        a,
        b,
        CFG.verify_threshold - CFG.refine_margin,
        overlay=(CFG.overlay_drop, CFG.overlay_margin),
        band=CFG.overlay_band,
    )
    # as the stage does: pairs whose training thumbnail has clipped highlights/shadows are re-scored
    score, _ = clip_rescore(
        [EvalRecord(str(i), 0, image_bytes=d) for i, d in enumerate(evals)],
        pairs,
        score,
        ThumbStack(list(range(len(train))), t_th),
        ThumbStack(list(range(len(evals))), e_th),
        VIEWS,
        CFG.clip_rescore_from,
        CFG.verify_threshold,
        CFG.original_decode_min_side,
        CFG.trim_tolerance,
    )
    out = {}
    for k in best_view_pair(pairs, score):
        out[(int(pairs["train_row"][k]), int(pairs["eval_row"][k]))] = (
            bool(score[k] >= CFG.verify_threshold),
            float(score[k]),
            TRAIN_VIEWS[pairs["train_view"][k]].name,
            VIEWS[pairs["eval_view"][k]].name,
        )
    return out, score


def test_every_copy_kind_of_real_photos_is_found_and_nothing_else(shared_data):
    evals = _coco(shared_data, 10, start=100)
    train, truth = [], []
    for e, data in enumerate(evals):
        for kind, copy in copies(data, e).items():
            train.append(copy)
            truth.append((kind, e))
    distinct = _coco(shared_data, 30, start=150)  # other photos, never confirmed against an eval photo
    found, _ = _detect(train + distinct, evals)
    missed = [truth[t] for t in range(len(train)) if not found.get((t, truth[t][1]), (False,))[0]]
    by_kind: dict[str, int] = {}
    for kind, _ in missed:
        by_kind[kind] = by_kind.get(kind, 0) + 1
    # every kind found on at least 9 of the 10 photos (most on all); canvas pastes on 8 (target 0.80:
    # a photo whose edges have the canvas colour shows no edge to find)
    assert all(n <= (2 if kind == "canvas 70%" else 1) for kind, n in by_kind.items()), by_kind
    assert len(missed) <= 4, missed
    wrong = [(t, e) for (t, e), v in found.items() if v[0] and (t >= len(train) or truth[t][1] != e)]
    assert not wrong, [(t, e, found[(t, e)]) for t, e in wrong]


def test_brightened_copies_with_clipped_highlights_are_confirmed(shared_data):
    evals = [(shared_data / "photos" / "coco_mini" / n).read_bytes() for n in BRIGHT_AREAS]
    train = [
        jpeg(ImageEnhance.Brightness(Image.open(io.BytesIO(d)).convert("RGB")).enhance(1.4)) for d in evals
    ]
    distinct = _coco(shared_data, 20, start=200)
    found, _ = _detect(train + distinct, evals)
    missed = [BRIGHT_AREAS[i] for i in range(len(evals)) if not found.get((i, i), (False,))[0]]
    assert not missed, [(m, found.get((BRIGHT_AREAS.index(m),) * 2)) for m in missed]
    # re-rendering the eval side clipped lifts copies, not other photos
    wrong = [(t, e, v) for (t, e), v in found.items() if v[0] and t != e]
    assert not wrong, wrong


@pytest.mark.parametrize("name", PLAIN_AREAS)
def test_plain_sky_or_studio_background_is_not_trimmed(shared_data, name):
    gray, _ = decode_gray((shared_data / "photos" / "coco_mini" / name).read_bytes(), CFG.decode_min_side)
    h, w = gray.shape
    assert tuple(int(x) for x in trim_boxes(gray[None], CFG.trim_tolerance)[0]) == (0, 0, w, h)
    # and at full resolution
    full = np.asarray(Image.open(shared_data / "photos" / "coco_mini" / name).convert("L"))
    fh, fw = full.shape
    assert tuple(int(x) for x in trim_boxes(full[None], CFG.trim_tolerance)[0]) == (0, 0, fw, fh)


@pytest.mark.parametrize(
    ("colour", "at"),
    [((255, 255, 255), (0.5, 0.5)), ((20, 20, 20), (0.0, 0.0)), ((128, 128, 128), (1.0, 0.3))],
)
def test_trim_finds_a_canvas_anywhere_and_a_border(shared_data, colour, at):
    # (a photo whose own edges are not plain: a white studio shot on a white canvas has no edge to find)
    img = Image.open(io.BytesIO(_coco(shared_data, 1, start=110)[0])).convert("RGB")
    for framed in (
        canvas(img, colour, at),
        ImageOps.expand(img, border=round(max(img.size) * 0.05), fill=colour),
    ):
        gray = np.asarray(Image.open(io.BytesIO(jpeg(framed))).convert("L"))
        left, top, right, bottom = (int(x) for x in trim_boxes(gray[None], CFG.trim_tolerance)[0])
        # the content box is the photo's, within 3 px (JPEG blur at the edge)
        w, h = img.size
        assert abs((right - left) - w) <= 3 and abs((bottom - top) - h) <= 3, (colour, at, framed.size)


def test_overlay_score_tolerates_a_caption_not_a_different_photo(shared_data):
    a, b = _coco(shared_data, 2, start=60)
    img = Image.open(io.BytesIO(a)).convert("RGB")
    captioned = jpeg(caption(img))
    ta = hash_original(a, CFG.original_decode_min_side, CFG.trim_tolerance)[1][:1]
    tc = hash_original(captioned, CFG.original_decode_min_side, CFG.trim_tolerance)[1][:1]
    tb = hash_original(b, CFG.original_decode_min_side, CFG.trim_tolerance)[1][:1]
    zero = np.zeros((1, 2))
    assert overlay_scores(tc, ta, zero, CFG.overlay_drop)[0] >= 0.99
    assert overlay_scores(tb, ta, zero, CFG.overlay_drop)[0] < 0.9


def test_inner_view_pairs_only_with_rotated_inner_views():
    assert compatible("inner", "rotp5_inner") and compatible("phash", "zoom90_11")
    assert not compatible("inner", "zoom90_11") and not compatible("phash", "rotm5_inner")
