"""Seeded subsets of evaluation sets: a class-stratified sample, never "the first N".

Evaluation files are often sorted by class (the CIFAR-10 test file holds 1,000 airplanes first), so
the first N records of a set can be a single class. :func:`stratified_sample` draws N records so that
every class keeps its share of the set (largest-remainder rounding) and, when N allows it, every class
present in the set is present in the sample. The draw depends only on the labels, N and the seed, so
every consumer of a set (dedup's hashing, eval, the trainer's zero-shot check) sees the same records.
"""

from __future__ import annotations

import numpy as np


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (ties go to the lower index)."""
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    quota = total * weights / weights.sum()
    base = np.floor(quota).astype(np.int64)
    rest = total - int(base.sum())
    # stable sort on the negated fractional part: the largest remainders first, lower index on ties
    order = np.argsort(-(quota - base), kind="stable")
    base[order[:rest]] += 1
    return base


def class_allocation(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many records each class gives to a sample of ``n`` (``counts``: records per class, all > 0).

    With ``n`` ≥ the number of classes, each class gives at least one record and the rest is shared
    in proportion to the class sizes; with fewer, ``n`` classes drawn at random give one each.
    """
    counts = np.asarray(counts, dtype=np.int64)
    k = len(counts)
    if n >= int(counts.sum()):
        return counts.copy()
    if n < k:
        alloc = np.zeros(k, dtype=np.int64)
        alloc[rng.choice(k, size=n, replace=False)] = 1
        return alloc
    # proportional shares; a class rounded down to nothing gets one, paid for by the classes
    # furthest above their exact share (so no class vanishes and the shares stay as close as they can)
    quota = n * counts / counts.sum()
    alloc = np.maximum(_largest_remainder(n, counts.astype(np.float64)), 1)
    while alloc.sum() > n:
        over = np.where(alloc > 1, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    return alloc


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified sample of ``n`` of ``labels`` (all of them if n ≥ len).

    Within a class the records are a uniform random choice; the result is in record order so a
    sampled set is read in the same order as the whole set.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    alloc = class_allocation(counts, n, rng)
    picked = []
    for c in range(len(classes)):
        if alloc[c]:
            members = np.flatnonzero(inverse == c)
            picked.append(rng.choice(members, size=int(alloc[c]), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def random_sample(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform sample of ``n`` of ``range(n_total)`` (sets without classes)."""
    if n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
