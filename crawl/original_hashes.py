"""The downloader's hook for dedup: hash every original image before img2dataset's resizer crops it.

img2dataset's ``download_shard`` fetches in a thread pool and resizes in its main loop; what it
writes is the resized image only. The resizer decodes each original in full anyway, so the hashes
are taken from *that* decode (:func:`dedup.original.hash_pixels`) instead of a second decode of
the bytes, which cost two thirds of the hashing (a JPEG's entropy decoding is the same work at
any DCT scale):

* :class:`_HashingFetch` wraps the fetch function: each fetch thread notes which sample key the
  image stream it returns belongs to (no work in the fetch threads);
* :class:`_HashingResizer` wraps the resizer: around each call, a tap on img2dataset's
  ``cv2.imdecode`` (:class:`_DecodeTap`) keeps the pixels it decoded, and the sample is hashed from
  them when they are the decode of exactly the published bytes, a baseline/progressive JPEG with 1
  or 3 components; anything else (PNG, WebP, CMYK, 16-bit or EXIF-rotated images the
  :class:`~crawl.pixels.NormalizingResizer` re-expressed, a resizer that did not decode) is hashed
  from its bytes with :func:`dedup.original.hash_original`, as before. Samples the resizer refused
  (too small, bad aspect) are not written, so not hashed.

After the shard is written, :meth:`OriginalHasher.attach` adds the hashes as ``orig_*`` columns to
img2dataset's parquet, joined on the key img2dataset wrote. A hash that fails (bytes that are no
image to this decoder) leaves nulls, never a failed download.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dedup.decode import UndecodableImage, jpeg_header
from dedup.original import hash_original, hash_pixels, original_columns, params_tag


class _HashingFetch:
    """What img2dataset's downloader calls: the fetcher's ``download_image_with_retry``, noting each
    returned stream's sample key for :class:`_HashingResizer`."""

    def __init__(self, fetcher: Any, hasher: OriginalHasher):
        self._fetcher = fetcher
        self._hasher = hasher
        self.counters = fetcher.counters

    def download_image_with_retry(self, row, *args, **kwargs):
        key, stream, err = self._fetcher.download_image_with_retry(row, *args, **kwargs)
        if stream is not None:
            # keyed by the object's id; the stream itself is kept so the id cannot be reused
            self._hasher.pending[id(stream)] = (key, stream)  # one dict store: thread-safe
        return key, stream, err


class _DecodeTap:
    """Stands in for the ``cv2`` module inside ``img2dataset.resizer``: every attribute is cv2's,
    and ``imdecode`` also keeps (per thread) the buffer and the pixels of its last call."""

    def __init__(self, cv2: Any):
        self._cv2 = cv2
        self.local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cv2, name)

    def imdecode(self, buf: np.ndarray, flags: int) -> Any:
        img = self._cv2.imdecode(buf, flags)
        self.local.last = (buf, img)
        return img

    def take(self) -> tuple[np.ndarray, Any] | None:
        """The last decode of this thread since the previous ``take`` (``None`` if none)."""
        last = getattr(self.local, "last", None)
        self.local.last = None
        return last


_TAP_LOCK = threading.Lock()


def _decode_tap() -> _DecodeTap:
    """The tap installed on ``img2dataset.resizer`` (once per process)."""
    import img2dataset.resizer as resizer_module

    with _TAP_LOCK:
        if not isinstance(resizer_module.cv2, _DecodeTap):
            resizer_module.cv2 = _DecodeTap(resizer_module.cv2)
        return resizer_module.cv2


class _HashingResizer:
    """img2dataset's resizer (same call and results), hashing each written sample's original."""

    def __init__(self, resizer: Any, hasher: OriginalHasher):
        self._resizer = resizer
        self._hasher = hasher
        self._tap = _decode_tap()

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> Any:
        key, _ = self._hasher.pending.pop(id(img_stream), (None, None))
        self._tap.take()  # nothing left over from a call that raised
        out = self._resizer(img_stream, blurring_bbox_list)
        decoded = self._tap.take()
        if key is not None and out[-1] is None:  # written: no error
            self._hasher.record(key, img_stream.getvalue(), decoded)
        return out


class OriginalHasher:
    """Hashes originals by img2dataset key (an int per sample of the shard), then annotates the parquet."""

    def __init__(self, min_side: int, trim_tol: int):
        self.min_side = min_side
        self.trim_tol = trim_tol
        self.params = params_tag(min_side, trim_tol)
        self.hashes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.pending: dict[int, tuple[int, io.BytesIO]] = {}
        self.failed = 0
        self.from_decode = 0  # hashed from the resizer's decode (the rest: from the bytes)

    def wrap(self, fetcher: Any) -> _HashingFetch:
        """A stand-in for ``fetcher`` whose downloads are noted (``SafeDownloader`` takes it as the fetcher)."""
        return _HashingFetch(fetcher, self)

    def wrap_resizer(self, resizer: Any) -> _HashingResizer:
        """A stand-in for img2dataset's ``resizer`` that hashes each original it resized."""
        return _HashingResizer(resizer, self)

    def record(self, key: int, data: bytes, decoded: tuple[np.ndarray, Any] | None = None) -> None:
        """Hash sample ``key`` from ``decoded`` (the resizer's ``(buffer, pixels)``) when that is the
        full decode of ``data``, a JPEG of 1 or 3 components; else from ``data``."""
        try:
            pixels = _jpeg_pixels(data, decoded)
            if pixels is not None:
                self.hashes[key] = hash_pixels(pixels, self.min_side, self.trim_tol)
                self.from_decode += 1
            else:
                self.hashes[key] = hash_original(data, self.min_side, self.trim_tol)
        except Exception:  # not decodable here: img2dataset's resizer decides whether it is an image
            self.failed += 1

    def attach(self, parquet: Path, shard_id: int, samples_per_shard: int, shard_digits: int) -> None:
        """Rewrite img2dataset's shard parquet with the ``orig_*`` columns (nulls where not hashed)."""
        table = pq.read_table(parquet)
        oom = math.ceil(math.log10(samples_per_shard))
        base = (10**oom) * shard_id
        rows = []
        for k, status in zip(
            table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True
        ):
            rec = self.hashes.get(int(k) - base) if k is not None and status == "success" else None
            rows.append(rec)
        for name, col in original_columns(rows, self.params).items():
            table = table.append_column(name, col)
        pq.write_table(table, parquet)


def _jpeg_pixels(data: bytes, decoded: tuple[np.ndarray, Any] | None) -> np.ndarray | None:
    """The resizer's pixels when they are the plain decode of ``data`` (a 1- or 3-component JPEG,
    decoded to 8-bit gray or BGR from exactly these bytes), else ``None``."""
    if decoded is None:
        return None
    buf, img = decoded
    if img is None or img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        return None
    try:
        head = jpeg_header(data)
    except UndecodableImage:
        return None
    if (
        head is None
        or head.components not in (1, 3)
        or (img.shape[1], img.shape[0]) != (head.width, head.height)
    ):
        return None
    if len(buf) != len(data) or not np.array_equal(buf, np.frombuffer(data, np.uint8)):
        return None  # the resizer decoded other bytes (re-expressed 16-bit or EXIF-rotated pixels)
    return img


def hash_as_downloaded(data: bytes, min_side: int, trim_tol: int) -> tuple[np.ndarray, np.ndarray]:
    """What the downloader stores for published ``data``: hashed from img2dataset's decode
    (``cv2.imdecode``, unchanged) where :meth:`OriginalHasher.record` would use it, else from the bytes.
    For benchmarks and tests that stand in for the download; raises for bytes that are no image."""
    import cv2

    buf = np.frombuffer(data, np.uint8)
    pixels = _jpeg_pixels(data, (buf, cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)))
    if pixels is not None:
        return hash_pixels(pixels, min_side, trim_tol)
    return hash_original(data, min_side, trim_tol)


def hash_downloads(config: Any) -> OriginalHasher | None:
    """The hasher for a download stage's config, or ``None`` when ``dedup.hash_at_download`` is off."""
    cfg = config.dedup
    return OriginalHasher(cfg.original_decode_min_side, cfg.trim_tolerance) if cfg.hash_at_download else None
