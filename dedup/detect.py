"""Candidate pairs between training and evaluation images over all their hash views.

A training image and an evaluation image are candidates when any training view hash (``phash``,
``trim``) lies within ``tau`` of any evaluation view hash (``phash``, ``trim``, ``zoomKK_xy``). Every
view pair within ``tau`` is returned: each is a possible alignment of the two images, and the
verification step scores them all and keeps the best (:func:`best_view_pair`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.search import HammingIndex
from dedup.views import OFTEN_PLAIN


def _searchable(
    hashes: dict[str, np.ndarray], ok: np.ndarray, skip: frozenset[str] = frozenset()
) -> tuple[np.ndarray, ...]:
    """Rows, view indices and hashes of every view to search; where a view that often coincides with
    the plain one (an untrimmed image's ``trim``, a square image's ``square``) has the plain hash,
    it is left out: it would only repeat the plain view's pairs."""
    names = list(hashes)
    base = hashes[names[0]]
    idx = np.flatnonzero(ok)
    rows, views, hs = [idx], [np.zeros(len(idx), np.int64)], [base[idx]]
    for vi, v in enumerate(names[1:], start=1):
        if v in skip:
            continue
        keep = idx[hashes[v][idx] != base[idx]] if v in OFTEN_PLAIN else idx
        rows.append(keep)
        views.append(np.full(len(keep), vi, np.int64))
        hs.append(hashes[v][keep])
    return np.concatenate(rows), np.concatenate(views), np.concatenate(hs)


def compatible(train_view: str, eval_view: str) -> bool:
    """Whether a match between these two views is an alignment of the two images: a training image's
    ``inner`` view (the centre of a copy rotated in place) is compared with the eval image's rotated
    ``*_inner`` views only, and those with nothing else — an ``inner`` crop against an unrotated
    eval crop is a 10–20 % scale mismatch, which only finds look-alikes."""
    return (train_view == "inner") == eval_view.endswith("_inner")


@dataclass
class EvalViews:
    """An eval set's searchable view hashes, indexed once for any number of training batches."""

    rows: np.ndarray
    views: np.ndarray
    index: HammingIndex
    names: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, evals: dict[str, np.ndarray], eval_ok: np.ndarray, tau: int, skip: frozenset[str] = frozenset()
    ) -> EvalViews:
        """``evals`` maps view name -> uint64 hash per row (first: the plain ``phash``); rows where
        ``eval_ok`` is false are left out, and so are the views named in ``skip``."""
        rows, views, hashes = _searchable(evals, eval_ok, skip)
        return cls(rows, views, HammingIndex.build(hashes, tau), tuple(evals))


def match_views(
    train: dict[str, np.ndarray], train_ok: np.ndarray, evals: EvalViews
) -> dict[str, np.ndarray]:
    """Every (train view, eval view) pair within the index's ``tau``, with its image rows.

    ``train`` maps view name -> uint64 hash per row (first view: the plain ``phash``); rows where
    ``train_ok`` is false are ignored. Returns int arrays ``train_row``, ``eval_row``,
    ``train_view``, ``eval_view`` (indices into the dicts' keys) and ``distance``, sorted by
    (train_row, eval_row, distance, train_view, eval_view).
    """
    t_rows, t_views, t_hash = _searchable(train, train_ok)
    q, d, dist = evals.index.search(t_hash)
    tr, er, tv, ev = t_rows[q], evals.rows[d], t_views[q], evals.views[d]
    if evals.names:  # keep only view pairs that align the two images (a small lookup table)
        ok = np.array([[compatible(t, e) for e in evals.names] for t in train], bool)
        keep = ok[tv, ev]
        tr, er, tv, ev, dist = tr[keep], er[keep], tv[keep], ev[keep], dist[keep]
    order = np.lexsort((ev, tv, dist, er, tr))
    return {
        "train_row": tr[order],
        "eval_row": er[order],
        "train_view": tv[order],
        "eval_view": ev[order],
        "distance": dist[order].astype(np.int16),
    }


def pair_starts(pairs: dict[str, np.ndarray]) -> np.ndarray:
    """Index of the first view pair of each distinct (train_row, eval_row) in sorted ``pairs``."""
    tr, er = pairs["train_row"], pairs["eval_row"]
    first = np.ones(len(tr), bool)
    first[1:] = (tr[1:] != tr[:-1]) | (er[1:] != er[:-1])
    return np.flatnonzero(first)


def best_view_pair(pairs: dict[str, np.ndarray], score: np.ndarray) -> np.ndarray:
    """Per (train_row, eval_row), the index of its view pair with the highest ``score``.

    Ties go to the earlier view pair (the smaller distance, then the earlier views).
    """
    starts = pair_starts(pairs)
    if len(starts) == 0:
        return starts
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(score))))
    # Sort by (group, -score, position): the first row of each group is its best view pair.
    order = np.lexsort((np.arange(len(score)), -score, group))
    first = np.ones(len(order), bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]
