"""Binomial test and Clopper–Pearson interval agree with SciPy; the All/Overlap/Clean table is right."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from eval.overlap import binom_cdf_le, binom_sf_ge, clopper_pearson, overlap_row, overlap_table

CASES = [
    (0, 1, 0.3),
    (1, 1, 0.3),
    (3, 10, 0.2),
    (7, 10, 0.5),
    (10, 10, 0.9),
    (0, 25, 0.01),
    (40, 50, 0.62),
    (123, 400, 0.3),
    (950, 1000, 0.93),
    (5, 5000, 0.002),
    (2500, 5000, 0.5),
]


@pytest.mark.parametrize(("k", "n", "p"), CASES)
def test_one_sided_binomial_matches_scipy(k, n, p):
    ours = binom_sf_ge(k, n, p)
    ref = stats.binomtest(k, n, p, alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-300)
    assert binom_cdf_le(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("k", "n", "_p"), CASES)
@pytest.mark.parametrize("level", [0.995, 0.95])
def test_clopper_pearson_matches_scipy(k, n, _p, level):
    low, high = clopper_pearson(k, n, level)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    assert low == pytest.approx(ref.low, rel=1e-8, abs=1e-12)
    assert high == pytest.approx(ref.high, rel=1e-8, abs=1e-12)
    assert low <= k / n <= high


def test_overlap_row_by_hand():
    # 10 images, 4 in Overlap (3 correct), 6 Clean (3 correct)
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    row = overlap_row("s", correct, member)
    assert row["n_all"] == 10 and row["n_overlap"] == 4 and row["n_clean"] == 6
    assert row["overlap_pct"] == pytest.approx(40.0)
    assert row["acc_all"] == pytest.approx(0.6)
    assert row["acc_overlap"] == pytest.approx(0.75)
    assert row["acc_clean"] == pytest.approx(0.5)
    assert row["all_minus_clean"] == pytest.approx(0.1)
    assert row["p_value"] == pytest.approx(stats.binomtest(3, 4, 0.5, alternative="greater").pvalue)
    ci = stats.binomtest(3, 4).proportion_ci(0.995, method="exact")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-8)


def test_overlap_table_joins_on_eval_set_and_eval_id():
    preds = pa.table(
        {
            "dataset": ["a"] * 4 + ["b"] * 3,
            "eval_id": ["0", "1", "2", "3", "0", "1", "2"],
            "correct": [True, False, True, True, True, True, False],
            "task": ["zeroshot"] * 7,
            "checkpoint": ["ck"] * 7,
        }
    )
    # eval id "1" of set a matches two training images (two rows); "0" of set *c* must not leak into a/b
    overlaps = pa.table({"eval_set": ["a", "a", "c"], "eval_id": ["1", "1", "0"], "uid": ["u1", "u2", "u3"]})
    t = overlap_table(preds, overlaps).to_pylist()
    assert [r["dataset"] for r in t] == ["a", "b"]
    a, b = t
    assert a["n_overlap"] == 1 and a["acc_overlap"] == 0.0 and a["acc_clean"] == 1.0
    assert a["all_minus_clean"] == pytest.approx(-0.25)
    assert a["p_value"] == 1.0  # P(X >= 0) under any null: no evidence Overlap is easier
    assert b["n_overlap"] == 0 and b["acc_overlap"] is None and b["p_value"] is None  # null, never NaN
    assert b["acc_clean"] == pytest.approx(2 / 3)


def test_overlap_table_without_dedup_is_unknown_not_clean():
    """Issue 21, finding 4: without dedup's table nothing is known; no row (and no NaN) is written."""
    preds = pa.table({"dataset": ["a", "a"], "eval_id": ["0", "1"], "correct": [True, False]})
    table = overlap_table(preds, None)
    assert table.num_rows == 0 and table.schema == overlap_table(preds, pa.table({"eval_set": ["a"], "eval_id": ["9"]})).schema


def test_overlap_table_leaves_out_sets_dedup_did_not_search():
    preds = pa.table({"dataset": ["a", "b"], "eval_id": ["0", "0"], "correct": [True, False]})
    overlaps = pa.table({"eval_set": ["a"], "eval_id": ["0"], "confirmed": [True]})
    assert [r["dataset"] for r in overlap_table(preds, overlaps, searched={"a"}).to_pylist()] == ["a"]


def test_only_confirmed_overlap_pairs_count():
    preds = pa.table({"dataset": ["a"] * 3, "eval_id": ["0", "1", "2"], "correct": [True, False, True]})
    overlaps = pa.table(
        {"eval_set": ["a", "a", "a"], "eval_id": ["0", "1", "1"], "confirmed": [False, True, False]}
    )
    (row,) = overlap_table(preds, overlaps).to_pylist()
    assert row["n_overlap"] == 1 and row["acc_overlap"] == 0.0 and row["acc_clean"] == 1.0
