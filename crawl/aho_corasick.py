"""The ``aho_corasick`` matching engine: ``ahocorasick_rs`` over the spaced bytes of a whole batch.

The automaton holds ``" " + pattern + " "`` for every pattern; the batch's spaced rows sit back to
back in one buffer (:func:`crawl.spacing.space_batch`), scanned in one call with overlapping
matches, so no match hides another. Rows are separated by a byte that is never valid UTF-8, so no
pattern can straddle two rows, and a hit belongs to the row its start offset falls in. Matching
UTF-8 bytes is the same as matching code points: every pattern starts and ends with an ASCII space
and UTF-8 is self-synchronising.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pyarrow as pa

from crawl.spacing import SpacedBatch


class AhoCorasickEngine:
    """Finds every (row, pattern) occurrence of ``patterns`` in a :class:`SpacedBatch`."""

    name = "aho_corasick"

    def __init__(self, patterns: pa.StringArray):
        import ahocorasick_rs

        self._ac = ahocorasick_rs.BytesAhoCorasick([f" {p} ".encode() for p in patterns.to_pylist()])
        # The automaton is read-only; the lock guards the library's documented caveat about the
        # scanned buffer when a worker matches batches in threads.
        self._lock = threading.Lock()

    def find(self, batch: SpacedBatch) -> tuple[np.ndarray, np.ndarray]:
        """(row, pattern) of every occurrence, unordered, possibly repeated."""
        with self._lock:
            hits = self._ac.find_matches_as_indexes(batch.view(), overlapping=True)
        if not hits:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64, count=3 * len(hits))
        pattern, start = flat[0::3], flat[1::3]
        row = np.searchsorted(batch.starts, start, side="right") - 1
        return row, pattern
