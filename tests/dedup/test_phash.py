"""The pHash view is bit-identical to imagehash.phash; the robust views behave as documented."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup.phash import correlation, hamming, phash_images, phash_thumbs, thumb, trim_box, view_thumbs


def _reference(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def test_bit_identical_on_every_shared_photo(shared_data):
    files = sorted((shared_data / "photos").rglob("*.jpg"))
    assert len(files) >= 200
    images = [Image.open(f) for f in files]
    ours = phash_images(images)
    ref = np.array([_reference(Image.open(f)) for f in files], dtype=np.uint64)
    mismatched = [str(files[i]) for i in np.flatnonzero(ours != ref)]
    assert not mismatched, mismatched[:5]


def test_bit_identical_on_1000_cifar_images(shared_data):
    x = np.load(shared_data / "eval" / "cifar10_test.npz")["x"][:1000]
    images = [Image.fromarray(a) for a in x]
    ours = phash_images(images)
    ref = np.array([_reference(im) for im in images], dtype=np.uint64)
    assert np.array_equal(ours, ref)


def test_bit_identical_on_edge_cases():
    # Flat, tiny, palette, RGBA and two-level images: many equal DCT coefficients (ties at the median).
    rng = np.random.default_rng(1)
    images = [
        Image.new("RGB", (50, 40), (128, 128, 128)),
        Image.new("L", (1, 1), 0),
        Image.fromarray(rng.integers(0, 2, (64, 64), dtype=np.uint8) * 255),
        Image.fromarray(rng.integers(0, 256, (33, 70, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).convert("P"),
    ]
    assert np.array_equal(phash_images(images), np.array([_reference(im) for im in images], dtype=np.uint64))


def test_batch_shape_is_checked():
    with pytest.raises(ValueError, match="32, 32"):
        phash_thumbs(np.zeros((2, 16, 16), np.uint8))
    assert phash_thumbs(np.zeros((0, 32, 32), np.uint8)).shape == (0,)


def test_trim_removes_a_uniform_border_and_keeps_plain_content(shared_data):
    photo = Image.open(sorted((shared_data / "photos").rglob("*.jpg"))[0]).convert("L")
    framed = ImageOps.expand(photo, border=30, fill=255)
    buf = io.BytesIO()
    framed.save(buf, "JPEG", quality=75)  # JPEG ringing at the border edge must not stop the trim
    framed = Image.open(buf)
    left, top, right, bottom = trim_box(np.asarray(framed))
    assert abs(left - 30) <= 2 and abs(top - 30) <= 2
    assert abs((framed.width - right) - 30) <= 2 and abs((framed.height - bottom) - 30) <= 2
    views_framed, views_plain = view_thumbs(framed), view_thumbs(photo)
    h_trim = phash_thumbs(np.stack([views_framed["trim"], views_plain["trim"]]))
    h_full = phash_thumbs(np.stack([views_framed["phash"], views_plain["phash"]]))
    assert hamming(h_trim[0], h_trim[1]) < hamming(h_full[0], h_full[1])
    assert hamming(h_trim[0], h_trim[1]) <= 6
    flat = np.full((64, 64), 200, np.uint8)
    assert trim_box(flat) == (0, 0, 64, 64)


def test_correlation_scores_near_duplicates_high_and_distinct_images_low(shared_data):
    files = sorted((shared_data / "photos").rglob("*.jpg"))[:2]
    a, b = (Image.open(f).convert("L") for f in files)
    darker = a.point(lambda v: int(v * 0.8))
    scores = correlation(np.stack([thumb(a), thumb(a)]), np.stack([thumb(darker), thumb(b)]))
    assert scores[0] > 0.99 and scores[1] < 0.8
    flat = np.full((1, 32, 32), 9, np.uint8)
    assert correlation(flat, flat)[0] == 1.0 and correlation(flat, thumb(a)[None])[0] == 0.0
