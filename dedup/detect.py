"""Candidate pairs between training and evaluation images over all their hash views.

A training image and an evaluation image are candidates when any training view hash (``phash``,
``trim``) lies within ``tau`` of any evaluation view hash (``phash``, ``trim``, ``zoomNN``); the
closest view pair is kept (ties: the earlier views), so verification compares the thumbnails
that are actually aligned.
"""

from __future__ import annotations

import numpy as np

from dedup.search import search_pairs


def match_views(
    train: dict[str, np.ndarray],
    train_ok: np.ndarray,
    evals: dict[str, np.ndarray],
    eval_ok: np.ndarray,
    tau: int,
) -> dict[str, np.ndarray]:
    """Closest view pair per (train row, eval row) among all view pairs within ``tau``.

    ``train`` / ``evals`` map view name -> uint64 hash per row (first view: the plain ``phash``);
    rows where ``*_ok`` is false are ignored. Returns arrays ``train_row``, ``eval_row``,
    ``train_view``, ``eval_view``, ``distance``, sorted by (train_row, eval_row).
    """
    t_names, e_names = list(train), list(evals)
    base = train[t_names[0]]
    t_idx = np.flatnonzero(train_ok)
    t_rows, t_views, t_hash = [t_idx], [np.zeros(len(t_idx), int)], [base[t_idx]]
    for vi, v in enumerate(t_names[1:], start=1):
        # An extra training view is searched only where it differs from the plain hash (trimmed images).
        rows = t_idx[train[v][t_idx] != base[t_idx]]
        t_rows.append(rows)
        t_views.append(np.full(len(rows), vi))
        t_hash.append(train[v][rows])
    e_idx = np.flatnonzero(eval_ok)
    e_rows = np.concatenate([e_idx] * len(e_names))
    e_views = np.concatenate([np.full(len(e_idx), vi) for vi in range(len(e_names))])
    e_hash = np.concatenate([evals[v][e_idx] for v in e_names])
    t_rows, t_views, t_hash = np.concatenate(t_rows), np.concatenate(t_views), np.concatenate(t_hash)
    q, d, dist = search_pairs(t_hash, e_hash, tau)
    tr, er, tv, ev, dist = t_rows[q], e_rows[d], t_views[q], e_views[d], dist
    order = np.lexsort((ev, tv, dist, er, tr))
    tr, er, tv, ev, dist = tr[order], er[order], tv[order], ev[order], dist[order]
    first = np.ones(len(tr), bool)
    first[1:] = (tr[1:] != tr[:-1]) | (er[1:] != er[:-1])
    return {
        "train_row": tr[first],
        "eval_row": er[first],
        "train_view": np.array([t_names[i] for i in tv[first]], dtype=object),
        "eval_view": np.array([e_names[i] for i in ev[first]], dtype=object),
        "distance": dist[first],
    }
