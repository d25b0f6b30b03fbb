"""Classification and retrieval metrics on NumPy arrays (no torch): top-k, mean per-class recall, R@K."""

from __future__ import annotations

import numpy as np


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first; ties broken by the lower index.

    A stable sort on the negated scores gives a deterministic order (``argpartition`` would not).
    """
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_accuracy(labels: np.ndarray, topk: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the first ``k`` columns of ``topk`` (best-first class ids)."""
    if len(labels) == 0:
        return float("nan")
    hits = (topk[:, :k] == np.asarray(labels)[:, None]).any(axis=1)
    return float(hits.mean())


def mean_per_class_recall(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the recall of that class (sklearn's balanced accuracy)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if len(labels) == 0:
        return float("nan")
    classes = np.unique(labels)
    recalls = [(preds[labels == c] == c).mean() for c in classes]
    return float(np.mean(recalls))


def classification_metrics(labels: np.ndarray, scores: np.ndarray, top_k: int = 5) -> dict[str, float]:
    """top1, top5 (or top-``top_k``) accuracy and mean per-class recall of ``scores`` [N, C] against ``labels``."""
    topk = topk_indices(scores, max(top_k, 5))
    out = {
        "top1": topk_accuracy(labels, topk, 1),
        "top5": topk_accuracy(labels, topk, 5),
        "mean_per_class_recall": mean_per_class_recall(labels, topk[:, 0]),
        "n": float(len(labels)),
    }
    return out


def recall_at_k(
    sim: np.ndarray, positives: list[np.ndarray] | np.ndarray, ks: tuple[int, ...]
) -> dict[int, float]:
    """Recall@k of a retrieval: row ``i`` of ``sim`` scores the gallery for query ``i``; a query counts as
    retrieved at k when any of its ``positives[i]`` is ranked in the top k.

    The rank of a query is the number of gallery items scoring strictly higher than its best positive,
    so ties are resolved in the query's favour (as CLIP_benchmark does with a top-k lookup).
    """
    n = sim.shape[0]
    if n == 0:
        return {k: float("nan") for k in ks}
    ranks = best_positive_rank(sim, positives)
    return {k: float((ranks < k).mean()) for k in ks}


def best_positive_rank(sim: np.ndarray, positives: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per query, the 0-based rank of its best-scoring positive (count of gallery items scoring higher)."""
    n = sim.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for i in range(n):
        pos = np.atleast_1d(np.asarray(positives[i]))
        best = sim[i, pos].max()
        ranks[i] = int((sim[i] > best).sum())
    return ranks
