"""Pool duplicate pairs per group of shards, in Ray tasks: identifiers, verification, the rows of ``pool_duplicates``.

After the partitioned joins (:mod:`dedup.pool_shuffle`) the exact copies and near candidates sit
in shuffle files keyed by the group of the later copy. Two more sub-stages, one task per group,
turn them into ``dedup/pool_duplicates.parquet`` without the driver holding a pair:

1. ``dedup.pool_pairs`` (:class:`PoolPairs`) reads its group's exact copies and near candidates,
   keeps each later row's :data:`~dedup.pool.NEAREST` closest over the bands
   (:func:`~dedup.pool_shuffle.merge_nearest`: all of a row's candidates are in its group), looks up
   both sides' identifiers (shard, key, uid; the earlier side may be in any shard) and writes
   ``dedup/_pool/pairs/<g>.parquet``. The driver lists the near pairs' (shard, key) as candidates
   for the thumbnail tasks (:func:`write_candidates`, streaming);
2. ``dedup.pool_verify`` (:class:`PoolVerify`), once the thumbnails are written, scores its near
   pairs (:func:`dedup.score.verify_scores` on the two pHash-view thumbnails, as the driver did)
   and writes its part of ``pool_duplicates`` sorted by (shard, key, dup_of_shard, dup_of_key),
   ``dedup/_pool/dups/<g>.parquet``, and its confirmed near copies, ``dedup/_pool/flags/<g>.parquet``
   (read by the group's decision task, :mod:`dedup.decide`).

Groups are contiguous ranges of the sorted shards and a row of ``pool_duplicates`` belongs to the
group of its copy's shard, so the parts concatenated in group order are the whole file in its
sort order: :func:`assemble` copies them one row group at a time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dedup.keyed import read_all_keyed
from dedup.pool_shuffle import EXACT_SCHEMA, NEAR_SCHEMA, POOL_DIR, Layout, PoolStage, merge_nearest
from dedup.rows import ShardRows
from pipeline.rundir import RunDir
from pipeline.stage import Task
from pipeline.stats import Stats

IDS = ("uid", "shard", "key")
#: ``dedup/pool_duplicates.parquet``: one row per exact copy and per near candidate pair.
POOL_DUPLICATES = "dedup/pool_duplicates.parquet"
POOL_DUPLICATES_SCHEMA = pa.schema(
    [
        *((c, pa.string()) for c in IDS),
        *((f"dup_of_{c}", pa.string()) for c in IDS),
        ("distance", pa.int16()),
        ("verify_score", pa.float32()),
        ("confirmed", pa.bool_()),
        ("kind", pa.string()),
    ]
)
SORT_KEYS = [(c, "ascending") for c in ("shard", "key", "dup_of_shard", "dup_of_key")]
#: A group's pairs: gids, distance (0 for exact copies), exact or near, both sides' identifiers.
PAIRS_SCHEMA = pa.schema(
    [
        ("later", pa.int64()),
        ("earlier", pa.int64()),
        ("dist", pa.int64()),
        ("exact", pa.bool_()),
        *((c, pa.string()) for c in IDS),
        *((f"dup_of_{c}", pa.string()) for c in IDS),
    ]
)
FLAG_SCHEMA = pa.schema([("gid", pa.int64())])
#: Rows per row group of a group's part of ``pool_duplicates`` (about 2 MB): the driver copies the
#: parts a row group at a time, so this, not the group's size, bounds what it holds.
PART_ROW_GROUP = 16_384


def pairs_file(g: int) -> str:
    return f"{POOL_DIR}/pairs/{g:05d}.parquet"


def dups_file(g: int) -> str:
    return f"{POOL_DIR}/dups/{g:05d}.parquet"


def flags_file(g: int) -> str:
    """Group ``g``'s confirmed near copies (gid), written by :class:`PoolVerify`."""
    return f"{POOL_DIR}/flags/{g:05d}.parquet"


def _rows(run: RunDir, layout: Layout) -> ShardRows:
    """Row lookup over the layout's shards, from its offsets (no footer read per shard)."""
    return ShardRows.from_offsets(run, list(layout.shards), np.asarray(layout.offsets, np.int64))


class PoolPairs(PoolStage):
    """Per group: its exact copies and merged near candidates, with both sides' identifiers."""

    name = "dedup.pool_pairs"

    def tasks(self):
        return self._group_tasks()

    def process(self, task, stats: Stats) -> None:
        lay, g = self.layout, task.payload
        cfg = self.config.dedup
        exact = np.zeros((0, 2), np.int64)
        if cfg.exact_dups:
            t = read_all_keyed(
                self.run, [lay.exact_file(b) for b in range(lay.exact_buckets)], g, EXACT_SCHEMA
            )
            exact = np.stack([t.column("copy").to_numpy(), t.column("first").to_numpy()], axis=1)
            exact = exact[np.argsort(exact[:, 0], kind="stable")]
        near = np.zeros((0, 3), np.int64)
        if cfg.pool_tau is not None:
            parts = len(lay.bands) * lay.near_buckets
            t = read_all_keyed(self.run, [lay.near_file(p) for p in range(parts)], g, NEAR_SCHEMA)
            near = merge_nearest(
                np.stack([t.column(c).to_numpy() for c in ("later", "earlier", "dist")], axis=1)
            )
        later = np.concatenate([exact[:, 0], near[:, 0]])
        earlier = np.concatenate([exact[:, 1], near[:, 1]])
        # identifiers: the later side is in this group's shards, the earlier one anywhere before
        ids = _rows(self.run, lay).take(np.concatenate([later, earlier]), IDS)
        k = len(later)
        table = pa.table(
            {
                "later": pa.array(later, pa.int64()),
                "earlier": pa.array(earlier, pa.int64()),
                "dist": pa.array(np.concatenate([np.zeros(len(exact), np.int64), near[:, 2]]), pa.int64()),
                "exact": pa.array(np.arange(k) < len(exact), pa.bool_()),
                **{c: ids.column(c).slice(0, k).combine_chunks() for c in IDS},
                **{f"dup_of_{c}": ids.column(c).slice(k).combine_chunks() for c in IDS},
            },
            schema=PAIRS_SCHEMA,
        )
        self.run.write_parquet(pairs_file(g), table)
        stats.inc("exact_copies", len(exact))
        stats.inc("near_pairs", len(near))


def near_scores(run: RunDir, pairs: pa.Table) -> np.ndarray:
    """Verification score of each near pair of ``pairs`` (a :data:`PAIRS_SCHEMA` table of near rows):
    the correlation of the two pHash-view thumbnails the ``dedup_thumbs`` tasks wrote."""
    # imported here: the image stack (OpenCV, PIL) is for the tasks that score, not every importer
    from dedup.score import verify_scores
    from dedup.verify import train_view_thumbs

    if not pairs.num_rows:
        return np.zeros(0, np.float32)
    later, earlier = pairs.column("later").to_numpy(), pairs.column("earlier").to_numpy()
    gids = np.concatenate([later, earlier])
    shards = pa.concat_arrays(
        [pairs.column("shard").combine_chunks(), pairs.column("dup_of_shard").combine_chunks()]
    )
    keys = pa.concat_arrays(
        [pairs.column("key").combine_chunks(), pairs.column("dup_of_key").combine_chunks()]
    )
    gids, first = np.unique(gids, return_index=True)
    thumbs, _ = train_view_thumbs(
        run, gids, shards.take(pa.array(first)).to_pylist(), keys.take(pa.array(first)).to_pylist()
    )
    plain = np.zeros(len(later), np.int64)  # view 0: phash
    return verify_scores(thumbs.take(later, plain), thumbs.take(earlier, plain), None)


class PoolVerify(PoolStage):
    """Per group: its near pairs verified on the thumbnails, its sorted part of ``pool_duplicates``."""

    name = "dedup.pool_verify"

    def tasks(self):
        return self._group_tasks()

    def scores(self, near: pa.Table) -> np.ndarray:
        """The near pairs' verification scores (a method: the scale benchmark has no images)."""
        return near_scores(self.run, near)

    def process(self, task, stats: Stats) -> None:
        g = task.payload
        pairs = self.run.read_parquet(pairs_file(g))
        exact = pairs.column("exact").to_numpy(zero_copy_only=False)
        near = pairs.filter(pa.array(~exact))
        score = np.asarray(self.scores(near), np.float32)
        confirmed = score >= self.config.dedup.pool_verify_threshold
        k = len(exact) - len(near)
        ordered = pa.concat_tables([pairs.filter(pa.array(exact)), near])  # exact first, as the driver did
        table = pa.table(
            {
                **{c: ordered.column(c).combine_chunks() for c in POOL_DUPLICATES_SCHEMA.names[:6]},
                "distance": pc.cast(ordered.column("dist"), pa.int16()).combine_chunks(),
                "verify_score": pa.concat_arrays([pa.nulls(k, pa.float32()), pa.array(score, pa.float32())]),
                "confirmed": pa.array(np.concatenate([np.ones(k, bool), confirmed]), pa.bool_()),
                "kind": pa.array(["exact"] * k + ["near"] * len(near), pa.string()),
            },
            schema=POOL_DUPLICATES_SCHEMA,
        )
        self.run.write_parquet(dups_file(g), table.sort_by(SORT_KEYS), row_group_size=PART_ROW_GROUP)
        flag = np.unique(near.column("later").to_numpy()[confirmed])
        self.run.write_parquet(
            flags_file(g), pa.table({"gid": pa.array(flag, pa.int64())}, schema=FLAG_SCHEMA)
        )
        stats.inc("exact_copies", k)
        stats.inc("near_pairs", len(near))
        stats.inc("near_confirmed", int(confirmed.sum()))
        stats.inc("near_flagged", len(flag))


def concat_row_groups(run: RunDir, rel: str, paths: list[str], schema: pa.Schema) -> int:
    """Write ``rel`` as the row groups of the Parquet files ``paths``, in order, holding one row
    group at a time (read from an open file, not the whole file: a part's size grows with its
    group's flagged rows, the driver's memory must not); returns the rows written."""
    rows = 0
    with run.open_atomic(rel) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for path in paths:
            with run.fs.open(run.path(path), "rb") as src:
                part = pq.ParquetFile(src)
                for k in range(part.num_row_groups):
                    t = part.read_row_group(k).replace_schema_metadata(None).cast(schema)
                    writer.write_table(t)
                    rows += t.num_rows
    return rows


class ConcatFile(PoolStage):
    """One task that writes a file as the row groups of the groups' parts, in order (:func:`concat_row_groups`).

    The copy is serial whichever process makes it; in a Ray task it costs the driver nothing, and the
    driver's CPU is the one resource of a run that does not grow with the cluster (issue 22). Named per
    file (``dedup.pool_assemble``, ``dedup.decide_assemble``) so each keeps its own stats.
    """

    def __init__(self, config, run: RunDir, name: str, rel: str, paths: list[str], schema: pa.Schema):
        super().__init__(config, run, layout=None)
        self.name, self.rel, self.paths, self.schema = name, rel, list(paths), schema

    def tasks(self) -> list[Task]:
        return [Task("all", self.rel)]

    def process(self, task: Task, stats: Stats) -> None:
        stats.inc("rows", concat_row_groups(self.run, self.rel, self.paths, self.schema))


def concat_in_task(config, run: RunDir, name: str, rel: str, paths: list[str], schema: pa.Schema) -> int:
    """:class:`ConcatFile` run as a (sub-)stage ``name``; returns the rows written."""
    from pipeline.runner import run_stage

    result = run_stage(ConcatFile(config, run, name, rel, paths, schema), progress=False, force=True)
    return int(result.stats.counts.get("rows", 0))


def write_candidates(run: RunDir, layout: Layout, eval_candidates: pa.Table) -> None:
    """``dedup/candidates.parquet`` (shard, key): ``eval_candidates``, then every group's near pairs'
    two sides (repeats allowed: the thumbnail tasks take each shard's distinct keys)."""
    from dedup.thumbs import CANDIDATES

    schema = pa.schema([("shard", pa.string()), ("key", pa.string())])
    with run.open_atomic(CANDIDATES) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        writer.write_table(eval_candidates.select(["shard", "key"]).cast(schema))
        for g in range(layout.groups):
            with run.fs.open(run.path(pairs_file(g)), "rb") as src:
                # a batch at a time: a group's pairs grow with the group, the driver's memory must not
                cols = ["exact", "shard", "key", "dup_of_shard", "dup_of_key"]
                for batch in pq.ParquetFile(src).iter_batches(PART_ROW_GROUP, columns=cols):
                    near = pa.Table.from_batches([batch]).filter(pc.invert(batch.column("exact")))
                    for side in ("", "dup_of_"):
                        writer.write_table(
                            pa.table(
                                {"shard": near.column(f"{side}shard"), "key": near.column(f"{side}key")},
                                schema=schema,
                            )
                        )


#: The sub-stage that writes ``pool_duplicates.parquet``.
ASSEMBLE = "dedup.pool_assemble"


def assemble(config, run: RunDir, layout: Layout) -> int:
    """``dedup/pool_duplicates.parquet`` from the groups' sorted parts, in group order (the whole
    file's sort order), in a Ray task (:class:`ConcatFile`); returns its rows."""
    shards = list(layout.shards)
    if shards != sorted(shards):  # groups in order are in sort order only over sorted shards
        raise ValueError(f"dedup: shards must be in sorted order to assemble {POOL_DUPLICATES}")
    return concat_in_task(
        config, run, ASSEMBLE, POOL_DUPLICATES, [dups_file(g) for g in range(layout.groups)], POOL_DUPLICATES_SCHEMA
    )


def read_pairs(run: RunDir, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every group's pairs as the single-node reference's arrays: exact copies and their first
    copies (by copy), near pairs ``[k, 3]`` (later, earlier, distance) by (later, earlier). Holds
    them all: for tests and benchmarks, not the stage."""
    t = pa.concat_tables(
        run.read_parquet(pairs_file(g), ["later", "earlier", "dist", "exact"]) for g in range(layout.groups)
    )
    exact = t.column("exact").to_numpy(zero_copy_only=False)
    cols = [t.column(c).to_numpy() for c in ("later", "earlier", "dist")]
    return cols[0][exact], cols[1][exact], np.stack([c[~exact] for c in cols], axis=1)
