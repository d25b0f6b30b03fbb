"""Verification of pHash candidates by a second, independent comparison of the two images.

pHash keeps 64 sign bits of low DCT frequencies; distinct but similar images (MNIST digits of one
class, flat-background product shots) collide within small radii. The check here compares the
actual aligned pixels: the Pearson correlation of the two 32×32 grayscale thumbnails of the view
pair that matched (same crop/trim on each side). It is invariant to brightness and contrast, close
to 1 for resized / re-encoded copies, and measured in BENCHMARKS.md (dedup section).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dedup.hashing import decode_gray
from dedup.phash import correlation, view_thumbs
from dedup.shards import iter_samples
from pipeline.rundir import RunDir

OVERLAP_SCHEMA = pa.schema(
    [
        ("eval_set", pa.string()),
        ("eval_id", pa.string()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("distance", pa.int16()),
        ("train_view", pa.string()),
        ("eval_view", pa.string()),
        ("verify_score", pa.float32()),
        ("confirmed", pa.bool_()),
        ("uid", pa.string()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("entry_ids", pa.list_(pa.int32())),
    ]
)


def empty_overlaps() -> pa.Table:
    return OVERLAP_SCHEMA.empty_table()


def train_view_thumbs(
    run: RunDir, train: pa.Table, needed: dict[int, set[str]], fast_decode: bool = False
) -> tuple[dict[tuple[int, str], np.ndarray], dict[int, dict]]:
    """Thumbnails ``{(row, view): 32×32}`` and json metadata ``{row: meta}`` of the training rows in ``needed``.

    Only the shards holding a needed row are read, each once, streaming.
    """
    shards, keys = train.column("shard").to_pylist(), train.column("key").to_pylist()
    wanted: dict[str, dict[str, int]] = {}
    for row in needed:
        wanted.setdefault(shards[row], {})[keys[row]] = row
    thumbs: dict[tuple[int, str], np.ndarray] = {}
    meta: dict[int, dict] = {}
    for shard, rows in sorted(wanted.items()):
        for sample in iter_samples(run, f"shards/{shard}.tar"):
            row = rows.get(sample.key)
            if row is None:
                continue
            views = view_thumbs(decode_gray(sample.image, fast_decode))
            for v in needed[row]:
                thumbs[(row, v)] = views[v]
            meta[row] = sample.meta
    return thumbs, meta


def verify_pairs(
    eval_set: str, pairs: dict[str, np.ndarray], ev: pa.Table, thumbs: dict, threshold: float
) -> pa.Table:
    """The candidate pairs of one eval set with their verification score and ``confirmed`` flag."""
    n = len(pairs["train_row"])
    if n == 0:
        return empty_overlaps().select([f.name for f in OVERLAP_SCHEMA][:9])
    er = pairs["eval_row"]
    eval_thumbs = np.stack(
        [
            np.frombuffer(ev.column(f"thumb_{v}")[int(r)].as_py(), np.uint8).reshape(32, 32)
            for r, v in zip(er, pairs["eval_view"], strict=True)
        ]
    )
    train_thumbs = np.stack(
        [thumbs[(int(r), v)] for r, v in zip(pairs["train_row"], pairs["train_view"], strict=True)]
    )
    score = correlation(train_thumbs, eval_thumbs).astype(np.float32)
    return pa.table(
        {
            "eval_set": pa.array([eval_set] * n, pa.string()),
            "eval_id": ev.column("eval_id").take(pa.array(er)).combine_chunks(),
            "label": ev.column("label").take(pa.array(er)).combine_chunks(),
            "class_name": ev.column("class_name").take(pa.array(er)).combine_chunks(),
            "distance": pa.array(pairs["distance"], pa.int16()),
            "train_view": pa.array(list(pairs["train_view"]), pa.string()),
            "eval_view": pa.array(list(pairs["eval_view"]), pa.string()),
            "verify_score": pa.array(score, pa.float32()),
            "confirmed": pa.array(score >= threshold, pa.bool_()),
        }
    )
