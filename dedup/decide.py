"""``dedup.decide``: each training sample's reason code, decided in Ray tasks, one per group of shards.

The driver holds no per-sample array. It knows only the candidates it verified: the rows it
confirmed as eval overlaps or pool near duplicates, written as ``dedup/_decide/flags.parquet``
(gid, code), partitioned by group (:mod:`dedup.keyed`). A task reads its shards' ``status`` and
identifiers, its rows' exact copies (from the partitioned exact join, :mod:`dedup.pool_shuffle`)
and its flags, and writes ``dedup/_decide/g<group>.parquet``: its shards' rows of
``dedup/decisions.parquet``, one row group per shard with flagged samples (one file per group, not
per shard: the driver, which concatenates them, opens few files), with counts per reason in its stats. A sample flagged for several
reasons gets the first in :data:`REASONS` (a sample that was never hashed stays ``no_image`` or
``undecodable``; an eval overlap outranks a pool duplicate; an exact copy a near one).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.clean import DECISIONS, DECISIONS_SCHEMA
from dedup.keyed import read_all_keyed, write_keyed
from dedup.pool_pairs import concat_in_task, flags_file
from dedup.pool_shuffle import EXACT_SCHEMA, Layout
from dedup.rows import hashes_path
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

#: Why a downloaded sample is not in the clean shards, in order of precedence.
REASONS = ("no_image", "undecodable", "eval_overlap", "exact_dup", "near_dup")
#: Each reason's code (0: kept); the smaller code wins.
CODE = {r: i + 1 for i, r in enumerate(REASONS)}

DECIDE_DIR = "dedup/_decide"
FLAGS = f"{DECIDE_DIR}/flags.parquet"
FLAGS_SCHEMA = pa.schema([("gid", pa.int64()), ("code", pa.int8())])


def status_codes(status: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Reason code per row from the hash files' ``status``: 0 hashed, else no_image or undecodable."""
    hashed = pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False)
    no_image = pc.fill_null(pc.equal(status, "no_image"), False).to_numpy(zero_copy_only=False)
    return np.where(hashed, 0, np.where(no_image, CODE["no_image"], CODE["undecodable"])).astype(np.int8)


def group_decisions_path(group: int) -> str:
    return f"{DECIDE_DIR}/g{group:05d}.parquet"


def write_flags(run: RunDir, layout: Layout, flags: dict[str, np.ndarray]) -> None:
    """``flags.parquet``: the driver's verified decisions (reason -> gids), partitioned by group."""
    gids = (
        np.concatenate([np.asarray(g, np.int64) for g in flags.values()]) if flags else np.zeros(0, np.int64)
    )
    codes = (
        np.concatenate([np.full(len(g), CODE[r], np.int8) for r, g in flags.items()])
        if flags
        else np.zeros(0, np.int8)
    )
    table = pa.table({"gid": pa.array(gids), "code": pa.array(codes)}, schema=FLAGS_SCHEMA)
    write_keyed(run, FLAGS, table, layout.group_of(gids))


#: The sub-stage that writes ``decisions.parquet`` from the groups' files.
ASSEMBLE = "dedup.decide_assemble"


class DecideStage(Stage):
    """Per group of shards: every flagged sample's reason, written per shard."""

    name = "dedup.decide"
    resumable = False

    def __init__(self, config, run: RunDir, layout: Layout, exact_files: bool, near_files: bool = False):
        super().__init__(config, run)
        self.layout = layout
        self.exact_files = exact_files  # read exact copies from the partitioned join's files
        self.near_files = near_files  # read confirmed near copies from dedup.pool_verify's files

    def tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(self.layout.groups)]

    def process(self, task: Task, stats: Stats) -> None:
        lay, g = self.layout, task.payload
        flags = read_all_keyed(self.run, [FLAGS], g, FLAGS_SCHEMA)
        gid = flags.column("gid").to_numpy()
        code = flags.column("code").to_numpy()
        if self.exact_files:
            copies = (
                read_all_keyed(
                    self.run, [lay.exact_file(b) for b in range(lay.exact_buckets)], g, EXACT_SCHEMA
                )
                .column("copy")
                .to_numpy()
            )
            gid = np.concatenate([gid, copies])
            code = np.concatenate([code, np.full(len(copies), CODE["exact_dup"], np.int8)])
        if self.near_files:
            near = self.run.read_parquet(flags_file(g)).column("gid").to_numpy()
            gid = np.concatenate([gid, near])
            code = np.concatenate([code, np.full(len(near), CODE["near_dup"], np.int8)])
        remove = self.config.dedup.mode == "remove"
        names = np.array([None, *REASONS], dtype=object)
        tables, shard_of = [], []
        for i in lay.group_shards(g):
            lo, hi = lay.offsets[i], lay.offsets[i + 1]
            table = self.run.read_parquet(hashes_path(lay.shards[i]), ["status", "shard", "key", "uid"])
            reason = status_codes(table.column("status"))
            mine = (gid >= lo) & (gid < hi)
            local, c = gid[mine] - lo, code[mine]
            # the first reason in REASONS (the smallest code) wins
            verified = np.full(hi - lo, np.iinfo(np.int8).max, np.int8)
            np.minimum.at(verified, local, c)
            verified[verified == np.iinfo(np.int8).max] = 0
            reason = np.where(reason > 0, reason, verified)
            flagged = np.flatnonzero(reason)
            ids = table.take(pa.array(flagged))
            out = pa.table(
                {
                    **{k: ids.column(k).combine_chunks().cast(pa.string()) for k in ("shard", "key", "uid")},
                    "reason": pa.array(names[reason[flagged]], pa.string()),
                    "removed": pa.array(np.full(len(flagged), remove), pa.bool_()),
                },
                schema=DECISIONS_SCHEMA,
            )
            tables.append(out)
            shard_of.append(np.full(out.num_rows, i, np.int64))
            counts = np.bincount(reason, minlength=len(REASONS) + 1)
            stats.inc("downloaded", hi - lo)
            for r, k in CODE.items():
                if counts[k]:
                    stats.inc(f"flagged_{r}", int(counts[k]))
        table = pa.concat_tables(tables) if tables else DECISIONS_SCHEMA.empty_table()
        keys = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int64)
        write_keyed(self.run, group_decisions_path(g), table, keys)  # a row group per shard, in order


def clear(run: RunDir) -> None:
    """Forget a previous decision pass."""
    for rel in (DECIDE_DIR, f"_done/{DecideStage.name}"):
        with contextlib.suppress(FileNotFoundError):
            run.remove(rel, recursive=True)


def decide(
    config,
    run: RunDir,
    layout: Layout,
    flags: dict[str, np.ndarray],
    exact_files: bool,
    progress: bool,
    near_files: bool = False,
) -> Stats:
    """Run the decision tasks and assemble ``dedup/decisions.parquet`` (one row group per shard with
    flagged samples, in shard order). ``exact_files``/``near_files``: the tasks also read the exact
    copies (:mod:`dedup.pool_shuffle`) and confirmed near copies (:mod:`dedup.pool_pairs`) of their
    group from files. Returns the tasks' summed stats (``downloaded``, ``flagged_<reason>``)."""
    from pipeline.runner import run_stage

    clear(run)
    write_flags(run, layout, flags)
    result = run_stage(
        DecideStage(config, run, layout, exact_files, near_files), progress=progress, force=True
    )
    # one row group (a shard's flagged samples) at a time, in a Ray task: not through the driver
    concat_in_task(
        config, run, ASSEMBLE, DECISIONS, [group_decisions_path(g) for g in range(layout.groups)], DECISIONS_SCHEMA
    )
    return result.stats
