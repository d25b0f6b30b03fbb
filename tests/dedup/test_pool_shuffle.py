"""The partitioned pool-duplicate joins (dedup.pool_shuffle) and per-shard decisions (dedup.decide)
against the single-node reference (dedup.pool.PoolIndex): same exact copies, same near pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dedup.decide import DecideStage, write_flags
from dedup.pool import PoolIndex
from dedup.pool_pairs import PART_ROW_GROUP, PoolVerify, assemble, flags_file, pairs_file, read_pairs
from dedup.pool_shuffle import Layout, find_pool_duplicates, merge_nearest
from dedup.rows import ShardRows, hashes_path
from pipeline.config import load_config
from pipeline.rundir import RunDir
from pipeline.runner import run_stage
from tests.dedup.test_pool import _pool

SHARD_SIZES = (700, 300, 1, 0, 650, 749)  # uneven, one single-row shard and one empty one (2,400 rows)


def write_hash_files(run: RunDir, h: np.ndarray, sha: np.ndarray, ok: np.ndarray) -> list[str]:
    """``hashes/<shard>.parquet`` of the pool in shards sized as :data:`SHARD_SIZES` (scaled to the pool)."""
    bounds = np.cumsum([0, *SHARD_SIZES]) * len(h) // sum(SHARD_SIZES)
    shards, start = [], 0
    for k, size in enumerate(np.diff(bounds).tolist()):
        sl, name = slice(start, start + size), f"{k:05d}"
        status = np.where(ok[sl], "ok", np.where(np.arange(size) % 2, "no_image", "undecodable: bad jpeg"))
        run.write_parquet(
            hashes_path(name),
            pa.table(
                {
                    "shard": [name] * size,
                    "key": [f"{name}{i:04d}" for i in range(size)],
                    "uid": [f"u{start + i}" for i in range(size)],
                    "status": status,
                    # a hashed image without a digest still takes part in the near search
                    "sha256": pa.array(
                        [None if i % 97 == 5 else s for i, s in enumerate(sha[sl])], pa.string()
                    ),
                    "phash": pa.array(np.where(ok[sl], h[sl], 0), pa.uint64()),
                }
            ),
        )
        shards.append(name)
        start += size
    assert start == len(h)
    return shards


def reference(run: RunDir, shards: list[str], tau: int | None, exact: bool = True):
    """Exact copies and near pairs by today's single-node path (as DedupStage ran it)."""
    rows = ShardRows(run, shards)
    with PoolIndex() as pool:
        for i, t in rows.iter_tables(["status", "sha256", "phash"]):
            ok = np.asarray(t.column("status").to_pylist()) == "ok"
            pool.add(
                int(rows.offsets[i]), ok, t.column("sha256"), t.column("phash").to_numpy().astype(np.uint64)
            )
        copy, first = pool.exact_duplicates() if exact else (np.zeros(0, np.int64),) * 2
        near = pool.near_pairs(tau, exclude=copy) if tau is not None else np.zeros((0, 3), np.int64)
    return copy, first, near


def _pooled(tmp: str, tau: int, n: int = 2400):
    h, sha, ok = _pool(n, seed=tau)
    run = RunDir(tmp)
    return run, write_hash_files(run, h, sha, ok)


@pytest.mark.parametrize("tau", [0, 2, 5])
def test_partitioned_joins_match_the_single_node_reference(tau):
    run, shards = _pooled(f"memory://pool-shuffle-{tau}/run", tau)
    cfg = load_config(
        None, [f"dedup.pool_tau={tau}", "dedup.pool_partition_rows=400"], run.url
    )  # ~6 buckets: many partitions per band, several shard groups
    res = find_pool_duplicates(cfg, run, shards, ShardRows(run, shards).offsets, progress=False)
    copy, first, near = reference(run, shards, tau)
    assert len(copy) > 100 and len(near) > 50 and res.layout.exact_buckets == 6 and res.layout.groups == 6
    got_copy, got_first, got_near = read_pairs(run, res.layout)
    assert np.array_equal(got_copy, copy) and np.array_equal(got_first, first)
    assert np.array_equal(got_near, near)
    assert res.counts == {"exact_copies": len(copy), "near_pairs": len(near)}
    # each group's pairs carry both sides' identifiers, looked up in the tasks
    t = pa.concat_tables(run.read_parquet(pairs_file(g)) for g in range(res.layout.groups))
    rows = ShardRows(run, shards)
    for side, col in (("", "later"), ("dup_of_", "earlier")):
        want = rows.take(t.column(col).to_numpy())
        assert all(
            t.column(side + c).to_pylist() == want.column(c).to_pylist() for c in ("uid", "shard", "key")
        )
    # the digests share a long prefix of zeros, yet every bucket gets a share (hashed from all 32 bytes)
    per_bucket = [
        run.read_marker("dedup.pool_exact", f"b{b:05d}")["stats"]["counts"]["rows"] for b in range(6)
    ]
    assert min(per_bucket) > sum(per_bucket) / 12
    # the merge across bands (in the pool_pairs tasks) was needed: some rows had candidates in several bands
    n_tasks = len(res.layout.bands) * res.layout.near_buckets
    later = np.concatenate(
        [run.read_parquet(res.layout.near_file(p)).column("later").to_numpy() for p in range(n_tasks)]
    )
    assert tau == 0 or len(later) > len(np.unique(later))


def test_partitioned_joins_without_exact_search_and_on_one_partition():
    """``exact_dups: false``: no exact copies, none left out of the near search; one bucket: one task per band."""
    run, shards = _pooled("memory://pool-shuffle-noexact/run", 3, n=900)
    cfg = load_config(None, ["dedup.pool_tau=3", "dedup.exact_dups=false"], run.url)
    res = find_pool_duplicates(cfg, run, shards, ShardRows(run, shards).offsets, progress=False)
    _, _, near = reference(run, shards, 3, exact=False)
    got_copy, _, got_near = read_pairs(run, res.layout)
    assert len(got_copy) == 0 and len(near) > 50 and res.layout.near_buckets == 1
    assert np.array_equal(got_near, near)
    cfg = load_config(None, ["dedup.pool_tau=null"], run.url)
    res = find_pool_duplicates(cfg, run, shards, ShardRows(run, shards).offsets, progress=False)
    got_copy, _, got_near = read_pairs(run, res.layout)
    assert len(got_near) == 0 and len(got_copy) > 0


class _ScoredByRows(PoolVerify):
    """Verification without images (the hash-file fixture has none): a score fixed by the pair."""

    def scores(self, near: pa.Table) -> np.ndarray:
        return _pair_score(near.column("later").to_numpy(), near.column("earlier").to_numpy())


def _pair_score(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    return ((later * 7 + earlier) % 100 / 100).astype(np.float32)


def test_pool_duplicates_are_written_per_group_and_concatenated_in_sort_order():
    """The verify tasks' parts, concatenated in group order, are the whole ``pool_duplicates``
    sorted by (shard, key, dup_of_shard, dup_of_key), with each pair's identifiers and score; the
    confirmed near copies are each group's flags."""
    run, shards = _pooled("memory://pool-dups/run", 2)
    cfg = load_config(None, ["dedup.pool_tau=2", "dedup.pool_partition_rows=400"], run.url)
    res = find_pool_duplicates(cfg, run, shards, ShardRows(run, shards).offsets, progress=False)
    verified = run_stage(_ScoredByRows(cfg, run, res.layout), progress=False, force=True)
    assert assemble(cfg, run, res.layout) == sum(res.counts.values())
    with run.fs.open(run.path("dedup/pool_duplicates.parquet"), "rb") as fh:
        pf = pq.ParquetFile(fh)
        got = pf.read()
        # copied a row group at a time, each bounded whatever the group's size
        assert pf.num_row_groups >= res.layout.groups > 1
        assert max(pf.metadata.row_group(k).num_rows for k in range(pf.num_row_groups)) <= PART_ROW_GROUP
    copy, first, near = read_pairs(run, res.layout)
    rows = ShardRows(run, shards)
    later = np.concatenate([copy, near[:, 0]])
    earlier = np.concatenate([first, near[:, 1]])
    score = _pair_score(near[:, 0], near[:, 1])
    a, b = rows.take(later), rows.take(earlier)
    want = pa.table(
        {
            **{c: a.column(c) for c in ("uid", "shard", "key")},
            **{f"dup_of_{c}": b.column(c) for c in ("uid", "shard", "key")},
            "distance": pa.array(np.concatenate([np.zeros(len(copy), np.int64), near[:, 2]]), pa.int16()),
            "verify_score": pa.array([None] * len(copy) + score.tolist(), pa.float32()),
            "confirmed": np.concatenate([np.ones(len(copy), bool), score >= cfg.dedup.pool_verify_threshold]),
            "kind": ["exact"] * len(copy) + ["near"] * len(near),
        }
    ).sort_by([(c, "ascending") for c in ("shard", "key", "dup_of_shard", "dup_of_key")])
    assert got.to_pylist() == want.to_pylist()
    flagged = np.concatenate(
        [run.read_parquet(flags_file(g)).column("gid").to_numpy() for g in range(res.layout.groups)]
    )
    confirmed = np.unique(near[score >= cfg.dedup.pool_verify_threshold, 0])
    assert 0 < len(confirmed) < len(np.unique(near[:, 0])) and np.array_equal(flagged, confirmed)
    assert verified.stats.counts["near_flagged"] == len(confirmed)


def test_merge_nearest_keeps_the_closest_across_bands():
    # later 9 has candidates from three bands; the closest three by (distance, earlier) stay
    cand = np.array([[9, 4, 2], [9, 1, 2], [5, 2, 0], [9, 3, 1], [9, 0, 3], [9, 2, 1]], np.int64)
    assert merge_nearest(cand).tolist() == [[5, 2, 0], [9, 1, 2], [9, 2, 1], [9, 3, 1]]


def test_decisions_per_shard_follow_the_reasons_precedence():
    """A sample flagged for several reasons gets the first in REASONS; one never hashed keeps its status."""
    run = RunDir("memory://pool-decide/run")
    h, sha, ok = _pool(sum(SHARD_SIZES), seed=1)
    ok[:4] = [True, False, True, True]
    shards = write_hash_files(run, h, sha, ok)
    rows = ShardRows(run, shards)
    layout = Layout.plan(shards, rows.offsets, 500, 2)
    cfg = load_config(None, ["dedup.mode=report"], run.url)
    # row 0: eval and near; 1: not hashed (no_image) but an eval hit; 2: exact and near; 3: near only;
    # 701: near only, in another shard and group
    flags = {
        "eval_overlap": np.array([0, 1]),
        "near_dup": np.array([0, 2, 3, 701]),
        "exact_dup": np.array([2]),
    }
    write_flags(run, layout, flags)
    stats = run_stage(DecideStage(cfg, run, layout, exact_files=False), progress=False, force=True).stats
    got = {}
    for g in range(layout.groups):
        for r in run.read_parquet(f"dedup/_decide/g{g:05d}.parquet").to_pylist():
            got[r["uid"]] = (r["reason"], r["removed"])
    assert got["u0"] == ("eval_overlap", False) and got["u1"][0] == "no_image"
    assert got["u2"][0] == "exact_dup" and got["u3"][0] == "near_dup" and got["u701"][0] == "near_dup"
    assert stats.counts["downloaded"] == rows.n
    assert stats.counts["flagged_near_dup"] == 2 and stats.counts["flagged_eval_overlap"] == 1
    not_hashed = int(np.sum(~ok))
    assert stats.counts["flagged_no_image"] + stats.counts["flagged_undecodable"] == not_hashed


def cluster_driver(run_url: str, out: str) -> None:
    """In a driver connected to the cluster (RAY_ADDRESS): run the joins, save what they found."""
    run = RunDir(run_url)
    shards = sorted(p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in run.glob("hashes/*.parquet"))
    cfg = load_config(None, ["dedup.pool_tau=2", "dedup.pool_partition_rows=800"], run_url)
    res = find_pool_duplicates(cfg, run, shards, ShardRows(run, shards).offsets, progress=False)
    copy, first, near = read_pairs(run, res.layout)
    np.savez(out, copy=copy, first=first, near=near)


@pytest.mark.slow
def test_partitioned_joins_on_a_three_node_cluster(tmp_path):
    """On a simulated three-node cluster, the joins' tasks spread over the nodes and find what the
    single-node reference finds."""
    from tests.pipeline.test_node_loss import ThreeNodes

    run, shards = _pooled(str(tmp_path / "run"), 2)
    copy, first, near = reference(run, shards, 2)
    nodes = ThreeNodes(tmp_path)
    try:
        code = (
            "import sys; from tests.dedup.test_pool_shuffle import cluster_driver; "
            "cluster_driver(sys.argv[1], sys.argv[2])"
        )
        out = tmp_path / "found.npz"
        proc = subprocess.run(
            [sys.executable, "-c", code, run.url, str(out)],
            env=nodes.driver_env(),
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = nodes.state
    finally:
        nodes.close()
    found = np.load(out)
    assert len(copy) > 100 and len(near) > 50
    assert np.array_equal(found["copy"], copy) and np.array_equal(found["first"], first)
    assert np.array_equal(found["near"], near)
    ran_on = {
        json.loads(p.read_text())["node"]
        for p in (tmp_path / "run" / "_done").glob("dedup.pool_*/*")
        if p.name != "_stage"
    }
    assert len(ran_on) >= 2 and ran_on <= {state["head"], *state["workers"]}


def test_decisions_file_has_one_row_group_per_flagged_shard(tmp_path):
    """``decide`` assembles the per-shard files into ``dedup/decisions.parquet`` in shard order,
    one row group per shard that has flagged samples (what a dedup_clean task reads back)."""
    from dedup.decide import decide

    run = RunDir("memory://pool-decide-file/run")
    h, sha, ok = _pool(sum(SHARD_SIZES), seed=4)
    shards = write_hash_files(run, h, sha, ok)
    rows = ShardRows(run, shards)
    layout = Layout.plan(shards, rows.offsets, 1000, None)
    cfg = load_config(None, [], run.url)
    stats = decide(cfg, run, layout, {"near_dup": np.array([3, 1005])}, exact_files=False, progress=False)
    with run.fs.open(run.path("dedup/decisions.parquet"), "rb") as fh:
        pf = pq.ParquetFile(fh)
        groups = [pf.read_row_group(g).column("shard").to_pylist() for g in range(pf.num_row_groups)]
    flagged_shards = [s for s in shards if s in {x for g in groups for x in g}]
    assert [g[0] for g in groups] == flagged_shards and all(len(set(g)) == 1 for g in groups)
    assert sum(len(g) for g in groups) == sum(v for k, v in stats.counts.items() if k.startswith("flagged_"))


def test_digest_buckets_are_a_function_of_the_digest_whatever_its_form():
    """Digests that are not 32 characters (another hash, a truncated one) take the general path;
    an equal digest gets the same bucket on either path, and a shared prefix still spreads."""
    from dedup.pool_shuffle import digest_bucket

    uniform = [f"{i:032x}" for i in range(600)]  # 31 leading zeros at most: only the tail differs
    mixed = [d if i % 3 else "short" for i, d in enumerate(uniform)]
    a, b = digest_bucket(pa.array(uniform), 5), digest_bucket(pa.array(mixed), 5)
    kept = np.arange(600) % 3 != 0
    assert np.array_equal(a[kept], b[kept])
    assert len(set(b[~kept].tolist())) == 1  # equal digests, one bucket
    assert np.bincount(a, minlength=5).min() > 600 / 5 / 2


def test_exact_search_in_numpy_matches_the_reference_query():
    """A bucket's exact copies in numpy (every digest 32 characters; rows without one join nothing)
    are the reference query's, as is the DuckDB path that digests of other lengths take; digests
    sharing their first 8 bytes but not the rest are not copies."""
    from dedup.pool_shuffle import exact_in_bucket

    rng = np.random.default_rng(0)
    n = 3000
    base = [f"{'0' * 8 if i % 5 == 0 else ''}{i:x}".rjust(32, "a")[:32] for i in range(n)]
    digest = [base[rng.integers(0, i)] if i and i % 4 == 0 else base[i] for i in range(n)]
    digest = [None if i % 31 == 3 else d for i, d in enumerate(digest)]
    gid = rng.permutation(n * 2)[:n].astype(np.int64)  # a bucket's rows are in no gid order
    part = pa.table({"gid": gid, "digest": pa.array(digest, pa.string())})

    def expected(digests):
        with PoolIndex() as pool:
            order = np.argsort(gid)  # PoolIndex takes gids as first_gid + row
            full = np.full(n * 2, None, object)
            full[gid[order]] = np.asarray(digests, object)[order]
            pool.add(0, np.isin(np.arange(n * 2), gid), pa.array(full.tolist(), pa.string()), np.zeros(n * 2))
            return pool.exact_duplicates()

    copy, first = expected(digest)
    got = exact_in_bucket(part)
    assert len(copy) > 500
    assert np.array_equal(got.column("copy").to_numpy(), copy)
    assert np.array_equal(got.column("first").to_numpy(), first)
    # without the digest-less rows (every row one block of digests): the same copies
    assert exact_in_bucket(part.filter(pc.is_valid(part.column("digest")))).equals(got)
    short = [d if i != 7 else "short" for i, d in enumerate(digest)]  # one digest of another length
    copy, first = expected(short)
    got = exact_in_bucket(part.set_column(1, "digest", pa.array(short, pa.string())))
    assert np.array_equal(got.column("copy").to_numpy(), copy)
    assert np.array_equal(got.column("first").to_numpy(), first)


def test_near_search_in_chunks_of_pairs_finds_the_same_pairs(monkeypatch):
    """The band's pairs compared a few at a time (a bounded memory) give the same candidates."""
    from dedup import pool_shuffle

    h, _, ok = _pool(2400, seed=2)
    part = pa.table({"gid": np.flatnonzero(ok).astype(np.int64), "h": pa.array(h[ok], pa.uint64())})
    whole = [pool_shuffle.near_in_band(part, 5, band) for band in range(6)]
    monkeypatch.setattr(pool_shuffle, "_PAIR_CHUNK", 7)
    chunked = [pool_shuffle.near_in_band(part, 5, band) for band in range(6)]
    assert sum(t.num_rows for t in whole) > 50
    assert all(a.equals(b) for a, b in zip(whole, chunked, strict=True))
