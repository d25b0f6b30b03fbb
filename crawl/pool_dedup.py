"""Cross-file duplicate removal of the pool: a hash-partitioned shuffle of uids, in three Ray stages.

Each extract task already drops duplicates inside its own input; a pair repeated across inputs is
removed here, keeping the first occurrence in part order (parts sorted by name, then rows). No
process ever holds all uids: the pool parts are split into ``G`` contiguous groups and the uids
into ``B`` buckets by hash, and

1. ``extract.uids`` (one task per group) reads the uid column of its parts and writes
   ``pool/_dedup/uids/<g>.parquet`` (uid, part), one row group per bucket;
2. ``extract.dups`` (one task per bucket) reads its row group of every group file, in group order
   — so rows stay in part order — finds every uid seen before (a stable sort by uid) and writes
   those later copies to ``pool/_dedup/drops/<b>.parquet`` (uid, part), one row group per group;
3. ``extract.apply`` (one task per group) reads its row group of every drops file and rewrites
   the parts that lose rows.

Each is a :class:`~pipeline.stage.Stage` run by :func:`~pipeline.runner.run_stage`, so the shuffle
gets completion markers, retries and resumption for free. Applying is idempotent (rows are
removed by uid, and a part holds a uid once), so a part rewritten just before a crash is safe to
rewrite again. ``B`` is chosen so a bucket holds about ``extract.dedup_bucket_rows`` uids: memory
per task is bounded whatever the pool's size; the shuffle writes ``G + B`` files.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl.uid import uid_to_u64
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

DEDUP_DIR = "pool/_dedup"
SUB_STAGES = ("extract.uids", "extract.dups", "extract.apply")
_KEYS = b"webclip_row_group_keys"


def layout(n_rows: int, n_parts: int, bucket_rows: int) -> tuple[int, int]:
    """(buckets, groups) for a pool of ``n_rows`` rows in ``n_parts`` parts."""
    buckets = max(1, math.ceil(n_rows / bucket_rows))
    return buckets, max(1, min(buckets, n_parts))


def invalidate(run: RunDir) -> None:
    """Forget a previous shuffle: called whenever pool parts are (re)written."""
    for name in SUB_STAGES:
        _remove(run, f"_done/{name}")
    _remove(run, DEDUP_DIR)


def _remove(run: RunDir, rel: str) -> None:
    # extract tasks call this concurrently: another may have removed it first
    with contextlib.suppress(FileNotFoundError):
        run.remove(rel, recursive=True)


def write_keyed(run: RunDir, rel: str, table: pa.Table, key: str) -> None:
    """Write ``table`` (sorted by the int column ``key``) with one row group per key value."""
    keys = table.column(key).to_numpy()
    cuts = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], cuts)) if len(keys) else np.zeros(0, np.int64)
    stops = np.concatenate((cuts, [len(keys)])) if len(keys) else np.zeros(0, np.int64)
    body = table.drop_columns([key])
    schema = body.schema.with_metadata({_KEYS: json.dumps([int(keys[s]) for s in starts])})
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd") as writer:
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            writer.write_table(body.slice(a, b - a))
    run.write_bytes(rel, buf.getvalue())


def read_keyed(run: RunDir, rel: str, key: int) -> pa.Table | None:
    """The row group written for ``key`` by :func:`write_keyed`, or None if it had no rows."""
    with run.fs.open(run.path(rel), "rb") as fh:
        pf = pq.ParquetFile(fh)
        keys = json.loads(pf.schema_arrow.metadata[_KEYS])
        if key not in keys:
            return None
        return pf.read_row_group(keys.index(key)).replace_schema_metadata(None)


class _Shuffle(Stage):
    """What the three sub-stages share: the parts, their groups, the bucket count."""

    def __init__(self, config, run: RunDir, parts: list[str], buckets: int, groups: int):
        super().__init__(config, run)
        self.parts = parts
        self.buckets = buckets
        self.groups = groups

    def group_parts(self, g: int) -> range:
        """Indices (into ``parts``) of group ``g``: contiguous, so groups in order keep part order."""
        bounds = np.linspace(0, len(self.parts), self.groups + 1).astype(int)
        return range(bounds[g], bounds[g + 1])


class UidMap(_Shuffle):
    """Per group of parts: (uid, part) of every row, partitioned into buckets by uid hash."""

    name = "extract.uids"

    def tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(self.groups)]

    def process(self, task: Task, stats: Stats) -> None:
        tables = []
        for i in self.group_parts(task.payload):
            uids = self.run.read_parquet(self.parts[i], columns=["uid"]).column("uid")
            tables.append(pa.table({"uid": uids, "part": pa.array(np.full(len(uids), i, np.int32))}))
        table = pa.concat_tables(tables).combine_chunks() if tables else _EMPTY
        # uids are hashes already (hex XXH3-128): their leading 64 bits spread evenly over buckets
        bucket = (uid_to_u64(table.column("uid")) % np.uint64(self.buckets)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")  # stable: part order, then row order, within a bucket
        table = table.take(pa.array(order)).append_column("bucket", pa.array(bucket[order]))
        write_keyed(self.run, f"{DEDUP_DIR}/uids/{task.payload:05d}.parquet", table, "bucket")
        stats.inc("in", len(table))


class DuplicateReduce(_Shuffle):
    """Per bucket: every uid already seen earlier in part order is a duplicate to drop."""

    name = "extract.dups"

    def tasks(self) -> list[Task]:
        return [Task(f"b{b:05d}", b) for b in range(self.buckets)]

    def process(self, task: Task, stats: Stats) -> None:
        tables = [
            t
            for g in range(self.groups)
            if (t := read_keyed(self.run, f"{DEDUP_DIR}/uids/{g:05d}.parquet", task.payload)) is not None
        ]
        table = pa.concat_tables(tables).combine_chunks() if tables else _EMPTY
        # A stable sort by uid keeps the rows of one uid in part order: all but the first are dups.
        order = pc.sort_indices(table, sort_keys=[("uid", "ascending")])
        uids = table.column("uid").take(order)
        later = pc.equal(uids.slice(1), uids.slice(0, max(len(uids) - 1, 0))).to_numpy(zero_copy_only=False)
        dups = table.take(order.slice(1).filter(pa.array(later))) if len(table) else table
        part = dups.column("part").to_numpy()
        bounds = np.linspace(0, len(self.parts), self.groups + 1).astype(int)
        group = np.searchsorted(bounds, part, side="right") - 1
        by_group = np.argsort(group, kind="stable")
        dups = dups.take(pa.array(by_group)).append_column("group", pa.array(group[by_group]))
        write_keyed(self.run, f"{DEDUP_DIR}/drops/{task.payload:05d}.parquet", dups, "group")
        stats.inc("uids", len(table))
        stats.drop("duplicate", len(dups))


class DuplicateApply(_Shuffle):
    """Per group of parts: rewrite the parts that hold duplicates, without them."""

    name = "extract.apply"

    def tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(self.groups)]

    def process(self, task: Task, stats: Stats) -> None:
        tables = [
            t
            for b in range(self.buckets)
            if (t := read_keyed(self.run, f"{DEDUP_DIR}/drops/{b:05d}.parquet", task.payload)) is not None
        ]
        if not tables:
            return
        drops = pa.concat_tables(tables)
        part_of = drops.column("part").to_numpy()
        for i in np.unique(part_of).tolist():
            gone = drops.column("uid").filter(pa.array(part_of == i))
            table = self.run.read_parquet(self.parts[i])
            keep = pc.invert(pc.is_in(table.column("uid"), value_set=gone))
            kept = table.filter(keep)
            if len(kept) != len(table):  # already rewritten by an interrupted attempt otherwise
                self.run.write_parquet(self.parts[i], kept)
                stats.inc("rows_removed", len(table) - len(kept))
            stats.inc("parts_rewritten")


_EMPTY = pa.table({"uid": pa.array([], pa.string()), "part": pa.array([], pa.int32())})
