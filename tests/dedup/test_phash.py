"""The pHash view is bit-identical to imagehash.phash on the image webclip decodes; the other views behave."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup.decode import decode_gray
from dedup.hashing import eval_gray, eval_thumbs, hash_training_samples
from dedup.phash import hamming, phash_images, phash_thumbs
from dedup.shards import Sample
from dedup.views import eval_views, image_view_thumbs, trim_boxes
from pipeline.evalsets import open_evalset
from pipeline.evalsets_spec import EvalSetSpec
from pipeline.stats import Stats


def _reference(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def _photos(shared_data):
    files = sorted((shared_data / "photos").rglob("*.jpg"))
    assert len(files) >= 200
    return files


@pytest.mark.parametrize("min_side", [32, 0])
def test_training_hashes_equal_imagehash_on_the_decoded_image_of_every_shared_photo(shared_data, min_side):
    # The training path end to end (bytes -> decoder -> batched thumbnails -> batched DCT) against
    # imagehash.phash applied to the very image the decoder returns: at the default reduced DCT
    # scale and at full size.
    files = _photos(shared_data)
    samples = [Sample(f"{i:05d}", {"jpg": f.read_bytes()}) for i, f in enumerate(files)]
    table = hash_training_samples(samples, "00000", 64, Stats(), min_side, 16)
    ours = table.column("phash").to_numpy()
    ref = np.array(
        [_reference(Image.fromarray(decode_gray(f.read_bytes(), min_side)[0])) for f in files], np.uint64
    )
    mismatched = [str(files[i]) for i in np.flatnonzero(ours != ref)]
    assert not mismatched, mismatched[:5]


def test_eval_hashes_equal_imagehash_on_1000_cifar_images(shared_data):
    es = open_evalset(
        EvalSetSpec(name="c", kind="cifar", path=str(shared_data / "eval" / "cifar10_test.npz"), limit=1000)
    )
    views = eval_views((0.95, 0.9), 3)
    ours, ref = [], []
    for rec in es:
        gray = eval_gray(rec, 32)
        ours.append(phash_thumbs(eval_thumbs(gray, views, 16)[:1])[0])  # view 0: phash
        ref.append(_reference(rec.image))  # imagehash converts the RGB pixels to L itself
        assert np.array_equal(gray, np.asarray(rec.image.convert("L")))
    assert len(ours) == 1000 and np.array_equal(np.array(ours, np.uint64), np.array(ref, np.uint64))


def test_bit_identical_on_full_decodes_and_edge_cases(shared_data):
    # Flat, tiny, palette, RGBA and two-level images: many equal DCT coefficients (ties at the median).
    rng = np.random.default_rng(1)
    images = [Image.open(f) for f in _photos(shared_data)[:20]] + [
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
    photo = Image.open(_photos(shared_data)[0]).convert("L")
    framed = ImageOps.expand(photo, border=30, fill=255)
    buf = io.BytesIO()
    framed.save(buf, "JPEG", quality=75)  # JPEG ringing at the border edge must not stop the trim
    framed_gray = decode_gray(buf.getvalue(), 0)[0]
    left, top, right, bottom = trim_boxes(framed_gray[None])[0]
    w, h = framed.size
    assert abs(left - 30) <= 2 and abs(top - 30) <= 2
    assert abs((w - right) - 30) <= 2 and abs((h - bottom) - 30) <= 2
    plain_gray = np.asarray(photo)
    views = eval_views((), 1, square=False, flip=False, angles=())  # phash, trim
    t_framed = image_view_thumbs(framed_gray, views, tuple(trim_boxes(framed_gray[None])[0]))
    t_plain = image_view_thumbs(plain_gray, views, tuple(trim_boxes(plain_gray[None])[0]))
    h_framed, h_plain = phash_thumbs(t_framed), phash_thumbs(t_plain)
    assert hamming(h_framed[1], h_plain[1]) < hamming(h_framed[0], h_plain[0])
    assert hamming(h_framed[1], h_plain[1]) <= 6
    # A flat image and a side that is "border" beyond max_trim (sky) are content, not borders.
    assert tuple(trim_boxes(np.full((1, 64, 64), 200, np.uint8))[0]) == (0, 0, 64, 64)
    sky = np.full((64, 64), 230, np.uint8)
    sky[40:] = np.random.default_rng(0).integers(0, 256, (24, 64))
    assert tuple(trim_boxes(sky[None])[0]) == (0, 0, 64, 64)


def test_batched_trim_equals_one_at_a_time(shared_data):
    grays = []
    for i, f in enumerate(_photos(shared_data)[:12]):
        img = Image.open(f).convert("L").resize((48, 40))
        grays.append(np.asarray(ImageOps.expand(img, border=(i % 4) * 2, fill=(0, 255, 128, 30)[i % 4])))
    same = [g for g in grays if g.shape == grays[0].shape]
    batched = trim_boxes(np.stack(same))
    singles = np.stack([trim_boxes(g[None])[0] for g in same])
    assert np.array_equal(batched, singles)


def test_eval_views_names_and_boxes():
    views = eval_views((0.95, 0.9), 3)
    names = [v.name for v in views]
    assert names[:8] == ["phash", "trim", "square", "flip", "rotp5", "rotp5_inner", "rotm5", "rotm5_inner"]
    assert len(names) == 8 + 2 * 9
    assert "zoom90_00" in names and "zoom90_22" in names and "zoom95_11" in names
    plain = eval_views((0.9,), 1, square=False, flip=False, angles=())
    assert [v.name for v in plain] == ["phash", "trim", "zoom90"]
    with pytest.raises(ValueError):
        eval_views((1.2,), 3)
