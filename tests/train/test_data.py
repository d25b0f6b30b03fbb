"""The training loader and its transforms: uint8 crops normalised on the device, CLIP's crop made cheaper
without changing what the model sees, counted drops, exact replay of a saved position."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import ShardBatches, list_shards, make_loader
from train.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    _draft_scale,
    crop_resize,
    normalize_images,
    random_resized_crop_box,
    to_tensor,
    train_transform,
)


def _photo_like(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG (q95) with smooth structure and some texture, like a downscaled photo."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((width, height), Image.BICUBIC)).astype(np.int16)
    arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _clip_reference(data: bytes, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """What torchvision's RandomResizedCrop does on a PIL image: full decode, antialiased bicubic."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(img.resize((size, size), Image.BICUBIC, box=box))


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def test_normalize_images_is_clip_normalisation_and_eval_uses_it():
    pixels = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    x = normalize_images(pixels)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    expect = (
        pixels.double().permute(0, 3, 1, 2) / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1).double()
    ) / (torch.tensor(CLIP_STD).view(1, 3, 1, 1).double())
    assert torch.allclose(x.double(), expect, atol=1e-6)
    # eval's to_tensor and the trainer's device-side normalisation give bit-identical inputs
    assert torch.equal(to_tensor(Image.fromarray(pixels[1].numpy())), x[1])


def test_large_jpeg_is_decoded_at_reduced_scale_and_matches_clip_crop():
    data = _photo_like(1024, 768)
    box = (40, 30, 1000, 750)  # 960 x 720 -> 224: a 3.2x shrink, decoded at 1/2
    img = Image.open(io.BytesIO(data))
    assert _draft_scale(img, box, 224) == 2 and img.size == (512, 384)  # set to decode at 1/2
    out = crop_resize(Image.open(io.BytesIO(data)), box, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # the DCT-domain 1/2 decode then bicubic is within a grey level of CLIP's full-resolution crop
    assert _mean_abs_diff(out, _clip_reference(data, box, 224)) < 1.0
    # a crop that keeps fewer than 2x the output pixels is never drafted
    assert _draft_scale(Image.open(io.BytesIO(data)), (0, 0, 440, 440), 224) == 1


@pytest.mark.parametrize("box", [(3, 5, 250, 250), (0, 0, 256, 256), (100, 90, 180, 150)])
def test_small_crop_resized_by_opencv_matches_clip_crop(box):
    data = _photo_like(256, 256, seed=1)
    out = crop_resize(Image.open(io.BytesIO(data)), box, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # OpenCV's cubic (downscale < 1.5x, or upscale) vs Pillow's bicubic: under 1.5 grey levels
    assert _mean_abs_diff(out, _clip_reference(data, box, 224)) < 1.5


def test_train_transform_is_seeded_and_composites_alpha_on_white():
    rgba = Image.new("RGBA", (120, 80), (255, 255, 255, 0))
    a = train_transform(32)(rgba, random.Random(1))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and (a == 255).all()
    data = _photo_like(320, 304, seed=2)
    x = train_transform(64)(Image.open(io.BytesIO(data)), random.Random(7))
    y = train_transform(64)(Image.open(io.BytesIO(data)), random.Random(7))
    z = train_transform(64)(Image.open(io.BytesIO(data)), random.Random(8))
    assert np.array_equal(x, y) and not np.array_equal(x, z)
    box = random_resized_crop_box(320, 304, random.Random(7), (0.9, 1.0), (3 / 4, 4 / 3))
    assert _mean_abs_diff(x, _clip_reference(data, box, 64)) < 2.5  # a 3x shrink, drafted at 1/2


def _take(ds: ShardBatches, n: int) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_loader_batches_are_uint8_counts_the_corrupt_sample_and_replays_a_position(shards, tokenizer):
    ds = ShardBatches(shards, tokenizer, 32, 8, seed=3, shuffle=16)
    batches = _take(ds, 17)  # 4 shards x 32 samples, 1 corrupt: 15 full batches, then epoch 1
    images, tokens, _ = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (8, 32, 32, 3) and tokens.shape == (8, 77)
    assert len({b[0].numpy().tobytes() for b in batches[:15]}) == 15  # a fresh buffer per batch
    counts = sum((Counter(m["counts"]) for *_, m in batches), start=Counter())
    assert counts["corrupt_image"] == 1 and counts["epoch_remainder"] == 127 - 15 * 8
    assert [m["epoch"] for *_, m in batches] == [0] * 15 + [1] * 2

    # a new loader started at batch 5's saved position yields exactly batches 6, 7, ...
    m5 = batches[5][2]
    resumed = _take(
        ShardBatches(shards, tokenizer, 32, 8, seed=3, shuffle=16, start={0: (m5["epoch"], m5["pos"])}), 3
    )
    for (a, ta, _), (b, tb, _) in zip(resumed, batches[6:9], strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_loader_workers_send_shared_memory_batches_intact(shards, tokenizer):
    ds = ShardBatches(shards, tokenizer, 32, 8, seed=3, shuffle=16)
    first = [b for b, _ in zip(make_loader(ds, 2), range(6), strict=False)]
    again = [b for b, _ in zip(make_loader(ds, 2), range(6), strict=False)]
    assert {m["worker"] for *_, m in first} == {0, 1}
    for (a, ta, _), (b, tb, _) in zip(first, again, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(ta, tb)
    assert len({a.numpy().tobytes() for a, *_ in first}) == 6


@pytest.mark.parametrize("width,height", [(1023, 769), (901, 1500)])
def test_odd_sized_jpeg_drafts_at_the_planned_scale(width, height):
    data = _photo_like(width, height, seed=3)
    box = (0, 0, width, height)  # a >= 4x shrink to 224 on the shorter side
    planned = 4 if min(width, height) >= 4 * 224 else 2
    assert _draft_scale(Image.open(io.BytesIO(data)), box, 224) == planned
    out = crop_resize(Image.open(io.BytesIO(data)), box, 224)
    assert _mean_abs_diff(out, _clip_reference(data, box, 224)) < 1.0


def test_large_png_is_box_reduced_first_and_matches_clip_crop():
    img = Image.open(io.BytesIO(_photo_like(1200, 1000, seed=4))).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    box = (10, 20, 1190, 990)
    out = crop_resize(Image.open(io.BytesIO(data)), box, 224)
    assert _mean_abs_diff(out, _clip_reference(data, box, 224)) < 1.0


def test_list_shards_takes_a_folder_glob_brace_pattern_or_list(tmp_path):
    for name in ("00001.tar", "00000.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    want = [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
    assert list_shards(str(tmp_path)) == want  # a folder: its tars, in order (e.g. <run>/clean)
    assert list_shards(str(tmp_path) + "/") == want
    assert list_shards(str(tmp_path / "*.tar")) == want
    assert list_shards(str(tmp_path / "{00000..00001}.tar")) == want
    assert list_shards(want[::-1]) == want[::-1]
    assert list_shards(str(tmp_path / "00000.tar")) == want[:1]
    assert list_shards(str(tmp_path / "missing")) == [str(tmp_path / "missing")]  # a URL, opened later
