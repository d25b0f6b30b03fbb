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
from dedup.views import TRAIN_VIEWS, View, image_view_thumbs, train_thumbs, trim_boxes
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
    samples: Iterable,
    shard: str,
    batch_size: int,
    stats: Stats,
    min_side: int,
    trim_tol: int,
    originals: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Hashes of every sample of one shard: one row each, ``status`` ``ok`` or why it has no hash.

    ``originals`` maps a key to the training-view hashes the downloader took of the original image
    (:mod:`dedup.original`); those samples are not decoded, the others are hashed from the stored
    image. Columns: shard, key, uid, sha256, status, source (``original`` / ``stored``), width,
    height (of the stored image; null for original-hashed rows), one hash column per training view
    (``phash``, ``phash_trim``, ``phash_inner``), trimmed.
    """
    originals = originals or {}
    names = ("shard", "key", "uid", "sha256", "status", "source", "width", "height")
    cols: dict[str, list] = {k: [] for k in names}
    hash_parts, trimmed_parts, ok_parts = [], [], []
    n_views = len(TRAIN_VIEWS)
    for batch in _batched(samples, batch_size):
        grays, decoded = [], []
        hashes = np.zeros((len(batch), n_views), np.uint64)
        trimmed = np.zeros(len(batch), bool)
        ok = np.zeros(len(batch), bool)
        for j, s in enumerate(batch):
            data = s.image
            cols["shard"].append(shard)
            cols["key"].append(s.key)
            cols["uid"].append(str(s.meta.get("uid", "")) or None)
            cols["sha256"].append(hashlib.sha256(data).hexdigest() if data else None)
            status, size, source = "ok", (None, None), None
            if data is None:
                status = "no_image"
            elif s.key in originals:
                hashes[j] = originals[s.key]
                trimmed[j] = hashes[j, 1] != hashes[j, 0]
                ok[j] = True
                source = "original"
            else:
                try:
                    gray, size = decode_gray(data, min_side)
                    grays.append(gray)
                    decoded.append(j)
                    ok[j] = True
                    source = "stored"
                except Exception as exc:  # a broken image is a counted drop, not a crash
                    status = f"undecodable: {type(exc).__name__}"
            cols["status"].append(status)
            cols["source"].append(source)
            cols["width"].append(size[0])
            cols["height"].append(size[1])
            if status != "ok":
                stats.drop("no_image" if data is None else "undecodable")
        if decoded:
            thumbs, was_trimmed = train_thumbs(grays, trim_tol)
            hashes[decoded] = phash_thumbs(thumbs.reshape(-1, 32, 32)).reshape(len(decoded), n_views)
            trimmed[decoded] = was_trimmed
        hash_parts.append(hashes)
        trimmed_parts.append(trimmed)
        ok_parts.append(ok)
        stats.inc("samples", len(batch))
        stats.inc("hashed", int(ok.sum()))
        stats.inc("hashed_stored", len(decoded))
        stats.inc("hashed_original", int(ok.sum()) - len(decoded))
    valid = np.concatenate(ok_parts) if ok_parts else np.zeros(0, bool)
    hashes = np.concatenate(hash_parts) if hash_parts else np.zeros((0, n_views), np.uint64)
    table = {k: pa.array(v, pa.string()) for k, v in cols.items() if k not in ("width", "height")}
    table["width"] = pa.array(cols["width"], pa.int32())
    table["height"] = pa.array(cols["height"], pa.int32())
    for i, v in enumerate(TRAIN_VIEWS):
        table[view_column(v.name)] = pa.array(hashes[:, i], pa.uint64(), mask=~valid)
    trimmed_all = np.concatenate(trimmed_parts) if trimmed_parts else np.zeros(0, bool)
    table["trimmed"] = pa.array(trimmed_all, pa.bool_(), mask=~valid)
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
