"""One image rule for every stage: 16-bit grayscale scaled (Pillow clips it), alpha onto white."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dedup.decode import decode_gray
from pipeline.evalsets import EvalRecord
from pipeline.images import to_rgb
from train.transforms import eval_transform, train_transform


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def _png(array: np.ndarray, mode: str | None = None) -> Image.Image:
    return Image.open(io.BytesIO(_png_bytes(array, mode)))


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    img = _png(ramp)
    assert img.mode.startswith("I")  # what Pillow opens a 16-bit PNG as
    assert np.asarray(img.convert("RGB")).mean() > 250  # Pillow's own conversion: nearly all white
    rgb = np.asarray(to_rgb(img)).astype(int)
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - np.rint(ramp / 257.0)).max() == 0
    # every stage that reads images sees the scaled values: eval sets, the eval and train transforms
    record = EvalRecord("x", 0, image_bytes=_png_bytes(ramp))
    assert np.array_equal(np.asarray(record.rgb()), rgb)
    crop = train_transform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))(_png(ramp))
    assert 100 < crop.mean() < 155  # mid-grey on average, as the ramp is; clipped it would be ~255
    assert eval_transform(32)(_png(ramp)).mean() < 0.5
    # and dedup hashes the same grey levels (its own decoder, and the eval set's gray view)
    assert np.array_equal(decode_gray(_png_bytes(ramp), 1)[0], rgb[..., 0])
    assert np.array_equal(np.asarray(record.gray()), rgb[..., 0])


def test_transparency_is_composited_onto_white_and_rgb_is_unchanged():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (10, 20, 30, 255)  # top half opaque, bottom half fully transparent (black)
    out = np.asarray(to_rgb(_png(rgba)))
    assert (out[:4] == (10, 20, 30)).all() and (out[4:] == 255).all()
    la = _png(
        np.dstack(
            [
                np.full((8, 8), 40, np.uint8),
                np.where(np.arange(8) < 4, 255, 0)[None].repeat(8, 0).astype(np.uint8),
            ]
        ),
        "LA",
    )
    out = np.asarray(to_rgb(la))
    assert (out[:, :4] == 40).all() and (out[:, 4:] == 255).all()
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(rgb) is rgb
    assert np.asarray(to_rgb(Image.new("L", (4, 4), 77))).tolist() == [[[77] * 3] * 4] * 4
