"""Hash one training shard or one evaluation set: sha256 of the bytes, pHash of every view, thumbnails.

Training images get two views (``phash``, imagehash-identical, and ``trim``); evaluation images get
those plus one ``zoomNN`` centre crop per configured zoom, and keep their 32×32 view thumbnails in
the hashes file (eval sets are small) for verification. Decoding is per image with PIL, exactly as
``imagehash`` decodes (``Image.open`` then ``convert("L")``); the DCTs run once per batch.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image

from dedup.phash import phash_thumbs, view_thumbs
from pipeline.evalsets import EvalSet
from pipeline.stats import Stats

TRAIN_VIEWS = ("phash", "trim")


def zoom_views(zooms: Iterable[float]) -> tuple[str, ...]:
    return tuple(f"zoom{round(z * 100)}" for z in zooms)


def decode_gray(data: bytes, fast: bool = False) -> Image.Image:
    """Decode image bytes as mode ``L``.

    Default: exactly as ``imagehash.phash(Image.open(...))`` sees them (full decode, then
    ``convert("L")``), so the ``phash`` view equals imagehash's. ``fast``: JPEGs are decoded by
    libjpeg straight to grayscale at a reduced scale (DCT-domain scaling, ``Image.draft``) of at
    least 64 px a side; about 2× less decoding work, and the hash is then that of a slightly
    different (downscaled) image, no longer bit-identical to imagehash on the full decode.
    """
    img = Image.open(io.BytesIO(data))
    if fast and img.format == "JPEG":
        img.draft("L", (64, 64))
    return img.convert("L")


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def hash_views(
    grays: list[Image.Image], zooms: tuple[float, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """For decoded grayscale images: ``{view: uint64 hashes}`` and ``{view: (B, 32, 32) thumbnails}``."""
    per_image = [view_thumbs(g, zooms) for g in grays]
    names = list(per_image[0]) if per_image else ["phash", "trim", *zoom_views(zooms)]
    thumbs = {
        v: np.stack([p[v] for p in per_image]) if per_image else np.zeros((0, 32, 32), np.uint8)
        for v in names
    }
    return {v: phash_thumbs(t) for v, t in thumbs.items()}, thumbs


def hash_training_samples(
    samples: Iterable, shard: str, batch_size: int, stats: Stats, fast_decode: bool = False
) -> pa.Table:
    """Hashes of every sample of one shard: one row each, ``status`` ``ok`` or why it has no hash."""
    rows: dict[str, list] = {k: [] for k in ("shard", "key", "uid", "sha256", "status", "width", "height")}
    hashes: dict[str, list] = {v: [] for v in TRAIN_VIEWS}
    trimmed: list[bool] = []
    for batch in _batched(samples, batch_size):
        grays, ok_rows = [], []
        for s in batch:
            data = s.image
            rows["shard"].append(shard)
            rows["key"].append(s.key)
            rows["uid"].append(str(s.meta.get("uid", "")) or None)
            rows["sha256"].append(hashlib.sha256(data).hexdigest() if data else None)
            status, size = "ok", (None, None)
            if data is None:
                status = "no_image"
            else:
                try:
                    g = decode_gray(data, fast_decode)
                    grays.append(g)
                    ok_rows.append(len(rows["key"]) - 1)
                    size = g.size
                except Exception as exc:  # a broken image is a counted drop, not a crash
                    status = f"undecodable: {type(exc).__name__}"
            rows["status"].append(status)
            rows["width"].append(size[0])
            rows["height"].append(size[1])
            stats.inc("samples")
            if status != "ok":
                stats.drop("no_image" if data is None else "undecodable")
        view_hashes, thumbs = hash_views(grays, ())
        # Rows without a hash keep nulls; fill this batch's slots in order.
        start = len(trimmed)
        for v in TRAIN_VIEWS:
            hashes[v].extend([None] * len(batch))
        trimmed.extend([None] * len(batch))
        for j, r in enumerate(ok_rows):
            for v in TRAIN_VIEWS:
                hashes[v][r] = int(view_hashes[v][j])
            trimmed[r] = bool(not np.array_equal(thumbs["trim"][j], thumbs["phash"][j]))
        stats.inc("hashed", len(ok_rows))
        assert len(trimmed) == start + len(batch)
    cols = {k: pa.array(v, pa.string()) for k, v in rows.items() if k not in ("width", "height")}
    cols["width"] = pa.array(rows["width"], pa.int32())
    cols["height"] = pa.array(rows["height"], pa.int32())
    cols["phash"] = pa.array(hashes["phash"], pa.uint64())
    cols["phash_trim"] = pa.array(hashes["trim"], pa.uint64())
    cols["trimmed"] = pa.array(trimmed, pa.bool_())
    return pa.table(cols)


def hash_evalset(es: EvalSet, zooms: tuple[float, ...], batch_size: int, stats: Stats) -> pa.Table:
    """Hashes and view thumbnails of every image of an evaluation set (undecodable ones with status and nulls)."""
    views = ["phash", "trim", *zoom_views(zooms)]
    cols: dict[str, list] = {k: [] for k in ("eval_id", "label", "sha256", "status")}
    hcols: dict[str, list] = {v: [] for v in views}
    tcols: dict[str, list] = {v: [] for v in views}
    for batch in _batched(es, batch_size):
        grays, ok = [], []
        for rec in batch:
            cols["eval_id"].append(rec.eval_id)
            cols["label"].append(rec.label)
            try:
                cols["sha256"].append(rec.sha256())
                grays.append(rec.gray())
                ok.append(True)
                cols["status"].append("ok")
            except Exception as exc:  # counted, kept as a row without hashes
                if len(cols["sha256"]) < len(cols["eval_id"]):
                    cols["sha256"].append(None)
                ok.append(False)
                cols["status"].append(f"undecodable: {type(exc).__name__}")
                stats.drop("eval_undecodable")
        vh, th = hash_views(grays, zooms)
        j = 0
        for good in ok:
            for v in views:
                hcols[v].append(int(vh[v][j]) if good else None)
                tcols[v].append(th[v][j].tobytes() if good else None)
            j += int(good)
        stats.inc("eval_images", len(batch))
    table = {
        "eval_id": pa.array(cols["eval_id"], pa.string()),
        "label": pa.array(cols["label"], pa.int64()),
        "class_name": pa.array([es.classes[i] for i in cols["label"]], pa.string()),
        "sha256": pa.array(cols["sha256"], pa.string()),
        "status": pa.array(cols["status"], pa.string()),
    }
    for v in views:
        table["phash" if v == "phash" else f"phash_{v}"] = pa.array(hcols[v], pa.uint64())
    for v in views:
        table[f"thumb_{v}"] = pa.array(tcols[v], pa.binary())
    return pa.table(table)
