"""Cross-file duplicate removal of the pool: a hash-partitioned shuffle of uids, in Ray stages.

Each extract task already drops duplicates inside its own input; a pair repeated across inputs is
removed here, keeping the first occurrence in part order (parts sorted by name, then rows). No
process ever holds all uids: the pool parts are split into ``G`` contiguous groups and the uids
into ``B`` buckets by hash, and

1. ``extract.uids`` (one task per group) reads the uid column of its parts and writes
   ``pool/_dedup/uids/0/<g>.parquet`` (uid, part), one row group per bucket;
2. ``extract.uids_merge<l>`` (only when ``G`` > ``F`` = ``extract.dedup_fan_in``) concatenates ``F``
   consecutive files of level ``l - 1`` into one, bucket by bucket (one row group per bucket again),
   until at most ``F`` files are left; files stay in group order, rows in part order;
3. ``extract.dups`` (one task per bucket) reads its row group of each of those (at most ``F``) files,
   in order, finds every uid seen before (a stable sort by uid) and writes those later copies to
   ``pool/_dedup/drops/0/<b>.parquet`` (uid, part), one row group per group;
4. ``extract.drops_merge<l>`` likewise merges the ``B`` drops files down to at most ``F``;
5. ``extract.apply`` (one task per group) reads its row group of each of those files and rewrites
   the parts that lose rows.

Why the merges: without them each of the ``B`` bucket tasks opens all ``G`` group files (and each
group task all ``B`` drops files), ``2·G·B`` opens — about 2·10⁶ at 5B candidates with 1,000 buckets,
each a round trip to an object store. With them a file is opened once per merge level and the bucket
and group tasks open at most ``F`` each: about ``F·(G + B)`` opens in all, linear in the pool. A merge
task holds one key's rows of its ``F`` inputs at a time — at most one bucket's uids, or one group's
drops — so memory per task stays bounded by ``extract.dedup_bucket_rows`` whatever the pool's size;
what the merges cost is one more read and write of the uids per level (none while ``G`` ≤ ``F``).

Each is a :class:`~pipeline.stage.Stage` run by :func:`~pipeline.runner.run_stage`, so the shuffle
gets completion markers, retries and resumption for free. Applying is idempotent (rows are
removed by uid, and a part holds a uid once), so a part rewritten just before a crash is safe to
rewrite again. ``B`` is chosen so a bucket holds about ``extract.dedup_bucket_rows`` uids.
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
#: Every sub-stage is named ``extract.<something>`` (merge levels are numbered: extract.uids_merge1…).
SUB_STAGE_GLOB = "_done/extract.*"
_KEYS = b"webclip_row_group_keys"


def layout(n_rows: int, n_parts: int, bucket_rows: int) -> tuple[int, int]:
    """(buckets, groups) for a pool of ``n_rows`` rows in ``n_parts`` parts."""
    buckets = max(1, math.ceil(n_rows / bucket_rows))
    return buckets, max(1, min(buckets, n_parts))


def file_counts(n_files: int, fan_in: int) -> list[int]:
    """Files at each merge level: ``n_files``, then ``ceil(n / fan_in)`` per level until at most ``fan_in``."""
    if fan_in < 2:
        raise ValueError(f"fan_in={fan_in}: a merge must combine at least 2 files")
    counts = [max(1, n_files)]
    while counts[-1] > fan_in:
        counts.append(math.ceil(counts[-1] / fan_in))
    return counts


def level_file(side: str, level: int, index: int) -> str:
    """Run-relative path of file ``index`` of merge ``level`` (0: as the map or reduce tasks wrote it)."""
    return f"{DEDUP_DIR}/{side}/{level}/{index:05d}.parquet"


def invalidate(run: RunDir) -> None:
    """Forget a previous shuffle: called whenever pool parts are (re)written."""
    for done in run.glob(SUB_STAGE_GLOB):
        _remove(run, done)
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


def merge_keyed(run: RunDir, inputs: list[str], output: str) -> int:
    """Concatenate ``inputs`` (each written by :func:`write_keyed`) key by key into ``output``, one row
    group per key, rows of a key in input order; returns the rows written.

    Each input is opened once; only one key's rows (from every input) are in memory at a time, and
    the output is streamed to its temporary name as it is written.
    """
    with contextlib.ExitStack() as stack:
        files = [pq.ParquetFile(stack.enter_context(run.fs.open(run.path(rel), "rb"))) for rel in inputs]
        index = [{k: i for i, k in enumerate(json.loads(f.schema_arrow.metadata[_KEYS]))} for f in files]
        keys = sorted(set().union(*index))
        schema = files[0].schema_arrow.remove_metadata().with_metadata({_KEYS: json.dumps(keys)})
        rows = 0
        with run.open_atomic(output) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for key in keys:
                table = pa.concat_tables([
                    f.read_row_group(ix[key]).replace_schema_metadata(None)
                    for f, ix in zip(files, index, strict=True) if key in ix
                ])
                writer.write_table(table)
                rows += len(table)
    return rows


class _Shuffle(Stage):
    """What the sub-stages share: the parts, their groups, the bucket count, the merge fan-in."""

    def __init__(self, config, run: RunDir, parts: list[str], buckets: int, groups: int, fan_in: int | None = None):
        super().__init__(config, run)
        self.parts = parts
        self.buckets = buckets
        self.groups = groups
        self.fan_in = fan_in or config.extract.dedup_fan_in

    def group_parts(self, g: int) -> range:
        """Indices (into ``parts``) of group ``g``: contiguous, so groups in order keep part order."""
        bounds = np.linspace(0, len(self.parts), self.groups + 1).astype(int)
        return range(bounds[g], bounds[g + 1])

    def final_files(self, side: str) -> list[str]:
        """The files of ``side`` ("uids": G of them, "drops": B) after their last merge level, in order."""
        counts = file_counts(self.groups if side == "uids" else self.buckets, self.fan_in)
        return [level_file(side, len(counts) - 1, i) for i in range(counts[-1])]

    def read_key(self, side: str, key: int) -> pa.Table:
        """Every row of ``key`` (a bucket of "uids", a group of "drops"), in group/part order."""
        tables = [t for rel in self.final_files(side) if (t := read_keyed(self.run, rel, key)) is not None]
        return pa.concat_tables(tables).combine_chunks() if tables else _EMPTY


def stages(config, run: RunDir, parts: list[str], buckets: int, groups: int, fan_in: int | None = None) -> list[Stage]:
    """The shuffle's sub-stages in the order they run: map, uid merges, reduce, drop merges, apply."""
    shape = (config, run, parts, buckets, groups, fan_in)
    fan = fan_in or config.extract.dedup_fan_in
    out: list[Stage] = [UidMap(*shape)]
    out += [KeyedMerge(*shape, side="uids", level=lv) for lv in range(1, len(file_counts(groups, fan)))]
    out.append(DuplicateReduce(*shape))
    out += [KeyedMerge(*shape, side="drops", level=lv) for lv in range(1, len(file_counts(buckets, fan)))]
    out.append(DuplicateApply(*shape))
    return out


class KeyedMerge(_Shuffle):
    """One merge level of one side: each task concatenates ``fan_in`` consecutive files of the level below."""

    def __init__(self, *shape, side: str, level: int):
        super().__init__(*shape)
        if side not in ("uids", "drops") or level < 1:
            raise ValueError(f"merge of side {side!r} at level {level}: side is uids or drops, level >= 1")
        self.side, self.level = side, level
        self.name = f"extract.{side}_merge{level}"  # one stage (markers, stats) per level

    def tasks(self) -> list[Task]:
        counts = file_counts(self.groups if self.side == "uids" else self.buckets, self.fan_in)
        below, here = counts[self.level - 1], counts[self.level]
        return [Task(f"m{i:05d}", (i * self.fan_in, min(below, (i + 1) * self.fan_in))) for i in range(here)]

    def process(self, task: Task, stats: Stats) -> None:
        start, stop = task.payload
        inputs = [level_file(self.side, self.level - 1, j) for j in range(start, stop)]
        rows = merge_keyed(self.run, inputs, level_file(self.side, self.level, start // self.fan_in))
        stats.inc("files_in", len(inputs))
        stats.inc("rows", rows)


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
        write_keyed(self.run, level_file("uids", 0, task.payload), table, "bucket")
        stats.inc("in", len(table))


class DuplicateReduce(_Shuffle):
    """Per bucket: every uid already seen earlier in part order is a duplicate to drop."""

    name = "extract.dups"

    def tasks(self) -> list[Task]:
        return [Task(f"b{b:05d}", b) for b in range(self.buckets)]

    def process(self, task: Task, stats: Stats) -> None:
        table = self.read_key("uids", task.payload)
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
        write_keyed(self.run, level_file("drops", 0, task.payload), dups, "group")
        stats.inc("uids", len(table))
        stats.drop("duplicate", len(dups))


class DuplicateApply(_Shuffle):
    """Per group of parts: rewrite the parts that hold duplicates, without them."""

    name = "extract.apply"

    def tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(self.groups)]

    def process(self, task: Task, stats: Stats) -> None:
        drops = self.read_key("drops", task.payload)
        if not len(drops):
            return
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
