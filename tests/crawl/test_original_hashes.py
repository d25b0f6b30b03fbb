"""Issue 18: the downloader hashes each original from the decode img2dataset's resizer makes anyway.

The resizer here is img2dataset's own, wrapped as the download stage wraps it
(:class:`~crawl.pixels.NormalizingResizer`, then the hasher); the fetch side is a stand-in that
returns the published bytes as the fetcher would (the loopback download test covers the fetcher).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from crawl.original_hashes import OriginalHasher
from crawl.pixels import NormalizingResizer
from dedup.config import DedupConfig
from dedup.original import hash_original
from dedup.phash import hamming

CFG = DedupConfig()


class _Published:
    """Returns ``(key, stream, None)`` for rows ``(key, bytes)``, as img2dataset's fetch function does."""

    counters = None

    def download_image_with_retry(self, row, *args, **kwargs):
        key, data = row
        return key, io.BytesIO(data), None


def _resize_all(published: list[bytes], min_image_size: int = 0) -> OriginalHasher:
    from img2dataset.resizer import Resizer

    hasher = OriginalHasher(CFG.original_decode_min_side, CFG.trim_tolerance)
    fetch = hasher.wrap(_Published())
    resizer = hasher.wrap_resizer(
        NormalizingResizer(
            Resizer(
                image_size=256,
                resize_mode="center_crop",
                resize_only_if_bigger=False,
                min_image_size=min_image_size,
            )
        )
    )
    for key, data in enumerate(published):
        _, stream, _ = fetch.download_image_with_retry((key, data))
        resizer(stream)  # img2dataset's main loop: the stream its fetch threads returned
    return hasher


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_jpegs_are_hashed_from_the_resizers_decode_equivalently(shared_data):
    files = sorted((shared_data / "photos" / "coco_mini").rglob("*.jpg"))[:12]
    data = [f.read_bytes() for f in files]
    hasher = _resize_all(data)
    assert hasher.from_decode == len(data) and hasher.failed == 0
    for key, d in enumerate(data):
        hashes, thumbs = hasher.hashes[key]
        ref_h, ref_t = hash_original(d, CFG.original_decode_min_side, CFG.trim_tolerance)
        # block means of the full decode vs libjpeg's DCT scaling: the same picture within a few bits
        assert hamming(hashes, ref_h).max() <= 6, files[key]
        r = np.corrcoef(thumbs[0].ravel().astype(float), ref_t[0].ravel().astype(float))[0, 1]
        assert r >= 0.98, (files[key], r)


def test_other_images_are_hashed_from_their_bytes(shared_data):
    img = Image.open(sorted((shared_data / "photos" / "coco_mini").rglob("*.jpg"))[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the NormalizingResizer hands the resizer upright pixels, not these bytes
    published = [
        _bytes(img, "PNG"),
        _bytes(img, "JPEG", quality=90, exif=exif),
        _bytes(img.convert("CMYK"), "JPEG"),
    ]
    hasher = _resize_all(published)
    assert hasher.from_decode == 0 and hasher.failed == 0
    for key, d in enumerate(published):
        ref_h, ref_t = hash_original(d, CFG.original_decode_min_side, CFG.trim_tolerance)
        assert np.array_equal(hasher.hashes[key][0], ref_h) and np.array_equal(hasher.hashes[key][1], ref_t)


def test_images_the_resizer_refuses_are_not_hashed(shared_data):
    data = sorted((shared_data / "photos" / "coco_mini").rglob("*.jpg"))[0].read_bytes()
    hasher = _resize_all([data], min_image_size=5000)  # "image too small": not written, not hashed
    assert hasher.hashes == {} and hasher.pending == {}
