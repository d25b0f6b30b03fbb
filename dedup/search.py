"""Exact Hamming range search over 64-bit hashes by multi-index hashing (Norouzi et al., 2012).

Split the 64 bits into ``m`` disjoint substrings that cover all bits. If two hashes differ in at
most ``tau`` bits, some substring differs in at most ``r = tau // m`` bits (pigeonhole). So the
database is indexed once per substring in a dense bucket table (CSR: offsets over all ``2^b``
substring values), every query probes the buckets of its substring XOR each mask of popcount
``<= r``, and the candidates are checked on the full 64 bits. Nothing within ``tau`` is missed;
a pair found in several tables is kept only from the first table where it qualifies.

The probe loop is compiled (:mod:`dedup.search_kernel`); building the tables is NumPy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from dedup.search_kernel import probe

_MAX_TABLE_BITS = 24  # dense offset tables up to 2^24 int64 entries (128 MiB)


def _masks(bits: int, r: int) -> np.ndarray:
    """All ``bits``-bit masks of popcount ``<= r``."""
    out = [0]
    for k in range(1, r + 1):
        out.extend(sum(1 << i for i in c) for c in itertools.combinations(range(bits), k))
    return np.asarray(out, dtype=np.uint64)


def _plan(tau: int, n_db: int, n_query: int) -> tuple[int, int]:
    """Choose (substrings m, flips r) minimising probes + expected candidates for uniform hashes."""
    best = None
    for m in range(3, 17):
        bits = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        if max(bits) > _MAX_TABLE_BITS:
            continue
        r = tau // m
        probes = sum(len(_masks(b, r)) if r <= 4 else 10**12 for b in bits)
        cands = sum(len(_masks(b, r)) * n_db / 2**b for b in bits) if r <= 4 else 10**12
        cost = n_query * (probes * 3 + cands) + n_db * m * 4
        if best is None or cost < best[0]:
            best = (cost, m, r)
    assert best is not None
    return best[1], best[2]


@dataclass
class HammingIndex:
    """Multi-index hash table over a database of uint64 hashes, for exact search at ``<= tau``."""

    hashes: np.ndarray
    tau: int
    m: int
    r: int

    @classmethod
    def build(cls, hashes: np.ndarray, tau: int, n_query_hint: int | None = None) -> HammingIndex:
        """Index ``hashes`` for searches at Hamming distance ``<= tau`` (0..32)."""
        if not 0 <= tau <= 32:
            raise ValueError(f"tau must be in 0..32, got {tau}")
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        m, r = _plan(tau, len(hashes), n_query_hint or len(hashes))
        self = cls(hashes, tau, m, r)
        bits = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        shifts = np.cumsum([0, *bits[:-1]]).astype(np.uint64)
        sub_masks = np.array([(1 << b) - 1 for b in bits], np.uint64)
        orders, offsets, masks = [], [], []
        for b, s, mk in zip(bits, shifts, sub_masks, strict=True):
            sub = ((hashes >> s) & mk).astype(np.int64)
            orders.append(np.argsort(sub, kind="stable").astype(np.int64))
            offs = np.zeros(2**b + 1, dtype=np.int64)
            np.cumsum(np.bincount(sub, minlength=2**b), out=offs[1:])
            offsets.append(offs)
            masks.append(_masks(b, r))
        order = np.stack(orders)  # [m, N]: db rows in each table's bucket order
        # the arguments of dedup.search_kernel.probe, flattened once here
        self._tables = (
            hashes[order],  # each table's hashes in bucket order: a bucket is contiguous
            shifts,
            sub_masks,
            order,
            np.concatenate(offsets),
            np.cumsum([0, *(len(o) for o in offsets[:-1])]).astype(np.int64),
            np.concatenate(masks),
            np.cumsum([0, *(len(mk) for mk in masks)]).astype(np.int64),
        )
        return self

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All pairs ``(query_index, db_index, distance)`` with distance ``<= tau``, sorted by (query, db)."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        cap = 4 * len(queries) + 1024
        while True:
            q, d, dist = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int16)
            count = probe(queries, *self._tables, self.tau, self.r, q, d, dist)
            if count <= cap:
                break
            cap = count  # the kernel counted every pair: one more pass with room for all
        q, d, dist = q[:count], d[:count], dist[:count]
        order = np.lexsort((d, q))
        return q[order], d[order], dist[order]


def search_pairs(
    queries: np.ndarray, database: np.ndarray, tau: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (query i, database j, distance) with Hamming distance ``<= tau``, exactly, sorted by (i, j).

    The larger side is indexed and the smaller side probes it (probing costs per query).
    """
    queries = np.asarray(queries, dtype=np.uint64)
    database = np.asarray(database, dtype=np.uint64)
    if len(queries) == 0 or len(database) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.int16)
    if len(database) >= len(queries):
        return HammingIndex.build(database, tau, len(queries)).search(queries)
    d, q, dist = HammingIndex.build(queries, tau, len(database)).search(database)
    order = np.lexsort((d, q))
    return q[order], d[order], dist[order]


def brute_force_pairs(
    queries: np.ndarray, database: np.ndarray, tau: int, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: the same result by comparing every pair (NumPy, blockwise); quadratic, for tests and benchmarks."""
    queries = np.asarray(queries, dtype=np.uint64)
    database = np.asarray(database, dtype=np.uint64)
    qs, ds, dists = [], [], []
    for start in range(0, len(queries), block):
        dist = np.bitwise_count(queries[start : start + block, None] ^ database[None, :])
        qi, di = np.nonzero(dist <= tau)
        qs.append(qi + start)
        ds.append(di)
        dists.append(dist[qi, di].astype(np.int16))
    if not qs:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.int16)
    return np.concatenate(qs).astype(np.int64), np.concatenate(ds).astype(np.int64), np.concatenate(dists)


def faiss_flat_pairs(
    queries: np.ndarray, database: np.ndarray, tau: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference with FAISS ``IndexBinaryFlat.range_search`` (brute force in C++), sorted by (query, db)."""
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(_to_faiss(database))
    lims, dist, ids = index.range_search(_to_faiss(queries), tau + 1)  # faiss keeps distance < radius
    q = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64))
    order = np.lexsort((ids, q))
    return q[order], ids[order].astype(np.int64), dist[order].astype(np.int16)


def _to_faiss(h: np.ndarray) -> np.ndarray:
    # FAISS compares bytes; any fixed byte order gives the same Hamming distances.
    return np.ascontiguousarray(np.asarray(h, dtype=np.uint64)).view(np.uint8).reshape(-1, 8)
