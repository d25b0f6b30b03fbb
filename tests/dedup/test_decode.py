"""The shared decoder: pixel-identical to Pillow's draft-mode decode, the documented scale rule, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup.decode import UndecodableImage, decode_gray, jpeg_header, scale_for


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _pillow_draft(data: bytes, min_side: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.draft("L", (min_side, min_side))
    return np.asarray(img.convert("L"))


def test_equals_pillow_draft_decode_on_real_photos_and_their_variants(shared_data):
    files = sorted((shared_data / "photos").rglob("*.jpg"))[::4]
    checked = 0
    for f in files:
        rgb = Image.open(f).convert("RGB")
        variants = [
            f.read_bytes(),
            _jpeg(ImageOps.pad(rgb, (256, 256), color=(255, 255, 255)), quality=95),  # img2dataset border
            _jpeg(rgb.convert("L"), quality=80),  # one-component JPEG
            _jpeg(rgb, quality=70, progressive=True),
            _jpeg(rgb.resize((251, 177)), quality=90, subsampling=0),  # odd size, 4:4:4
        ]
        for data in variants:
            for min_side in (32, 64):
                ours, size = decode_gray(data, min_side)
                assert size == Image.open(io.BytesIO(data)).size
                assert np.array_equal(ours, _pillow_draft(data, min_side)), (f, min_side)
                checked += 1
    assert checked >= 500


def test_scale_rule_and_header():
    assert [
        scale_for(256, 256, 32),
        scale_for(255, 256, 32),
        scale_for(100, 640, 32),
        scale_for(20, 20, 32),
    ] == [
        8,
        4,
        2,
        1,
    ]
    data = _jpeg(Image.new("RGB", (300, 200), (10, 20, 30)))
    head = jpeg_header(data)
    assert (head.width, head.height, head.components) == (300, 200, 3)
    assert decode_gray(data, 32)[0].shape == (50, 75)  # 200 // 32 = 6: scale 1/4
    assert decode_gray(data, 0)[0].shape == (200, 300)
    assert jpeg_header(b"\x89PNG\r\n") is None


def test_other_formats_and_cmyk_jpegs_go_through_pillow():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    gray, size = decode_gray(buf.getvalue(), 32)
    assert size == (50, 40) and np.array_equal(gray, np.asarray(rgb.convert("L")))
    cmyk = _jpeg(rgb.convert("CMYK"), quality=95)
    assert jpeg_header(cmyk).components == 4
    gray, _ = decode_gray(cmyk, 0)
    assert np.array_equal(gray, np.asarray(Image.open(io.BytesIO(cmyk)).convert("L")))


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", b"not an image at all", b"\xff\xd8\xff\xd9"]
)
def test_broken_bytes_raise(data):
    with pytest.raises((UndecodableImage, OSError, ValueError)):
        decode_gray(data, 32)
