"""Pool-wide duplicates in DuckDB (dedup.pool) and global row numbers over hash files (dedup.rows)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dedup.pool import NEAREST, PoolIndex
from dedup.rows import ShardRows, hashes_path, ordered_map
from dedup.search import brute_force_pairs
from pipeline.rundir import RunDir


def _pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes in clusters of near copies (0-3 bits apart), digests with repeats, ~10 % not hashed."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, np.iinfo(np.uint64).max, 150, dtype=np.uint64, endpoint=True)
    h = centres[rng.integers(0, len(centres), n)]
    for i in range(n):
        for b in rng.choice(64, size=int(rng.integers(0, 4)), replace=False):
            h[i] ^= np.uint64(1) << np.uint64(int(b))
    sha = np.array([f"{x:032x}{i:032x}" for i, x in enumerate(rng.integers(0, n * 5 // 6, n))])
    return h, sha, rng.random(n) > 0.1


def _reference(h, sha, ok, tau):
    """Exact copies (first 32 hex digits equal, later row) and near pairs among the rest, by brute force."""
    first: dict[str, int] = {}
    copy, of = [], []
    for row in np.flatnonzero(ok):
        digest = sha[row][:32]
        if digest in first:
            copy.append(row)
            of.append(first[digest])
        else:
            first[digest] = row
    rest = np.setdiff1d(np.flatnonzero(ok), copy)
    return np.array(copy), np.array(of), _nearest_firsts(rest, h, tau)


def _nearest_firsts(rows: np.ndarray, h: np.ndarray, tau: int) -> np.ndarray:
    """Per row, the earlier rows within tau that come first among their hash, NEAREST closest, brute force."""
    firsts: dict[int, int] = {}
    for row in rows:  # rows ascend: the first row seen with a hash is its first
        firsts.setdefault(int(h[row]), int(row))
    first_rows = np.array(sorted(firsts.values()), dtype=np.int64)
    q, d, dist = brute_force_pairs(h[rows], h[first_rows], tau)
    later, earlier = rows[q], first_rows[d]
    keep = earlier < later
    cand = np.stack([later[keep], earlier[keep], dist[keep]], axis=1).astype(np.int64)
    cand = cand[np.lexsort((cand[:, 1], cand[:, 2], cand[:, 0]))]  # by later, then distance, then earlier
    rank = np.arange(len(cand)) - np.searchsorted(cand[:, 0], cand[:, 0])
    near = cand[rank < NEAREST]
    return near[np.lexsort((near[:, 1], near[:, 0]))]


@pytest.mark.parametrize("tau", [0, 2, 5])
def test_pool_duplicates_match_brute_force_across_shards(tau, tmp_path):
    h, sha, ok = _pool(2400, seed=tau)
    work = tmp_path / "it's work"  # a quote in the path: DuckDB's settings are SQL literals
    with PoolIndex(str(work), memory_limit="256MB") as pool:
        for start in range(0, len(h), 700):  # shards of uneven size
            sl = slice(start, start + 700)
            pool.add(start, ok[sl], pa.array(sha[sl]), h[sl])
        copy, of = pool.exact_duplicates()
        near = pool.near_pairs(tau, exclude=copy)
        assert (work / "pool.duckdb").exists()
    ref_copy, ref_of, ref_near = _reference(h, sha, ok, tau)
    assert len(ref_copy) > 100 and len(ref_near) > 50  # the check covers both kinds
    assert np.array_equal(copy, ref_copy) and np.array_equal(of, ref_of)
    assert np.array_equal(near, ref_near)
    assert not (work / "pool.duckdb").exists()  # a given work_dir is kept, the database is not


def test_pool_without_exclusions_and_empty(tmp_path):
    h, sha, ok = _pool(600, seed=9)
    with PoolIndex() as pool:
        assert len(pool.near_pairs(2)) == 0 and len(pool.exact_duplicates()[0]) == 0
        pool.add(0, ok, pa.array(sha), h)
        near = pool.near_pairs(2)
        workdir = pool.dir
    # identical copies are included when not excluded
    assert np.array_equal(near, _nearest_firsts(np.flatnonzero(ok), h, 2))
    assert not workdir.exists()  # its own temporary directory is removed
    with pytest.raises(ValueError, match="tau"), PoolIndex() as pool:
        pool.near_pairs(40)


def test_a_big_cluster_of_copies_gives_one_row_per_copy_not_every_pair():
    """4,000 re-encoded copies of one image (one pHash) and 1,000 with a bit changed: 5,000 rows,
    where every pair would be 12.5 million."""
    rng = np.random.default_rng(3)
    base = np.uint64(0x9E3779B97F4A7C15)
    h = np.full(5000, base, dtype=np.uint64)
    h[rng.choice(5000, 1000, replace=False)] ^= np.uint64(1) << np.uint64(7)
    h[:3] = rng.integers(0, np.iinfo(np.uint64).max, 3, dtype=np.uint64)  # unrelated images come first
    sha = np.array([f"{i:064x}" for i in range(5000)])
    with PoolIndex() as pool:
        pool.add(0, np.ones(5000, bool), pa.array(sha), h)
        near = pool.near_pairs(4)
    assert np.array_equal(near, _nearest_firsts(np.arange(5000), h, 4))
    firsts = {int(np.flatnonzero(h == v)[0]) for v in np.unique(h[3:])}
    assert set(near[:, 1].tolist()) <= firsts  # every copy points at the first of a hash
    assert len(near) <= 2 * 5000  # each copy: its own hash's first and the other hash's first


def test_shard_rows_number_rows_and_read_back_identifiers(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    sizes = {"00000": 3, "00001": 0, "00002": 4}
    for shard, k in sizes.items():
        keys = [f"{shard}{i:04d}" for i in range(k)]
        run.write_parquet(
            hashes_path(shard),
            pa.table({"shard": [shard] * k, "key": keys, "uid": [f"u{x}" for x in keys]}, schema=_ID_SCHEMA),
        )
    rows = ShardRows(run, list(sizes))
    assert rows.n == 7 and rows.offsets.tolist() == [0, 3, 3, 7]
    assert rows.shard_index(np.array([0, 2, 3, 6])).tolist() == [0, 0, 2, 2]
    got = rows.take(np.array([5, 0, 5, 3]))
    assert got.column("key").to_pylist() == ["000020002", "000000000", "000020002", "000020000"]
    assert got.column("uid").to_pylist()[1] == "u000000000"
    assert rows.take(np.array([], np.int64)).num_rows == 0
    parts = list(rows.iter_take(np.array([1, 2, 4]), ("key",)))
    assert [p.column("key").to_pylist() for p in parts] == [["000000001", "000000002"], ["000020001"]]
    with pytest.raises(IndexError, match="outside the 7"):
        rows.take(np.array([7]))
    with pytest.raises(ValueError, match="ascending"):
        list(rows.iter_take(np.array([4, 1]), ("key",)))


def test_ordered_map_keeps_order_and_a_bounded_window():
    started: list[int] = []
    consumed: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        return i * i

    for i, v in enumerate(ordered_map(work, range(100), threads=2)):
        assert v == i * i
        consumed.append(i)
        assert len(started) <= i + 1 + 4  # never more than 2 * threads ahead of the consumer


_ID_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("uid", pa.string())])
