"""The multi-index probe loop of :mod:`dedup.search`, compiled.

Per query: for each substring table, each mask of popcount ``<= r``, the bucket of the query's
substring XOR the mask is walked and every member is checked on the full 64 bits; a pair is kept
only from the first table on which it lies within ``r`` flips. The vectorised NumPy form of the
same loop materialises every bucket member of a chunk of queries (index arrays of the candidates'
size, several times over) before checking them, so at wide radii (τ = 10: 548 probes per query)
it is bound by memory traffic; here each candidate costs one XOR and one popcount.
"""

from __future__ import annotations

import numba
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE, _TWO, _FOUR, _S56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


@numba.njit(cache=True, nogil=True)
def _popcount(x: np.uint64) -> int:
    # SWAR popcount; LLVM turns this idiom into the POPCNT instruction where the CPU has it
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> _TWO) & _M2)
    x = (x + (x >> _FOUR)) & _M4
    return int((x * _H01) >> _S56)


@numba.njit(cache=True, nogil=True)
def probe(
    queries: np.ndarray,  # [Q] uint64
    bucketed: np.ndarray,  # [m, N] uint64: the db hashes in each table's bucket order
    shifts: np.ndarray,  # [m] uint64: each substring's lowest bit
    sub_masks: np.ndarray,  # [m] uint64: each substring's width as a mask
    orders: np.ndarray,  # [m, N] int64: db rows sorted by substring value, per table
    offsets: np.ndarray,  # flat int64: per table, 2^bits + 1 bucket starts into its order
    offset_starts: np.ndarray,  # [m] int64: where each table's offsets begin in ``offsets``
    masks: np.ndarray,  # flat uint64: per table, its flip masks of popcount <= r
    mask_starts: np.ndarray,  # [m + 1] int64
    tau: int,
    r: int,
    out_q: np.ndarray,  # [cap] int64
    out_d: np.ndarray,  # [cap] int64
    out_dist: np.ndarray,  # [cap] int16
) -> int:
    """Write every pair within ``tau`` into the ``out_*`` arrays (up to their length); return how many
    there are (more than the length: call again with room for all)."""
    cap = len(out_q)
    count = 0
    m = len(shifts)
    for qi in range(len(queries)):
        qh = queries[qi]
        for t in range(m):
            sub = (qh >> shifts[t]) & sub_masks[t]
            base = offset_starts[t]
            for k in range(mask_starts[t], mask_starts[t + 1]):
                bucket = base + np.int64(sub ^ masks[k])
                for j in range(offsets[bucket], offsets[bucket + 1]):
                    x = qh ^ bucketed[t, j]  # a bucket's hashes are contiguous: no gather
                    dist = _popcount(x)
                    if dist > tau:
                        continue
                    seen = False  # within r flips on an earlier table: reported there
                    for t0 in range(t):
                        if _popcount((x >> shifts[t0]) & sub_masks[t0]) <= r:
                            seen = True
                            break
                    if seen:
                        continue
                    if count < cap:
                        out_q[count] = qi
                        out_d[count] = orders[t, j]
                        out_dist[count] = dist
                    count += 1
    return count
