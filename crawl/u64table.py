"""An exact uint64 → int32 hash table whose lookups are vectorised over NumPy arrays.

Open addressing with linear probing at a load factor of at most 1/4, so a lookup of a whole array
takes a few vectorised probe rounds (most keys settle in the first). Keys are compared in full: no
false hits, ever. Built once (per matcher), then read-only.
"""

from __future__ import annotations

import numpy as np

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd


class U64Table:
    """Maps distinct uint64 keys to int32 values; :meth:`get` returns -1 for absent keys."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        keys = np.asarray(keys, np.uint64)
        values = np.asarray(values, np.int32)
        if len(keys) != len(values):
            raise ValueError("keys and values differ in length")
        if len(np.unique(keys)) != len(keys):
            raise ValueError("U64Table keys must be distinct")
        if len(values) and values.min() < 0:
            raise ValueError("U64Table values must be >= 0 (-1 marks an empty slot)")
        self.bits = max(4, int(4 * max(len(keys), 1) - 1).bit_length())  # capacity >= 4 * len
        self.mask = (1 << self.bits) - 1
        self.keys = np.zeros(1 << self.bits, np.uint64)
        self.values = np.full(1 << self.bits, -1, np.int32)
        self._insert(keys, values)

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        # Fibonacci hashing (the top bits of key * 2^64/phi), after folding the high half in: four
        # cheap operations instead of a full mix, and even for keys that differ only in a few
        # bits (token bytes, node * V + token) the probe sequences stay short at this load.
        with np.errstate(over="ignore"):
            h = (keys ^ (keys >> np.uint64(32))) * _FIBONACCI
        return (h >> np.uint64(64 - self.bits)).astype(np.int64)

    def _insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        # Vectorised linear probing: each round, every pending key tries its next slot; of keys that
        # want the same free slot the first wins. A key placed at probe i saw slots 0..i-1 of its
        # sequence occupied, and slots are never freed, so lookups probe past them correctly.
        pending = np.arange(len(keys))
        slot = self._slot(keys)
        while len(pending):
            free = self.values[slot] < 0
            want, want_slot = pending[free], slot[free]
            taken, first = np.unique(want_slot, return_index=True)
            winners = want[first]
            self.keys[taken] = keys[winners]
            self.values[taken] = values[winners]
            placed = np.zeros(len(keys), bool)
            placed[winners] = True
            stay = ~placed[pending]
            pending, slot = pending[stay], (slot[stay] + 1) & self.mask

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of every key in ``keys`` (uint64 array), -1 where a key is absent."""
        keys = np.asarray(keys, np.uint64)
        slot = self._slot(keys)
        out = np.take(self.values, slot)
        # First round on whole arrays (most keys settle here); later rounds on the few left over.
        wrong = (out >= 0) & (np.take(self.keys, slot) != keys)
        out[wrong] = -1
        pending = np.flatnonzero(wrong)
        while len(pending):
            slot_p = (slot[pending] + 1) & self.mask
            slot[pending] = slot_p
            val = self.values[slot_p]
            hit = (val >= 0) & (self.keys[slot_p] == keys[pending])
            out[pending[hit]] = val[hit]
            pending = pending[(val >= 0) & ~hit]
        return out

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
