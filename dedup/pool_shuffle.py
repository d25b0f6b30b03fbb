"""Pool duplicates as hash-partitioned joins over Ray: no process holds the whole pool.

The same results as :class:`dedup.pool.PoolIndex` (the single-node reference, one DuckDB on the
driver), computed in three sub-stages run by :func:`~pipeline.runner.run_stage` (completion markers,
retries, Ray placement for free). The shards are cut into ``G`` contiguous groups; rows are named
by global row numbers (gids, :mod:`dedup.rows`).

1. ``dedup.pool_keys`` (one task per group), the only pass over the hash files: reads its shards'
   ``status``, ``sha256`` and ``phash`` and writes ``(gid, digest, h)`` of every hashed row,
   partitioned by a hash of the digest into ``Be`` buckets (``dedup/_pool/keys/<g>.parquet``, one
   row group per bucket; by a hash of the gid when ``exact_dups`` is off);
2. ``dedup.pool_exact`` (one task per bucket): all copies of a digest are in one bucket, so each
   later copy and its first copy are found there; written partitioned by the copy's group
   (``dedup/_pool/exact/<b>.parquet``). The same task then leaves out the copies (as the reference
   does) and writes the rest as ``(gid, h)`` once per substring (band) of the multi-index scheme,
   partitioned by a hash of the band's value into ``Bn`` buckets per band
   (``dedup/_pool/bands/<b>.parquet``; partition ``band * Bn + bucket``). (A separate per-group
   bands pass read the hash files a second time: a quarter of the search's CPU.)
3. ``dedup.pool_near`` (one task per band partition): two pHashes within ``tau`` bits agree on at
   least one band, so every pair is in the partition of each band it agrees on; it is kept only in
   the first (no pair twice). Every row with one pHash is in the same partition, so each hash's
   first row (the reference's ``reps``) is known there. Per row, the task keeps its
   :data:`~dedup.pool.NEAREST` closest earlier matches *in this band*; the global closest
   ``NEAREST`` are among those of the ``tau + 1`` bands (the bands' candidates are disjoint and the
   order (distance, earlier gid) is total), so the driver merges them exactly
   (:func:`merge_nearest`). Written as ``dedup/_pool/near/<p>.parquet``.

A task holds one partition: about ``dedup.pool_partition_rows`` rows (each of its bands' rows for a
exact task's band output), whatever the pool's size. The driver holds the per-group offsets, the exact copies and
the near candidates it must verify. Tasks run DuckDB with one thread (Ray gave them one CPU).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dedup.keyed import read_all_keyed, write_keyed
from dedup.pool import DIGEST_CHARS, NEAREST, _substrings
from dedup.rows import hashes_path
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

POOL_DIR = "dedup/_pool"
SUB_STAGES = ("dedup.pool_keys", "dedup.pool_exact", "dedup.pool_near")
#: Sub-stages of earlier versions: their completion markers are cleared too.
_OLD_SUB_STAGES = ("dedup.pool_bands",)

KEYS_SCHEMA = pa.schema([("gid", pa.int64()), ("digest", pa.string()), ("h", pa.uint64())])
EXACT_SCHEMA = pa.schema([("copy", pa.int64()), ("first", pa.int64())])
BAND_SCHEMA = pa.schema([("gid", pa.int64()), ("h", pa.uint64())])
NEAR_SCHEMA = pa.schema([("later", pa.int64()), ("earlier", pa.int64()), ("dist", pa.int64())])

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads nearby band values over buckets


@dataclass(frozen=True)
class Layout:
    """How the pool is cut: shard offsets (gids), ``groups`` of shards, exact and per-band near buckets."""

    shards: tuple[str, ...]
    offsets: tuple[int, ...]  # len(shards) + 1
    groups: int
    exact_buckets: int
    near_buckets: int
    tau: int | None

    @classmethod
    def plan(cls, shards: list[str], offsets: np.ndarray, partition_rows: int, tau: int | None) -> Layout:
        """Buckets of about ``partition_rows`` rows each (by the row count, an upper bound on hashed rows)."""
        n = int(offsets[-1])
        buckets = max(1, math.ceil(n / partition_rows))
        return cls(
            tuple(shards),
            tuple(int(x) for x in offsets),
            groups=max(1, min(buckets, len(shards))),
            exact_buckets=buckets,
            near_buckets=buckets,
            tau=tau,
        )

    @property
    def bands(self) -> list[tuple[int, int]]:
        return _substrings(self.tau) if self.tau is not None else []

    def group_shards(self, g: int) -> range:
        """Indices (into ``shards``) of group ``g``: contiguous, so groups in order keep gid order."""
        bounds = np.linspace(0, len(self.shards), self.groups + 1).astype(int)
        return range(int(bounds[g]), int(bounds[g + 1]))

    def group_of(self, gids: np.ndarray) -> np.ndarray:
        """The group holding each gid."""
        bounds = np.linspace(0, len(self.shards), self.groups + 1).astype(int)
        first_gid = np.asarray(self.offsets, np.int64)[bounds]
        return np.searchsorted(first_gid, gids, side="right") - 1

    def keys_file(self, g: int) -> str:
        return f"{POOL_DIR}/keys/{g:05d}.parquet"

    def exact_file(self, b: int) -> str:
        return f"{POOL_DIR}/exact/{b:05d}.parquet"

    def bands_file(self, b: int) -> str:
        return f"{POOL_DIR}/bands/{b:05d}.parquet"

    def near_file(self, p: int) -> str:
        return f"{POOL_DIR}/near/{p:05d}.parquet"


def digest_bucket(digest: pa.Array, buckets: int) -> np.ndarray:
    """Bucket of each digest string (at most :data:`DIGEST_CHARS` characters), from all its bytes:
    digests that are not uniform hex (a common prefix) still spread over the buckets."""
    digest = digest.combine_chunks() if isinstance(digest, pa.ChunkedArray) else digest
    n = len(digest)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(digest.buffers()[1], np.int32)[digest.offset : digest.offset + n + 1]
    lengths = offsets[1:] - offsets[:-1]
    if digest.null_count == 0 and lengths.min() == lengths.max() == DIGEST_CHARS:
        # the usual case, every digest 32 hex digits: one contiguous block
        data = np.frombuffer(digest.buffers()[2], np.uint8)
        block = data[offsets[0] : offsets[0] + n * DIGEST_CHARS].reshape(n, DIGEST_CHARS)
    else:  # other lengths: zero-padded to DIGEST_CHARS bytes
        values = digest.cast(pa.binary()).fill_null(b"").to_numpy(zero_copy_only=False)
        block = np.array(values, dtype=f"S{DIGEST_CHARS}").view(np.uint8).reshape(n, DIGEST_CHARS)
    words = np.ascontiguousarray(block).view(np.uint64)
    acc = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(words.shape[1]):
            acc = (acc ^ words[:, k]) * _MIX
        acc = (acc ^ (acc >> np.uint64(29))) * _MIX  # mix the high bits back down
    return (acc >> np.uint64(32)).astype(np.int64) % buckets


def band_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each band value."""
    return ((np.asarray(values, np.uint64) * _MIX) >> np.uint64(32)).astype(np.int64) % buckets


@contextlib.contextmanager
def _duckdb(memory_limit: str | None):
    """An in-memory DuckDB on one thread (Ray gave the task one CPU), spilling to a private temp dir."""
    spill = tempfile.mkdtemp(prefix="webclip-pool-")
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET temp_directory = '{spill.replace(chr(39), chr(39) * 2)}'")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _read_one_thread(run: RunDir, rel: str, columns: list[str]) -> pa.Table:
    """``columns`` of a Parquet file, decoded on this thread: the task has one CPU, and Arrow's
    pool (a thread per core) only adds hand-offs when every core runs a task."""
    with run.fs.open(run.path(rel), "rb") as fh:
        return pq.read_table(fh, columns=columns, use_threads=False)


class PoolStage(Stage):
    """What the sub-stages share: the layout. Not resumable as a whole: the driver clears them per run."""

    resumable = False

    def __init__(self, config, run: RunDir, layout: Layout):
        super().__init__(config, run)
        self.layout = layout

    def _group_tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(self.layout.groups)]


class PoolKeys(PoolStage):
    """Per group of shards: (gid, digest, pHash) of every hashed row, partitioned by digest bucket.

    The hash files are read once, here: the pHash travels with the digest, so the exact tasks also
    cut the near search's band partitions (no second pass over the hash files by group)."""

    name = "dedup.pool_keys"

    def tasks(self) -> list[Task]:
        return self._group_tasks()

    def process(self, task: Task, stats: Stats) -> None:
        lay, cfg = self.layout, self.config.dedup
        exact, near = bool(cfg.exact_dups), lay.tau is not None
        columns = ["status", *(["sha256"] if exact else []), *(["phash"] if near else [])]
        tables = []
        for i in lay.group_shards(task.payload):
            t = _read_one_thread(self.run, hashes_path(lay.shards[i]), columns)
            ok = pc.fill_null(pc.equal(t.column("status"), "ok"), False)
            if not near:  # a row without a digest has nothing to join on
                ok = pc.and_(ok, pc.is_valid(t.column("sha256")))
            keep = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
            take = pa.array(keep)
            n = len(keep)
            tables.append(
                pa.table(
                    {
                        "gid": pa.array(keep.astype(np.int64) + lay.offsets[i]),
                        "digest": pc.utf8_slice_codeunits(
                            t.column("sha256").take(take), 0, DIGEST_CHARS
                        ).combine_chunks()
                        if exact
                        else pa.nulls(n, pa.string()),
                        "h": pa.array(t.column("phash").fill_null(0).to_numpy().astype(np.uint64)[keep])
                        if near
                        else pa.array(np.zeros(n, np.uint64)),
                    },
                    schema=KEYS_SCHEMA,
                )
            )
        table = pa.concat_tables(tables).combine_chunks() if tables else KEYS_SCHEMA.empty_table()
        if exact:
            bucket = digest_bucket(table.column("digest"), lay.exact_buckets)
        else:  # no digests: any spread will do, so long as it is even
            bucket = band_bucket(table.column("gid").to_numpy().astype(np.uint64), lay.exact_buckets)
        write_keyed(self.run, lay.keys_file(task.payload), table, bucket)
        stats.inc("hashed", table.num_rows)


class PoolExact(PoolStage):
    """Per digest bucket: each later copy of a digest and its first copy, partitioned by the copy's
    group; then the bucket's other rows, (gid, pHash) once per band, partitioned by band bucket."""

    name = "dedup.pool_exact"

    def tasks(self) -> list[Task]:
        return [Task(f"b{b:05d}", b) for b in range(self.layout.exact_buckets)]

    def process(self, task: Task, stats: Stats) -> None:
        lay = self.layout
        part = read_all_keyed(
            self.run, [lay.keys_file(g) for g in range(lay.groups)], task.payload, KEYS_SCHEMA
        )
        copies = np.empty(0, np.int64)
        if self.config.dedup.exact_dups:
            out = exact_in_bucket(part, self.config.dedup.memory_limit)
            copies = out.column("copy").to_numpy()
            write_keyed(self.run, lay.exact_file(task.payload), out, lay.group_of(copies))
            stats.inc("exact_copies", out.num_rows)
        stats.inc("rows", part.num_rows)
        if lay.tau is not None:
            self._write_bands(task.payload, part, copies)

    def _write_bands(self, b: int, part: pa.Table, copies: np.ndarray) -> None:
        """This bucket's rows but exact copies (as the reference: left out of the near search), once
        per band, partitioned by a hash of the band's value (partition ``band * Bn + bucket``)."""
        lay = self.layout
        gid = part.column("gid").to_numpy()
        h = part.column("h").to_numpy()
        if len(copies):  # every copy of this bucket's digests is in this bucket
            keep = ~np.isin(gid, copies)
            gid, h = gid[keep], h[keep]
        # band by band, each already in bucket order: the band-major whole is in partition order
        gids, hashes, parts = [], [], []
        for band, (shift, bits) in enumerate(lay.bands):
            bucket = band_bucket((h >> np.uint64(shift)) & np.uint64((1 << bits) - 1), lay.near_buckets)
            order = np.argsort(
                bucket.astype(np.uint16 if lay.near_buckets < 1 << 16 else np.int64), kind="stable"
            )
            gids.append(gid[order])
            hashes.append(h[order])
            parts.append(band * lay.near_buckets + bucket[order])
        table = pa.table(
            {"gid": pa.array(np.concatenate(gids)), "h": pa.array(np.concatenate(hashes))}, schema=BAND_SCHEMA
        )
        parts = np.concatenate(parts)
        write_keyed(self.run, lay.bands_file(b), table, parts)


def exact_in_bucket(part: pa.Table, memory_limit: str | None = None) -> pa.Table:
    """The reference's exact search (``PoolIndex.exact_duplicates``) over one digest bucket's rows
    ``part`` (gid, digest, ...): (copy, first) of each later copy of a digest, by copy.

    When every digest present is :data:`DIGEST_CHARS` characters (the usual case), in numpy: the
    digests' first 8 bytes sorted, and only the rows that share them (the copies, and rare
    collisions) compared in full; otherwise the reference's query in DuckDB."""
    digest = part.column("digest").combine_chunks()
    gid = part.column("gid").to_numpy()
    n = len(digest)
    if n == 0:
        return EXACT_SCHEMA.empty_table()
    offsets = np.frombuffer(digest.buffers()[1], np.int32)[digest.offset : digest.offset + n + 1]
    valid = digest.is_valid().to_numpy(zero_copy_only=False)  # a row without a digest joins nothing
    if not valid.any():
        return EXACT_SCHEMA.empty_table()
    lengths = (offsets[1:] - offsets[:-1])[valid]
    if lengths.min() == lengths.max() == DIGEST_CHARS:
        data = np.frombuffer(digest.buffers()[2], np.uint8)
        with_digest = np.flatnonzero(valid)
        gid = gid[with_digest]
        if len(with_digest) == n:  # the usual case, every row a digest: one contiguous block
            block = data[offsets[0] : offsets[0] + n * DIGEST_CHARS].reshape(n, DIGEST_CHARS)
        else:
            block = data[offsets[:-1][with_digest, None] + np.arange(DIGEST_CHARS)]
        words = np.ascontiguousarray(block).view(np.uint64)
        order = np.argsort(words[:, 0])
        w0 = words[order, 0]
        same = np.flatnonzero(w0[1:] == w0[:-1])
        rows = order[np.unique(np.concatenate((same, same + 1)))]  # rows sharing their first 8 bytes
        w = words[rows]
        by = np.lexsort((gid[rows], *(w[:, k] for k in range(w.shape[1] - 1, -1, -1))))
        rows, w = rows[by], w[by]
        first_of = np.ones(len(rows), bool)  # the first (smallest gid) row of each digest
        first_of[1:] = (w[1:] != w[:-1]).any(axis=1)
        firsts = gid[rows][first_of][np.cumsum(first_of) - 1]
        copy, first = gid[rows][~first_of], firsts[~first_of]
        by = np.argsort(copy)
        return pa.table({"copy": pa.array(copy[by]), "first": pa.array(first[by])}, schema=EXACT_SCHEMA)
    with _duckdb(memory_limit) as con:
        con.register("part", part.select(["gid", "digest"]))
        out = con.sql(
            """
            WITH firsts AS (
                SELECT digest, min(gid) AS first FROM part
                WHERE digest IS NOT NULL GROUP BY digest HAVING count(*) > 1
            )
            SELECT p.gid AS copy, f.first FROM part p JOIN firsts f USING (digest)
            WHERE p.gid > f.first ORDER BY copy
            """
        ).to_arrow_table()
    return pa.table({c: out.column(c).cast(pa.int64()) for c in ("copy", "first")}, schema=EXACT_SCHEMA)


class PoolNear(PoolStage):
    """Per band partition: each row's closest earlier first-of-their-hash rows agreeing first on this band."""

    name = "dedup.pool_near"

    def tasks(self) -> list[Task]:
        return [Task(f"p{p:05d}", p) for p in range(len(self.layout.bands) * self.layout.near_buckets)]

    def process(self, task: Task, stats: Stats) -> None:
        lay, p = self.layout, task.payload
        tau = int(lay.tau)
        band = p // lay.near_buckets
        part = read_all_keyed(self.run, [lay.bands_file(b) for b in range(lay.exact_buckets)], p, BAND_SCHEMA)
        out = near_in_band(part, tau, band)
        # by the later row's group: a group's task (dedup.pool_pairs) reads all its rows' candidates
        write_keyed(self.run, lay.near_file(p), out, lay.group_of(out.column("later").to_numpy()))
        stats.inc("rows", part.num_rows)
        stats.inc("near_candidates", out.num_rows)


def near_in_band(part: pa.Table, tau: int, band: int) -> pa.Table:
    """The reference's near search (``PoolIndex.near_pairs``) restricted to pairs whose first
    agreeing band is ``band``, over the rows ``part`` (gid, h) of one partition of that band.

    In numpy, not DuckDB: the reference's joins are sorts here (a partition's distinct hashes by
    value, then by this band's value), which cost a task about half of DuckDB's hash joins and
    none of its setup. Per row: its closest earlier first-of-their-hash rows, at most
    :data:`NEAREST`, by (distance, earlier gid); in no particular order."""
    gid = part.column("gid").to_numpy()
    h = part.column("h").to_numpy().astype(np.uint64, copy=False)
    if not len(gid):
        return NEAR_SCHEMA.empty_table()
    # reps: the distinct hashes and each one's first row (the smallest gid)
    order = np.argsort(h)  # unstable is fine (the first row is a minimum), and 3x cheaper
    hs = h[order]
    new = np.empty(len(hs), bool)
    new[0], new[1:] = True, hs[1:] != hs[:-1]
    starts = np.flatnonzero(new)
    rep_h = hs[starts]
    rep_first = np.minimum.reduceat(gid[order], starts)
    row_rep = np.empty(len(h), np.int64)
    row_rep[order] = np.cumsum(new) - 1
    cands = []
    if band == 0:  # a hash with itself (distance 0): once, in the first band
        earlier = rep_first[row_rep]
        later = earlier < gid
        cands.append(np.stack([gid[later], earlier[later], np.zeros(int(later.sum()), np.int64)], axis=1))
    la, lb, ld = _links(rep_h, tau, band)
    if len(la):
        by = np.argsort(la, kind="stable")
        la, lb, ld = la[by], lb[by], ld[by]
        n_links = np.bincount(la, minlength=len(rep_h))
        link_start = np.concatenate(([0], np.cumsum(n_links)[:-1]))
        rows = np.flatnonzero(n_links[row_rep])  # the few rows whose hash has a link
        k = n_links[row_rep[rows]]
        row = np.repeat(rows, k)
        link = np.repeat(link_start[row_rep[rows]], k) + (
            np.arange(len(row)) - np.repeat(np.cumsum(k) - k, k)
        )
        earlier = rep_first[lb[link]]
        keep = earlier < gid[row]
        cands.append(np.stack([gid[row][keep], earlier[keep], ld[link][keep]], axis=1))
    cand = np.concatenate(cands) if cands else np.zeros((0, 3), np.int64)
    near = merge_nearest(cand)
    return pa.table(
        {c: pa.array(near[:, i]) for i, c in enumerate(("later", "earlier", "dist"))}, schema=NEAR_SCHEMA
    )


#: Pairs of hashes sharing one band value compared at a time in :func:`_links` (bounds its memory).
_PAIR_CHUNK = 1 << 22


def _links(rep_h: np.ndarray, tau: int, band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance): indices into ``rep_h`` (distinct hashes) of the pairs within ``tau`` bits
    whose first agreeing band is ``band``, both ways round: the reference's ``links`` but the self pairs."""
    subs = _substrings(tau)
    shift, bits = subs[band]
    mask = np.uint64((1 << bits) - 1)
    c = (rep_h >> np.uint64(shift)) & mask
    oc = np.argsort(c)
    cs = c[oc]
    # each position's partners: the later positions of its run of equal band values
    run_end = np.flatnonzero(np.concatenate((cs[1:] != cs[:-1], [True]))) + 1
    end = np.repeat(run_end, np.diff(np.concatenate(([0], run_end))))
    partners = end - np.arange(len(cs)) - 1
    pos = np.flatnonzero(partners)
    out_a, out_b, out_d = [], [], []
    total = np.cumsum(partners[pos])
    lo = 0
    while lo < len(pos):  # chunks of about _PAIR_CHUNK pairs
        base = total[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(total, base + _PAIR_CHUNK, side="right")))
        p = pos[lo:hi]
        k = partners[p]
        i = np.repeat(p, k)
        j = i + 1 + (np.arange(len(i)) - np.repeat(np.cumsum(k) - k, k))
        a, b = oc[i], oc[j]
        d = _popcount(rep_h[a] ^ rep_h[b])
        keep = d <= tau
        for s_, b_ in subs[:band]:  # kept only in the first band on which the pair agrees
            m = np.uint64((1 << b_) - 1)
            keep &= ((rep_h[a] >> np.uint64(s_)) & m) != ((rep_h[b] >> np.uint64(s_)) & m)
        out_a += [a[keep], b[keep]]
        out_b += [b[keep], a[keep]]
        out_d += [d[keep]] * 2
        lo = hi
    if not out_a:
        return (np.zeros(0, np.int64),) * 3
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_d)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, as int64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], np.int64)
    return table[np.ascontiguousarray(x).view(np.uint8).reshape(-1, 8)].sum(axis=1)


def merge_nearest(cand: np.ndarray) -> np.ndarray:
    """``[k, 3]`` (later, earlier, dist) from several bands -> each later's :data:`NEAREST` closest
    (ties: earlier first), sorted by (later, earlier): :meth:`PoolIndex.near_pairs`'s output."""
    if not len(cand):
        return np.zeros((0, 3), np.int64)
    cand = cand[np.lexsort((cand[:, 1], cand[:, 2], cand[:, 0]))]
    rank = np.arange(len(cand)) - np.searchsorted(cand[:, 0], cand[:, 0])
    near = cand[rank < NEAREST]
    return near[np.lexsort((near[:, 1], near[:, 0]))]


@dataclass
class PoolResult:
    """A pool search's result. The single-node reference returns its arrays (``exact_copy`` with
    ``exact_first``, by copy; ``near``: ``[k, 3]`` (later, earlier, distance) as
    :meth:`PoolIndex.near_pairs`); the partitioned joins leave theirs in files, one per group
    (:mod:`dedup.pool_pairs`), and the driver keeps only ``counts`` (arrays ``None``)."""

    layout: Layout
    exact_copy: np.ndarray | None = None
    exact_first: np.ndarray | None = None
    near: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def in_files(self) -> bool:
        return self.near is None


def clear(run: RunDir) -> None:
    """Forget a previous search: its files and its sub-stages' completion markers."""
    from dedup.pool_pairs import PoolPairs, PoolVerify

    for rel in (
        POOL_DIR,
        *(f"_done/{name}" for name in (*SUB_STAGES, *_OLD_SUB_STAGES, PoolPairs.name, PoolVerify.name)),
    ):
        with contextlib.suppress(FileNotFoundError):
            run.remove(rel, recursive=True)


def find_pool_duplicates(
    config, run: RunDir, shards: list[str], offsets: np.ndarray, progress: bool = True
) -> PoolResult:
    """Exact and near pool duplicates over ``hashes/<shard>.parquet`` by the partitioned joins
    (``dedup.exact_dups``, ``dedup.pool_tau``, ``dedup.pool_partition_rows``), the same pairs as
    :class:`~dedup.pool.PoolIndex`'s ``exact_duplicates`` and ``near_pairs(tau, exclude=copies)``.

    Nothing per pair comes back to the driver: the pairs, with both sides' identifiers, are in
    ``dedup/_pool/pairs/<group>.parquet`` (:class:`dedup.pool_pairs.PoolPairs`); the result holds
    their counts (``exact_copies``, ``near_pairs``)."""
    from dedup.pool_pairs import PoolPairs
    from pipeline.runner import run_stage

    cfg = config.dedup
    layout = Layout.plan(shards, offsets, cfg.pool_partition_rows, cfg.pool_tau)
    clear(run)
    if cfg.exact_dups or cfg.pool_tau is not None:
        run_stage(PoolKeys(config, run, layout), progress=progress, force=True)
        run_stage(PoolExact(config, run, layout), progress=progress, force=True)
    if cfg.pool_tau is not None:
        run_stage(PoolNear(config, run, layout), progress=progress, force=True)
    pairs = run_stage(PoolPairs(config, run, layout), progress=progress, force=True)
    counts = {k: int(pairs.stats.counts.get(k, 0)) for k in ("exact_copies", "near_pairs")}
    return PoolResult(layout, counts=counts)
