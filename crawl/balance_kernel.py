"""The balance decision as one compiled pass over a part's (row, entry) pairs.

For each row, pairs are visited in order: a pair whose entry has ``p = 1`` keeps the row at once (no
hash); otherwise its draw (:func:`crawl.uid.pair_draws`, with the entry's key from a table made once
per worker) is compared with the entry's integer threshold, and the first hit ends the row. That is the
definition, "some pair's draw is below its p" (:func:`crawl.uid.pair_uniform`), computed without
NumPy's dozen whole-array passes and per-pair temporaries and without hashing the pairs after a
row's first hit. What is left per pair is one SplitMix64 and one table row (key and threshold in
one cache line), a cache miss only when the pair's entry is rare, i.e. seldom on real captions
(entry frequencies are Zipfian).
"""

from __future__ import annotations

import numba
import numpy as np

from crawl.uid import DRAW_BITS

SURE = np.uint64(1 << DRAW_BITS)  # a threshold this large keeps any draw: p = 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_DRAW_SHIFT = np.uint64(64 - DRAW_BITS)


@numba.njit(cache=True, nogil=True)
def _splitmix64(x: np.uint64) -> np.uint64:  # crawl.uid.splitmix64 of one value
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


UNDECIDED = 2  # keep_rows: the row needed its uid, and the uid is not hex


@numba.njit(cache=True, nogil=True)
def keep_rows(
    offsets: np.ndarray,  # int64 [n + 1], from 0
    entries: np.ndarray,  # int32 [pairs], each in [0, len(table)): compiled code checks no bounds
    uid_chars: np.ndarray,  # uint8 [n, >= 16]: each uid's characters (crawl.uid.uid_block or u64_hex)
    hex_values: np.ndarray,  # uint8 [256]: a character's hex value, 255 if it is none
    table: np.ndarray,  # uint64 [entry ids, 2]: (crawl.uid.entry_keys, crawl.uid.draw_thresholds)
) -> np.ndarray:
    """int8 [n]: 1 for rows with some pair drawn below its entry's threshold, else 0; or
    :data:`UNDECIDED` for a row that needed a draw and whose uid's first 16 characters are not hex.

    A row's uid is read (its first 16 hex digits, as :func:`crawl.uid.uid_to_u64`) only when the row
    needs a draw: a row kept by an entry at p = 1 never parses its uid.
    """
    n = len(offsets) - 1
    state = np.zeros(n, np.int8)
    for r in range(n):
        u = np.uint64(0)
        parsed = False
        for j in range(offsets[r], offsets[r + 1]):
            e = entries[j]
            threshold = table[e, 1]
            if threshold >= SURE:
                state[r] = 1
                break
            if not parsed:  # crawl.uid.uid_to_u64: the first 16 characters, big-endian
                bad = False
                for c in range(16):
                    v = hex_values[uid_chars[r, c]]
                    bad |= v == 255
                    u = (u << np.uint64(4)) | np.uint64(v & 15)
                if bad:
                    state[r] = UNDECIDED
                    break
                parsed = True
            if (_splitmix64(u ^ table[e, 0]) >> _DRAW_SHIFT) < threshold:
                state[r] = 1
                break
    return state
