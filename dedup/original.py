"""Hashes of the *original* image, computed where the downloader still holds it, and read back by dedup.

img2dataset's resizer keeps only part of what was published (``center_crop``, webclip's default,
keeps the centre square at 256 px), so hashing the stored image compares a crop of the original with
views of the eval image — and no view lines up with every resize mode. The downloader therefore
hashes the full original bytes before the resizer sees them (:mod:`crawl.original_hashes`) and the
shard parquet carries, per sample:

* ``orig_phash``, ``orig_phash_trim``, ``orig_phash_inner`` (uint64): the training views
  (:data:`dedup.views.TRAIN_VIEWS`) of the original, with the same decoder and views dedup uses;
* ``orig_thumbs`` (binary, ``len(TRAIN_VIEWS)`` × 32 × 32 bytes): their thumbnails, what
  verification compares with the eval image's thumbnails (about 3 KB a sample before compression);
* ``orig_hash_params``: the decoder and border settings they were made with; dedup uses the columns
  only when they equal its own (else it hashes the stored image and says so in its stats).

Shards without these columns (plain img2dataset) are hashed from the stored image, as before.
"""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from dedup.decode import decode_gray, scale_for
from dedup.hashing import view_column
from dedup.phash import THUMB, phash_thumbs
from dedup.views import TRAIN_VIEWS, train_thumbs

PREFIX = "orig_"
THUMBS_COLUMN = "orig_thumbs"
PARAMS_COLUMN = "orig_hash_params"
HASH_COLUMNS = tuple(PREFIX + view_column(v.name) for v in TRAIN_VIEWS)
_THUMB_BYTES = len(TRAIN_VIEWS) * THUMB * THUMB


def params_tag(min_side: int, trim_tol: int) -> str:
    """What the hashes depend on besides the image: the views, the decoder's scale, the border tolerance."""
    return f"v1 views={','.join(v.name for v in TRAIN_VIEWS)} min_side={min_side} trim_tol={trim_tol}"


def hash_original(data: bytes, min_side: int, trim_tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Training-view hashes ``(V,)`` uint64 and thumbnails ``(V, 32, 32)`` uint8 of one image's bytes.

    Raises what the decoder raises for bytes that are not an image.
    """
    gray, _ = decode_gray(data, min_side)
    thumbs, _ = train_thumbs([gray], trim_tol)
    return phash_thumbs(thumbs[0]), thumbs[0]


def hash_pixels(pixels: np.ndarray, min_side: int, trim_tol: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hash_original` of a JPEG from its full-size decode (``pixels``: OpenCV's BGR or gray uint8),
    as img2dataset's resizer has it anyway: no second decode.

    The gray image is the luma (``cv2.cvtColor``, the ITU-R 601 weights libjpeg's Y uses) averaged
    over N×N blocks (``INTER_AREA``) at the scale 1/N :func:`~dedup.decode.decode_gray` picks for
    ``min_side``: what libjpeg's DCT scaling computes (exactly the block means at 1/8, a low-pass
    of them at 1/4 and 1/2). Not bit-identical to it: on 300 COCO photos the hashes differ by 0.5 bits
    on average (at most 4) and the thumbnails correlate at ≥ 0.985 (BENCHMARKS.md, issue 18).
    """
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    n = scale_for(w, h, min_side) if min_side > 1 else 1
    if n > 1:  # libjpeg's scaled size: ceil(side / N)
        gray = cv2.resize(gray, (-(-w // n), -(-h // n)), interpolation=cv2.INTER_AREA)
    thumbs, _ = train_thumbs([gray], trim_tol)
    return phash_thumbs(thumbs[0]), thumbs[0]


def original_columns(rows: list[tuple[np.ndarray, np.ndarray] | None], params: str) -> dict[str, pa.Array]:
    """The shard parquet's original-hash columns for ``rows`` (``None``: no hash, nulls)."""
    mask = np.array([r is None for r in rows], bool)
    hashes = np.zeros((len(rows), len(TRAIN_VIEWS)), np.uint64)
    for i, r in enumerate(rows):
        if r is not None:
            hashes[i] = r[0]
    cols: dict[str, pa.Array] = {
        name: pa.array(hashes[:, j], pa.uint64(), mask=mask) for j, name in enumerate(HASH_COLUMNS)
    }
    cols[THUMBS_COLUMN] = pa.array([None if r is None else r[1].tobytes() for r in rows], pa.binary())
    cols[PARAMS_COLUMN] = pa.array([None if r is None else params for r in rows], pa.string())
    return cols


def has_originals(columns: list[str]) -> bool:
    """Whether a shard parquet with these columns carries original hashes."""
    return all(c in columns for c in (*HASH_COLUMNS, THUMBS_COLUMN, PARAMS_COLUMN))


def read_originals(table: pa.Table, params: str) -> dict[str, np.ndarray]:
    """``{key: (V,) uint64}`` for the rows of a shard parquet hashed with ``params``."""
    keys = table.column("key").to_pylist()
    ok = [p == params for p in table.column(PARAMS_COLUMN).to_pylist()]
    cols = np.stack([table.column(c).fill_null(0).to_numpy().astype(np.uint64) for c in HASH_COLUMNS], 1)
    return {k: cols[i] for i, k in enumerate(keys) if ok[i]}


def read_thumbs(table: pa.Table, params: str, keys: set[str]) -> dict[str, np.ndarray]:
    """``{key: (V, 32, 32) uint8}`` thumbnails of the wanted ``keys`` hashed with ``params``."""
    out = {}
    for key, blob, p in zip(
        table.column("key").to_pylist(),
        table.column(THUMBS_COLUMN).to_pylist(),
        table.column(PARAMS_COLUMN).to_pylist(),
        strict=True,
    ):
        if key in keys and p == params and blob is not None and len(blob) == _THUMB_BYTES:
            out[key] = np.frombuffer(blob, np.uint8).reshape(len(TRAIN_VIEWS), THUMB, THUMB)
    return out


def shard_parquet(stem: str) -> str:
    """The download stage's parquet of shard ``stem`` (``shards/NNNNN.parquet``)."""
    return f"shards/{stem}.parquet"


def load_shard_table(run, stem: str, with_thumbs: bool) -> pa.Table | None:
    """The original-hash columns (and ``key``) of a shard's parquet; ``None`` when it has none
    (a plain img2dataset shard, or no parquet at all)."""
    import pyarrow.parquet as pq

    rel = shard_parquet(stem)
    if not run.exists(rel):
        return None
    with run.fs.open(run.path(rel), "rb") as fh:
        names = pq.read_schema(fh).names
    if not has_originals(names):
        return None
    cols = ["key", *HASH_COLUMNS, PARAMS_COLUMN] + ([THUMBS_COLUMN] if with_thumbs else [])
    return run.read_parquet(rel, columns=cols)
