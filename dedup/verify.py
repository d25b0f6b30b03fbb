"""Verification of pHash candidates by a second, independent comparison of the two images.

pHash keeps 64 sign bits of low DCT frequencies; distinct but similar images (MNIST digits of one
class, flat-background product shots) collide within small radii. The check here compares the
actual aligned pixels of the view pair that matched (same crop/trim on each side): the Pearson
correlation of the two 32×32 grayscale thumbnails, the best over integer shifts of ±1 pixel and,
near the threshold, over sub-pixel shifts and ±3 % scale (the residual misalignment of a crop
between two anchor views). It is invariant to brightness and contrast, close to 1 for resized /
re-encoded copies, and measured in BENCHMARKS.md (dedup section).
A candidate pair of images is scored on every view pair that matched within τ; the best one is kept.
The score itself is in :mod:`dedup.score`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from dedup.detect import best_view_pair
from dedup.hashing import eval_gray, eval_thumbs
from dedup.score import verify_scores
from dedup.thumbs import load_thumbs
from dedup.tone import clip_renders, clip_score, clipped
from dedup.views import TRAIN_VIEWS, View, trim_boxes
from pipeline.evalsets import EvalRecord, EvalSet
from pipeline.rundir import RunDir

THUMB = 32

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


# ------------------------------------------------------------------ re-reading the two sides
class ThumbStack:
    """View thumbnails of some rows: ``stack[pos[row], view]`` is a (32, 32) uint8 thumbnail."""

    def __init__(self, rows: list[int], stack: np.ndarray):
        self.rows = np.asarray(rows, np.int64)
        self.stack = stack
        self.pos = {int(r): i for i, r in enumerate(rows)}

    def take(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        idx = np.fromiter((self.pos[int(r)] for r in rows), np.int64, len(rows))
        return self.stack[idx, views]


def train_view_thumbs(
    run: RunDir, rows: np.ndarray, shards: list[str], keys: list[str]
) -> tuple[ThumbStack, dict[int, dict]]:
    """``phash``/``trim`` thumbnails and json metadata ``{row: meta}`` of the training ``rows``
    (global row numbers; ``shards[i]``/``keys[i]`` name row ``rows[i]``).

    Read from the per-shard files the ``dedup_thumbs`` tasks wrote (:mod:`dedup.thumbs`): each
    decoded its shard's candidates with the hashing decoder, so the thumbnails are exactly those
    that were hashed.
    """
    wanted: dict[str, dict[str, int]] = {}
    where: dict[int, str] = {}
    for row, shard, key in zip(rows.tolist(), shards, keys, strict=True):
        wanted.setdefault(shard, {})[key] = row
        where[row] = f"{shard}/{key}"
    found: list[int] = []
    stacks: list[np.ndarray] = []
    meta: dict[int, dict] = {}
    for shard, by_key in sorted(wanted.items()):
        shard_keys, stack, metas = load_thumbs(run, shard)
        for i, key in enumerate(shard_keys):
            row = by_key.get(key)
            if row is not None:
                found.append(row)
                stacks.append(stack[i])
                meta[row] = metas[i]
    missing = set(where) - set(found)
    if missing:
        raise RuntimeError(
            f"{len(missing)} hashed training samples are no longer in their shards (e.g. {where[min(missing)]}); "
            "the shards changed after hashing — rerun `webclip dedup` from scratch"
        )
    stack = np.stack(stacks) if stacks else np.zeros((0, len(TRAIN_VIEWS), THUMB, THUMB), np.uint8)
    return ThumbStack(found, stack), meta


def eval_view_thumbs(
    es: EvalSet, ev: pa.Table, rows: set[int], views: tuple[View, ...], min_side: int, trim_tol: int
) -> ThumbStack:
    """View thumbnails of the eval images at ``rows``, recomputed from the eval set.

    Eval sets are small and re-readable; storing ~20 thumbnails per image would cost more than this
    one pass. The eval set must be the one that was hashed: a changed image (sha256) is an error.
    """
    sha = ev.column("sha256").to_pylist()
    found: list[int] = []
    thumbs: list[np.ndarray] = []
    for row, rec in enumerate(es):
        if row not in rows:
            continue
        if rec.sha256() != sha[row]:
            raise RuntimeError(
                f"eval set {es.name!r} changed since it was hashed (image {rec.eval_id!r}); delete "
                f"<run>/evalsets/{es.name}/ and <run>/_done/dedup/eval-{es.name}, then rerun `webclip dedup`"
            )
        thumbs.append(eval_thumbs(eval_gray(rec, min_side), views, trim_tol))
        found.append(row)
    stack = np.stack(thumbs) if thumbs else np.zeros((0, len(views), THUMB, THUMB), np.uint8)
    return ThumbStack(found, stack)


def score_view_pairs(
    pairs: dict[str, np.ndarray],
    train: ThumbStack,
    evals: ThumbStack,
    refine_from: float | None,
    block: int = 65536,
    overlay: tuple[float, float] | None = None,
    band: int = 0,
) -> np.ndarray:
    """Verification score (:func:`dedup.score.verify_scores`) of every view pair in ``pairs``, a block at a time."""
    n = len(pairs["train_row"])
    out = np.zeros(n, np.float32)
    for i in range(0, n, block):
        sl = slice(i, i + block)
        a = train.take(pairs["train_row"][sl], pairs["train_view"][sl])
        b = evals.take(pairs["eval_row"][sl], pairs["eval_view"][sl])
        out[sl] = verify_scores(a, b, refine_from, overlay=overlay, band=band)
    return out


def clip_rescore(
    es: Iterable[EvalRecord],
    pairs: dict[str, np.ndarray],
    score: np.ndarray,
    train: ThumbStack,
    evals: ThumbStack,
    views: tuple[View, ...],
    lo: float,
    hi: float,
    min_side: int,
    trim_tol: int,
) -> tuple[np.ndarray, int]:
    """Scores of ``pairs`` raised where a tone edit clipped the training image (:mod:`dedup.tone`).

    Only view pairs scoring in [``lo``, ``hi``) whose training thumbnail has more clipped highlights
    or shadows than the eval thumbnail are re-scored: their eval images (``es``, in row order) are
    decoded again at ``min_side`` (the originals' scale: finer than the hashing decode) and each eval
    view is rendered clipped once, for every training image it met. Returns the new scores and how
    many view pairs were re-scored.
    """
    idx = np.flatnonzero((score >= lo) & (score < hi))
    high = low = np.zeros(0, bool)
    if len(idx):
        high, low = clipped(
            train.take(pairs["train_row"][idx], pairs["train_view"][idx]),
            evals.take(pairs["eval_row"][idx], pairs["eval_view"][idx]),
        )
        keep = high | low
        idx, high, low = idx[keep], high[keep], low[keep]
    if not len(idx):
        return score, 0
    wanted = {int(r) for r in pairs["eval_row"][idx]}
    grays: dict[int, tuple[np.ndarray, tuple[int, ...]]] = {}
    for row, rec in enumerate(es):
        if row in wanted:
            g = eval_gray(rec, min_side)
            grays[row] = (g, tuple(int(x) for x in trim_boxes(g[None], trim_tol)[0]))
    out = score.copy()
    renders: dict[tuple[int, int, bool, bool], np.ndarray] = {}
    for k, h, lw in zip(idx.tolist(), high.tolist(), low.tolist(), strict=True):
        er, ev = int(pairs["eval_row"][k]), int(pairs["eval_view"][k])
        if (er, ev, h, lw) not in renders:
            g, trim = grays[er]
            renders[(er, ev, h, lw)] = clip_renders(g, views[ev], trim, h, lw)
        a = train.take(pairs["train_row"][k : k + 1], pairs["train_view"][k : k + 1])[0]
        out[k] = max(out[k], clip_score(a, renders[(er, ev, h, lw)]))
    return out, len(idx)


def verify_pairs(
    eval_set: str,
    pairs: dict[str, np.ndarray],
    score: np.ndarray,
    eval_view_names: list[str],
    ev: pa.Table,
    threshold: float,
) -> tuple[pa.Table, np.ndarray]:
    """One row per candidate (train image, eval image): its best-scoring view pair, score and ``confirmed``.

    Returns the table (first 9 overlap columns) and the training row of each of its rows.
    """
    best = best_view_pair(pairs, score)
    er, tr = pairs["eval_row"][best], pairs["train_row"][best]
    s = score[best].astype(np.float32)
    train_names = [v.name for v in TRAIN_VIEWS]
    table = pa.table(
        {
            "eval_set": pa.array([eval_set] * len(best), pa.string()),
            "eval_id": ev.column("eval_id").take(pa.array(er)).combine_chunks(),
            "label": ev.column("label").take(pa.array(er)).combine_chunks(),
            "class_name": ev.column("class_name").take(pa.array(er)).combine_chunks(),
            "distance": pa.array(pairs["distance"][best], pa.int16()),
            "train_view": pa.array([train_names[i] for i in pairs["train_view"][best]], pa.string()),
            "eval_view": pa.array([eval_view_names[i] for i in pairs["eval_view"][best]], pa.string()),
            "verify_score": pa.array(s, pa.float32()),
            "confirmed": pa.array(s >= threshold, pa.bool_()),
        }
    )
    return table, tr
