"""Multi-index Hamming search returns exactly what brute force returns."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.search import HammingIndex, brute_force_pairs, faiss_flat_pairs, search_pairs


def _flip(h: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each hash with exactly ``k`` distinct random bits flipped."""
    out = h.copy()
    for i in range(len(h)):
        for b in rng.choice(64, size=k, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(int(b))
    return out


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("tau", [0, 1, 4, 8, 10, 12])
def test_random_sets_with_planted_neighbours_match_brute_force(tau):
    rng = np.random.default_rng(tau)
    db = rng.integers(0, np.iinfo(np.uint64).max, size=3000, dtype=np.uint64, endpoint=True)
    queries = rng.integers(0, np.iinfo(np.uint64).max, size=1500, dtype=np.uint64, endpoint=True)
    # Neighbours at every distance around tau: many exactly at tau, some at tau + 1.
    for k in range(0, tau + 2):
        picks = rng.choice(len(db), 40)
        queries[k * 40 : (k + 1) * 40] = _flip(db[picks], k, rng)
    ref = brute_force_pairs(queries, db, tau)
    assert len(ref[0]) >= 40 * (tau + 1)
    _assert_same(search_pairs(queries, db, tau), ref)
    _assert_same(faiss_flat_pairs(queries, db, tau), ref)
    # The smaller-side-indexed path gives the same pairs.
    _assert_same(search_pairs(db, queries, tau), brute_force_pairs(db, queries, tau))


def test_adversarial_all_equal_and_ties_at_tau():
    tau = 8
    base = np.uint64(0x0123456789ABCDEF)
    db = np.full(500, base, dtype=np.uint64)
    rng = np.random.default_rng(7)
    queries = np.concatenate(
        [
            np.full(20, base, dtype=np.uint64),
            _flip(np.full(200, base, dtype=np.uint64), tau, rng),  # every pair exactly at tau
            _flip(np.full(50, base, dtype=np.uint64), tau + 1, rng),  # every pair just outside
            # All flips packed in one substring: the worst case for the pigeonhole split.
            np.array(
                [base ^ np.uint64((1 << tau) - 1), base ^ np.uint64(((1 << tau) - 1) << 56)], dtype=np.uint64
            ),
        ]
    )
    q, d, dist = search_pairs(queries, db, tau)
    _assert_same((q, d, dist), brute_force_pairs(queries, db, tau))
    assert len(q) == (20 + 200 + 2) * 500 and set(np.unique(dist)) == {0, tau}


def test_structured_hashes_zero_and_all_ones():
    db = np.array([0, np.iinfo(np.uint64).max, 0, 1, 3, 7], dtype=np.uint64)
    queries = np.array([0, np.iinfo(np.uint64).max, 0xFF], dtype=np.uint64)
    for tau in (0, 2, 8, 32):
        _assert_same(search_pairs(queries, db, tau), brute_force_pairs(queries, db, tau))


def test_empty_inputs_and_bad_tau():
    q, d, dist = search_pairs(np.zeros(0, np.uint64), np.arange(5, dtype=np.uint64), 3)
    assert len(q) == len(d) == len(dist) == 0
    with pytest.raises(ValueError, match="tau"):
        HammingIndex.build(np.arange(5, dtype=np.uint64), 40)
