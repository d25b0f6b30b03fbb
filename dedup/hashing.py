"""Hash one training shard or one evaluation set: sha256 of the bytes and the pHash of every view.

Every image, training or eval, goes through the same decoder (:func:`dedup.decode.decode_gray`,
JPEGs at a reduced DCT scale straight to grayscale) and the same view thumbnails
(:mod:`dedup.views`), so both sides of a pair see one pipeline. Array eval sets (CIFAR, MNIST) have no
encoded bytes: their pixels are the decoded image (``convert("L")``, as imagehash converts).
Per image there is only the tar read, sha256 and the decode; the border search, the DCT, median and
bit packing run once per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from dedup.decode import decode_gray
from dedup.phash import phash_thumbs
from dedup.views import View, image_view_thumbs, train_thumbs, trim_boxes
from pipeline.evalsets import EvalRecord, EvalSet
from pipeline.images import to_8bit
from pipeline.stats import Stats


def view_column(name: str) -> str:
    """Parquet column of a view's hash: ``phash`` for the plain view, ``phash_<view>`` otherwise."""
    return "phash" if name == "phash" else f"phash_{name}"


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def hash_training_samples(
    samples: Iterable, shard: str, batch_size: int, stats: Stats, min_side: int, trim_tol: int
) -> pa.Table:
    """Hashes of every sample of one shard: one row each, ``status`` ``ok`` or why it has no hash.

    Columns: shard, key, uid, sha256, status, width, height (of the stored image), phash,
    phash_trim, trimmed.
    """
    cols: dict[str, list] = {k: [] for k in ("shard", "key", "uid", "sha256", "status", "width", "height")}
    phash_parts, trim_parts, trimmed_parts, ok_parts = [], [], [], []
    for batch in _batched(samples, batch_size):
        grays, ok = [], np.zeros(len(batch), bool)
        for j, s in enumerate(batch):
            data = s.image
            cols["shard"].append(shard)
            cols["key"].append(s.key)
            cols["uid"].append(str(s.meta.get("uid", "")) or None)
            cols["sha256"].append(hashlib.sha256(data).hexdigest() if data else None)
            status, size = "ok", (None, None)
            if data is None:
                status = "no_image"
            else:
                try:
                    gray, size = decode_gray(data, min_side)
                    grays.append(gray)
                    ok[j] = True
                except Exception as exc:  # a broken image is a counted drop, not a crash
                    status = f"undecodable: {type(exc).__name__}"
            cols["status"].append(status)
            cols["width"].append(size[0])
            cols["height"].append(size[1])
            if status != "ok":
                stats.drop("no_image" if data is None else "undecodable")
        plain, trim, trimmed = train_thumbs(grays, trim_tol)
        h_plain = phash_thumbs(plain)
        h_trim = h_plain.copy()
        h_trim[trimmed] = phash_thumbs(trim[trimmed])
        # Rows without a hash keep nulls (a masked slot per failed sample).
        for part, values in ((phash_parts, h_plain), (trim_parts, h_trim), (trimmed_parts, trimmed)):
            full = np.zeros(len(batch), values.dtype)
            full[ok] = values
            part.append(full)
        ok_parts.append(ok)
        stats.inc("samples", len(batch))
        stats.inc("hashed", int(ok.sum()))
    valid = np.concatenate(ok_parts) if ok_parts else np.zeros(0, bool)

    def masked(parts: list[np.ndarray], typ: pa.DataType) -> pa.Array:
        values = np.concatenate(parts) if parts else np.zeros(0)
        return pa.array(values, typ, mask=~valid)

    table = {k: pa.array(v, pa.string()) for k, v in cols.items() if k not in ("width", "height")}
    table["width"] = pa.array(cols["width"], pa.int32())
    table["height"] = pa.array(cols["height"], pa.int32())
    table["phash"] = masked(phash_parts, pa.uint64())
    table["phash_trim"] = masked(trim_parts, pa.uint64())
    table["trimmed"] = masked(trimmed_parts, pa.bool_())
    return pa.table(table)


def extreme_fraction(thumbs: np.ndarray) -> np.ndarray:
    """Per 32×32 thumbnail, the fraction of pixels near black or white (≤ 16 or ≥ 239): ~0.8 for
    MNIST digits, under 0.2 for photos; the eval set's mean decides profile ``auto``."""
    t = thumbs.reshape(len(thumbs), -1)
    return ((t <= 16) | (t >= 239)).mean(axis=1)


def eval_gray(rec: EvalRecord, min_side: int) -> np.ndarray:
    """The decoded grayscale image of an eval record: its bytes through :func:`decode_gray`, or its pixels."""
    if rec.image_bytes is not None:
        return decode_gray(rec.image_bytes, min_side)[0]
    if rec.image is None:
        raise ValueError(f"eval record {rec.eval_id!r} has no image")
    return np.asarray(to_8bit(rec.image).convert("L"))


def eval_thumbs(gray: np.ndarray, views: tuple[View, ...], trim_tol: int) -> np.ndarray:
    """Thumbnails ``(V, 32, 32)`` of every eval view of one decoded eval image."""
    box = tuple(int(x) for x in trim_boxes(gray[None], trim_tol)[0])
    return image_view_thumbs(gray, views, box)


def hash_evalset(
    es: EvalSet, views: tuple[View, ...], batch_size: int, stats: Stats, min_side: int, trim_tol: int
) -> pa.Table:
    """Hashes of every view of every image of an evaluation set (undecodable ones with status and nulls)."""
    cols: dict[str, list] = {k: [] for k in ("eval_id", "label", "sha256", "status")}
    parts: list[np.ndarray] = []
    extreme_parts: list[np.ndarray] = []
    ok_parts: list[np.ndarray] = []
    for batch in _batched(es, batch_size):
        thumbs, ok = [], np.zeros(len(batch), bool)
        for j, rec in enumerate(batch):
            cols["eval_id"].append(rec.eval_id)
            cols["label"].append(rec.label)
            sha = None
            try:
                sha = rec.sha256()
                thumbs.append(eval_thumbs(eval_gray(rec, min_side), views, trim_tol))
                ok[j] = True
                status = "ok"
            except Exception as exc:  # counted, kept as a row without hashes
                status = f"undecodable: {type(exc).__name__}"
                stats.drop("eval_undecodable")
            cols["sha256"].append(sha)
            cols["status"].append(status)
        hashes = np.zeros((len(batch), len(views)), np.uint64)
        extreme = np.zeros(len(batch))
        if thumbs:
            stack = np.stack(thumbs)  # (b, V, 32, 32)
            hashes[ok] = phash_thumbs(stack.reshape(-1, 32, 32)).reshape(len(thumbs), len(views))
            extreme[ok] = extreme_fraction(stack[:, 0])
        parts.append(hashes)
        extreme_parts.append(extreme)
        ok_parts.append(ok)
        stats.inc("eval_images", len(batch))
    hashes = np.concatenate(parts) if parts else np.zeros((0, len(views)), np.uint64)
    valid = np.concatenate(ok_parts) if ok_parts else np.zeros(0, bool)
    table = {
        "eval_id": pa.array(cols["eval_id"], pa.string()),
        "label": pa.array(cols["label"], pa.int64()),
        "class_name": pa.array([es.classes[i] for i in cols["label"]], pa.string()),
        "sha256": pa.array(cols["sha256"], pa.string()),
        "status": pa.array(cols["status"], pa.string()),
    }
    extreme = np.concatenate(extreme_parts) if extreme_parts else np.zeros(0)
    table["extreme_frac"] = pa.array(extreme.astype(np.float32), pa.float32(), mask=~valid)
    for i, v in enumerate(views):
        table[view_column(v.name)] = pa.array(hashes[:, i], pa.uint64(), mask=~valid)
    return pa.table(table)
