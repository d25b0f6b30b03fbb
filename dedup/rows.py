"""Global row numbers over the per-shard hash files, and reading back a few rows' identifiers.

Dedup's driver must not hold every training sample's strings: at hundreds of millions of samples
that alone is tens of GB. It keeps one int8 reason code per sample and names samples by a global
row number (``gid``): the hash files ``hashes/<shard>.parquet`` in sorted shard order, rows in file
order. Identifiers (shard, key, uid) are read back from those files only for the rows that need
them (candidates, flagged samples), one shard at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pyarrow as pa

from pipeline.rundir import RunDir

T = TypeVar("T")
R = TypeVar("R")

#: Files read at once: the driver's reads are small and latency-bound on object stores.
READ_THREADS = 8


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int = READ_THREADS) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in order, with at most ``2 * threads`` results waiting
    (a plain ``Executor.map`` submits everything at once and would hold every result)."""
    with ThreadPoolExecutor(threads) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def hashes_path(shard: str) -> str:
    """``hashes/<shard>.parquet``: one shard's hash rows, written by a ``dedup`` task."""
    return f"hashes/{shard}.parquet"


class ShardRows:
    """Global row numbers (gids) over ``hashes/<shard>.parquet`` for ``shards`` (sorted)."""

    def __init__(self, run: RunDir, shards: list[str]):
        self.run = run
        self.shards = list(shards)
        counts = list(ordered_map(lambda s: run.parquet_rows(hashes_path(s)), self.shards))
        #: ``offsets[i]`` is the gid of shard ``i``'s first row; ``offsets[-1]`` the number of rows.
        self.offsets = np.zeros(len(self.shards) + 1, np.int64)
        np.cumsum(counts, out=self.offsets[1:])

    @classmethod
    def from_offsets(cls, run: RunDir, shards: list[str], offsets: np.ndarray) -> ShardRows:
        """The same lookup from known ``offsets`` (``len(shards) + 1`` gids): a task that was given
        them need not read every shard's footer again."""
        rows = cls.__new__(cls)
        rows.run, rows.shards = run, list(shards)
        rows.offsets = np.asarray(offsets, np.int64)
        if len(rows.offsets) != len(rows.shards) + 1:
            raise ValueError(
                f"{len(rows.shards)} shards need {len(rows.shards) + 1} offsets, not {len(rows.offsets)}"
            )
        return rows

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def shard_index(self, gids: np.ndarray) -> np.ndarray:
        """The index (into :attr:`shards`) of each gid's shard."""
        return np.searchsorted(self.offsets, gids, side="right") - 1

    def iter_tables(self, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
        """``(shard index, table of columns)`` for every shard, in order."""

        def read(i: int) -> tuple[int, pa.Table]:
            return i, self.run.read_parquet(hashes_path(self.shards[i]), columns)

        yield from ordered_map(read, range(len(self.shards)))

    def iter_take(self, gids: np.ndarray, columns: tuple[str, ...]) -> Iterator[pa.Table]:
        """The ``columns`` (as strings) of the rows ``gids`` (sorted ascending), one table per shard holding some."""
        gids = np.asarray(gids, np.int64)
        if len(gids) and np.any(gids[1:] < gids[:-1]):
            raise ValueError("iter_take needs ascending gids")
        idx = self.shard_index(gids)
        present = np.unique(idx)
        bounds = np.searchsorted(idx, np.append(present, present[-1] + 1 if len(present) else 0))

        def read(k: int) -> pa.Table:
            i = int(present[k])
            local = gids[bounds[k] : bounds[k + 1]] - self.offsets[i]
            table = self.run.read_parquet(hashes_path(self.shards[i]), list(columns)).take(pa.array(local))
            return pa.table({c: table.column(c).combine_chunks().cast(pa.string()) for c in columns})

        yield from ordered_map(read, range(len(present)))

    def take(self, gids: np.ndarray, columns: tuple[str, ...] = ("shard", "key", "uid")) -> pa.Table:
        """The ``columns`` (as strings) of the rows ``gids``, in the order given (duplicates allowed)."""
        gids = np.asarray(gids, np.int64)
        if len(gids) and (gids.min() < 0 or gids.max() >= self.n):
            raise IndexError(f"row {int(gids.max())} outside the {self.n:,} hashed training samples")
        distinct, inverse = np.unique(gids, return_inverse=True)
        parts = list(self.iter_take(distinct, columns))
        if not parts:
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        return pa.concat_tables(parts).take(pa.array(inverse.astype(np.int64)))
