"""The CLIP paper's data-overlap analysis (§5): accuracy on All, Overlap and Clean, and its statistics.

Each evaluation set is split by dedup's ``overlaps.parquet`` into *Overlap* (eval images with a
near-duplicate in the training data) and *Clean* (the rest). Per set we report the overlap share,
accuracy on All / Overlap / Clean, All − Clean, a one-sided binomial test of the Overlap correct
count with Clean accuracy as the null (is the model better on images it may have seen?), and a
Clopper–Pearson interval (99.5% as in the paper) on Overlap accuracy.

The binomial tail and the exact interval are computed here from the binomial pmf in log space (no
SciPy), and tested against SciPy.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa


def _log_pmf(n: int, p: float) -> np.ndarray:
    """log P(X = j) for j = 0..n, X ~ Binomial(n, p), with 0 < p < 1."""
    j = np.arange(n + 1, dtype=np.float64)
    # log C(n, j) built by the recurrence C(n, j+1) = C(n, j) * (n - j) / (j + 1): exact-enough and vectorised.
    steps = np.log(np.arange(n, 0, -1, dtype=np.float64)) - np.log(np.arange(1, n + 1, dtype=np.float64))
    log_comb = np.concatenate([[0.0], np.cumsum(steps)])
    return log_comb + j * math.log(p) + (n - j) * math.log1p(-p)


def _logsumexp(x: np.ndarray) -> float:
    if len(x) == 0:
        return -math.inf
    m = float(x.max())
    return m + math.log(float(np.exp(x - m).sum()))


def binom_sf_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided ("greater") binomial test p-value."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if k == 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, math.exp(_logsumexp(_log_pmf(n, p)[k:])))


def binom_cdf_le(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return min(1.0, math.exp(_logsumexp(_log_pmf(n, p)[: k + 1])))


def _bisect(f, target: float, increasing: bool, iters: int = 200) -> float:
    """The p in (0, 1) where the monotone ``f(p)`` crosses ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, level: float = 0.995) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided ``level`` interval for a proportion with ``k`` successes in ``n``.

    Lower bound: the p where P(X >= k | p) = α/2; upper: the p where P(X <= k | p) = α/2.
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - level
    low = 0.0 if k == 0 else _bisect(lambda p: binom_sf_ge(k, n, p), alpha / 2, increasing=True)
    high = 1.0 if k == n else _bisect(lambda p: binom_cdf_le(k, n, p), alpha / 2, increasing=False)
    return (low, high)


OVERLAP_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("task", pa.string()),
        ("checkpoint", pa.string()),
        ("n_all", pa.int64()),
        ("n_overlap", pa.int64()),
        ("n_clean", pa.int64()),
        ("overlap_pct", pa.float64()),
        ("acc_all", pa.float64()),
        ("acc_overlap", pa.float64()),
        ("acc_clean", pa.float64()),
        ("all_minus_clean", pa.float64()),
        ("p_value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
    ]
)


def overlap_row(
    dataset: str, correct: np.ndarray, is_overlap: np.ndarray, level: float = 0.995
) -> dict[str, float | int | str]:
    """One row of ``overlap.parquet`` from per-sample ``correct`` flags and ``is_overlap`` membership.

    Accuracies are fractions in [0, 1]; ``overlap_pct`` is a percentage. With no Overlap (or no Clean)
    images the statistics that need them are None (null in the table): undefined, not a number.
    """
    correct = np.asarray(correct, dtype=bool)
    is_overlap = np.asarray(is_overlap, dtype=bool)
    n_all = len(correct)
    n_overlap = int(is_overlap.sum())
    n_clean = n_all - n_overlap
    k_overlap = int(correct[is_overlap].sum())
    acc_all = float(correct.mean()) if n_all else math.nan
    acc_overlap = k_overlap / n_overlap if n_overlap else math.nan
    acc_clean = float(correct[~is_overlap].mean()) if n_clean else math.nan
    if n_overlap and n_clean:
        p_value = binom_sf_ge(k_overlap, n_overlap, acc_clean)
    else:
        p_value = math.nan
    ci_low, ci_high = clopper_pearson(k_overlap, n_overlap, level) if n_overlap else (math.nan, math.nan)
    row = {
        "dataset": dataset,
        "n_all": n_all,
        "n_overlap": n_overlap,
        "n_clean": n_clean,
        "overlap_pct": 100.0 * n_overlap / n_all if n_all else math.nan,
        "acc_all": acc_all,
        "acc_overlap": acc_overlap,
        "acc_clean": acc_clean,
        "all_minus_clean": acc_all - acc_clean if n_clean else math.nan,
        "p_value": p_value,
        "ci_low": ci_low,
        "ci_high": ci_high,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def overlap_table(
    predictions: pa.Table,
    overlaps: pa.Table | None,
    level: float = 0.995,
    searched: set[str] | None = None,
) -> pa.Table:
    """``overlap.parquet``: one row per (dataset, task, checkpoint) of ``predictions`` whose overlap is known.

    ``predictions`` has dataset, eval_id, correct (and optionally task, checkpoint); ``overlaps`` is
    dedup's table (eval_set, eval_id, confirmed, …; several rows per eval image when it matches several
    training images). An eval image is in Overlap when a confirmed row names it (every row when the
    table has no ``confirmed`` column). Without dedup's table (``None``) nothing is known about overlap
    and the table is empty: counting every image as Clean would report a 0 % overlap nobody measured.
    ``searched``: the eval sets dedup compared with the training data; other datasets are left out too.
    """
    if overlaps is None:
        return OVERLAP_SCHEMA.empty_table()
    overlap_ids: dict[str, set[str]] = {}
    if overlaps is not None and overlaps.num_rows:
        sets = overlaps.column("eval_set").to_pylist()
        ids = overlaps.column("eval_id").to_pylist()
        # dedup keeps rejected candidates too (confirmed = False): only confirmed pairs make Overlap
        if "confirmed" in overlaps.column_names:
            keep = [bool(c) for c in overlaps.column("confirmed").to_pylist()]
        else:
            keep = [True] * len(ids)
        for s, i, k in zip(sets, ids, keep, strict=True):
            if k:
                overlap_ids.setdefault(s, set()).add(str(i))
    cols = predictions.column_names
    n = predictions.num_rows
    datasets = predictions.column("dataset").to_pylist()
    tasks = predictions.column("task").to_pylist() if "task" in cols else ["zeroshot"] * n
    ckpts = predictions.column("checkpoint").to_pylist() if "checkpoint" in cols else [""] * n
    eval_ids = predictions.column("eval_id").to_pylist()
    correct = np.asarray(predictions.column("correct").to_pylist(), dtype=bool)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, key in enumerate(zip(datasets, tasks, ckpts, strict=True)):
        groups.setdefault(key, []).append(i)
    rows = []
    for (dataset, task, ckpt), idx in sorted(groups.items()):
        if searched is not None and dataset not in searched:
            continue
        seen = overlap_ids.get(dataset, set())
        member = np.asarray([str(eval_ids[i]) in seen for i in idx], dtype=bool)
        row = overlap_row(dataset, correct[idx], member, level)
        row.update(task=task, checkpoint=ckpt)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=OVERLAP_SCHEMA)
