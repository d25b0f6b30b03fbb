"""Duplicates inside the training pool, searched out of core with DuckDB.

Both searches are pool-wide joins: byte-identical images (same sha256) anywhere in the pool, and
images whose pHashes lie within ``tau`` bits. Holding every sample's digest and hash in the
driver's memory does not scale (hundreds of millions of samples), so the rows go, one shard at a
time, into a DuckDB database in a local work directory, and DuckDB runs both as joins that spill
to disk past its memory limit.

The near-duplicate search is exact multi-index hashing (as :mod:`dedup.search`) written as
equi-joins over the pool's *distinct* hashes: the 64 bits are cut into ``tau + 1`` substrings, and
two hashes within ``tau`` bits agree on at least one of them (pigeonhole). Each substring is one
self-join on equality, checked on the full 64 bits; a pair is kept only from the first substring on
which it agrees, so none is reported twice. Each image is then matched to the first image of each
hash near its own, its closest :data:`NEAREST` kept: linear in the size of a cluster of copies,
not quadratic.

Rows are named by global row numbers (``gid``, :mod:`dedup.rows`); the *later* copy (larger gid)
is the one flagged, so the first copy of an image in shard order stays.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Leading hex digits of the sha256 compared: 128 bits identify an image.
DIGEST_CHARS = 32
#: Earlier matches kept per image by :meth:`PoolIndex.near_pairs` (each is verified; one confirmed
#: match flags the image).
NEAREST = 3


def _substrings(tau: int) -> list[tuple[int, int]]:
    """(shift, bits) of the ``tau + 1`` substrings covering the 64 bits, as :mod:`dedup.search` cuts them."""
    m = tau + 1
    bits = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    shifts = [int(s) for s in np.cumsum([0, *bits[:-1]])]
    return list(zip(shifts, bits, strict=True))


class PoolIndex:
    """The pool's hashed training images (gid, sha256 digest, pHash) in a DuckDB database on local disk.

    ``work_dir``: where the database and DuckDB's spill files go (default: a new temporary
    directory, removed on :meth:`close`); ``memory_limit``: DuckDB's limit, e.g. ``"8GB"``
    (default: DuckDB's, 80 % of RAM).
    """

    def __init__(self, work_dir: str | None = None, memory_limit: str | None = None):
        self._owned = work_dir is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix="webclip-dedup-"))
            if work_dir is None
            else Path(work_dir).expanduser()
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        db = self.dir / "pool.duckdb"
        db.unlink(missing_ok=True)  # a killed run's leftover: this index is rebuilt every time
        self.con = duckdb.connect(str(db))
        spill = str(self.dir / "spill").replace("'", "''")  # a quote in the path must not end the literal
        self.con.execute(f"SET temp_directory = '{spill}'")
        self.con.execute("SET preserve_insertion_order = false")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.con.execute("CREATE TABLE pool (gid BIGINT, digest VARCHAR, h UBIGINT)")

    def add(
        self, first_gid: int, ok: np.ndarray, sha256: pa.ChunkedArray | pa.Array, phash: np.ndarray
    ) -> None:
        """Add one shard's rows: gids ``first_gid + i``; only rows where ``ok`` (hashed) take part."""
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            return
        digest = pc.utf8_slice_codeunits(sha256, 0, DIGEST_CHARS).take(pa.array(keep))
        batch = pa.table(
            {
                "gid": pa.array(keep.astype(np.int64) + first_gid),
                "digest": digest,
                "h": pa.array(np.asarray(phash, np.uint64)[keep]),
            }
        )
        self.con.register("batch", batch)
        self.con.execute("INSERT INTO pool SELECT gid, digest, h FROM batch")
        self.con.unregister("batch")

    def exact_duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(copy, first)`` gids: every later copy of a byte-identical image and its first copy, by copy."""
        out = self.con.execute(
            """
            WITH firsts AS (
                SELECT digest, min(gid) AS first FROM pool
                WHERE digest IS NOT NULL GROUP BY digest HAVING count(*) > 1
            )
            SELECT p.gid AS copy, f.first FROM pool p JOIN firsts f USING (digest)
            WHERE p.gid > f.first ORDER BY copy
            """
        ).fetchnumpy()
        return _i64(out["copy"]), _i64(out["first"])

    def near_pairs(self, tau: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """``[k, 3]`` int64 (later gid, earlier gid, distance): each image's closest earlier matches.

        For every image, the earlier images within ``tau`` bits that are the first of their hash
        (the earliest row with that exact pHash), at most :data:`NEAREST` of them, closest first
        (ties: earlier first); sorted by (later, earlier). Rows in ``exclude`` (e.g. the later
        copies of exact duplicates, already flagged; their first copy has the same hash) are left
        out of the search.

        Why not every pair: the web repeats images thousands of times, re-encoded or resized, and
        such copies mostly share one pHash. A cluster of m copies has m²/2 pairs (50 million at
        m = 10,000), but m - 1 rows here. The join runs over distinct hashes, and each image is
        matched to the first image of each hash near its own.
        """
        if not 0 <= tau <= 32:
            raise ValueError(f"pool tau must be in 0..32, got {tau}")
        subs = _substrings(tau)
        cols = ", ".join(
            ("h" if b == 64 else f"(h >> {s}) & {(1 << b) - 1}") + f" AS c{i}"
            for i, (s, b) in enumerate(subs)
        )
        self.con.register(
            "excluded", pa.table({"gid": pa.array(_i64(exclude if exclude is not None else []))})
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE near AS SELECT gid, h FROM pool "
            "WHERE gid NOT IN (SELECT gid FROM excluded)"
        )
        self.con.unregister("excluded")
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE reps AS SELECT h, min(gid) AS first, {cols} FROM near GROUP BY h"
        )
        # pairs of distinct hashes within tau, both ways round, each from the first substring they share
        links = ["SELECT h AS ha, h AS hb, 0 AS dist FROM reps"]
        for i in range(len(subs)):
            earlier_differ = "".join(f" AND a.c{j} <> b.c{j}" for j in range(i))
            links.append(
                f"SELECT a.h AS ha, b.h AS hb, bit_count(xor(a.h, b.h)) AS dist "
                f"FROM reps a JOIN reps b ON a.c{i} = b.c{i} AND a.h <> b.h "
                f"WHERE bit_count(xor(a.h, b.h)) <= {tau}{earlier_differ}"
            )
        # a table, not a CTE: inlined, the optimizer joined near with reps first (a cross product)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE links AS {' UNION ALL '.join(links)}")
        out = self.con.execute(
            f"""
            SELECT n.gid AS later, r.first AS earlier, l.dist AS dist
            FROM near n JOIN links l ON n.h = l.ha JOIN reps r ON r.h = l.hb
            WHERE r.first < n.gid
            QUALIFY row_number() OVER (PARTITION BY n.gid ORDER BY l.dist, r.first) <= {NEAREST}
            ORDER BY later, earlier
            """
        ).fetchnumpy()
        for table in ("near", "reps", "links"):
            self.con.execute(f"DROP TABLE {table}")
        return np.stack([_i64(out["later"]), _i64(out["earlier"]), _i64(out["dist"])], axis=1)

    def close(self) -> None:
        self.con.close()
        if self._owned:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for name in ("pool.duckdb", "pool.duckdb.wal", "spill"):
                p = self.dir / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def __enter__(self) -> PoolIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)
