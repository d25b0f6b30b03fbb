"""The downloader's hook for dedup: hash every original image before img2dataset's resizer sees it.

img2dataset's ``download_shard`` fetches in a thread pool and resizes in its main loop; what it
writes is the resized image only. :class:`OriginalHasher` wraps the fetch function: each thread,
right after its image arrived (the bytes as published), computes the training-view hashes and
thumbnails of :mod:`dedup.original` and records them under the sample's key. After the shard is
written, :meth:`OriginalHasher.attach` adds them as ``orig_*`` columns to img2dataset's parquet,
joined on the key img2dataset wrote. Hashing runs in the fetch threads, beside the network waits;
a hash that fails (bytes that are no image to this decoder) leaves nulls, never a failed download.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dedup.original import hash_original, original_columns, params_tag


class _HashingFetch:
    """What img2dataset's downloader calls: the fetcher's ``download_image_with_retry``, hashing on the way."""

    def __init__(self, fetcher: Any, hasher: OriginalHasher):
        self._fetcher = fetcher
        self._hasher = hasher
        self.counters = fetcher.counters

    def download_image_with_retry(self, row, *args, **kwargs):
        key, stream, err = self._fetcher.download_image_with_retry(row, *args, **kwargs)
        if stream is not None:
            self._hasher.record(key, stream.getvalue())
        return key, stream, err


class OriginalHasher:
    """Hashes originals by img2dataset key (an int per sample of the shard), then annotates the parquet."""

    def __init__(self, min_side: int, trim_tol: int):
        self.min_side = min_side
        self.trim_tol = trim_tol
        self.params = params_tag(min_side, trim_tol)
        self.hashes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.failed = 0

    def wrap(self, fetcher: Any) -> _HashingFetch:
        """A stand-in for ``fetcher`` whose downloads are hashed (``SafeDownloader`` takes it as the fetcher)."""
        return _HashingFetch(fetcher, self)

    def record(self, key: int, data: bytes) -> None:
        try:
            self.hashes[key] = hash_original(
                data, self.min_side, self.trim_tol
            )  # one dict store: thread-safe
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


def hash_downloads(config: Any) -> OriginalHasher | None:
    """The hasher for a download stage's config, or ``None`` when ``dedup.hash_at_download`` is off."""
    cfg = config.dedup
    return OriginalHasher(cfg.original_decode_min_side, cfg.trim_tolerance) if cfg.hash_at_download else None
