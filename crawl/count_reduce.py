"""Global per-entry counts from per-task sparse (entry_id, count) files, as a tree of Ray tasks.

Match and balance tasks each write ``<stage>/_counts/<part>.parquet``: the entries their part holds
and how often (:data:`COUNTS_SCHEMA`, ids ascending, zeros left out). Adding them up on the driver,
one file after another, costs O(parts × entries): 10,000 parts × 500,000 entries at web scale. Here
the driver only lists files and merges at most ``fan_in`` of them:

* while more than ``fan_in`` files are left, a sub-stage ``<stage>.counts<level>`` (one task per
  group of ``fan_in`` consecutive files, run by :func:`~pipeline.runner.run_stage`, so completion
  markers, retries and resumption work as for any stage) sums each group into
  ``<stage>/_counts_reduce/l<level>/g<group>.parquet``;
* the driver sums the last ``fan_in`` files or fewer: O(fan_in × entries), whatever the part count.

Integer sums throughout, so the totals are exactly those of a serial ``np.add.at`` loop. A run with
at most ``fan_in`` parts starts no sub-stage at all. Measured (benchmarks/counts_driver.py
--sums-only, match's real part counts copied to 10,000 files): 14.9 s of driver CPU for the serial
loop, 0.64 s here (O(parts) left: listing, one task per 32 files, the markers).

The intermediate files and the sub-stages' markers are removed once the caller has written its
global counts (:func:`cleanup`; ``stats/<stage>.counts<level>.json`` stay, with the tasks' seconds),
and any task of the parent stage that (re)writes its part counts
makes a leftover reduction stale (:func:`invalidate`), as ``crawl.pool_dedup`` does for its shuffle.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
import pyarrow as pa

from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

COUNTS_SCHEMA = pa.schema([("entry_id", pa.int32()), ("count", pa.int64())])
FAN_IN = 32  # files one reduce task (or the driver, at the end) sums: ~6 MB each at 500k entries


def sparse_counts(dense: np.ndarray) -> pa.Table:
    """The non-zero entries of a dense count vector as a :data:`COUNTS_SCHEMA` table (ids ascending)."""
    nz = np.flatnonzero(dense)
    return pa.table(
        {"entry_id": nz.astype(np.int32), "count": dense[nz].astype(np.int64)}, schema=COUNTS_SCHEMA
    )


def add_counts(total: np.ndarray, table: pa.Table, where: str) -> np.ndarray:
    """``total`` plus a sparse count table (grown if the table holds larger ids); ``where`` names it.

    One vectorised ``total[ids] += counts``: exact for int64, and correct because a count file holds
    each id once (checked: ids strictly ascending, as :func:`sparse_counts` writes them).
    """
    ids = table.column("entry_id").to_numpy().astype(np.int64)
    counts = table.column("count").to_numpy().astype(np.int64)
    if len(ids) == 0:
        return total
    if ids[0] < 0 or (len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1]))):
        raise ValueError(
            f"{where}: entry_id must be non-negative and strictly ascending (one row per entry); "
            "the file was not written by this version of webclip: rerun the stage with --force"
        )
    if ids[-1] >= len(total):
        total = np.concatenate([total, np.zeros(int(ids[-1]) + 1 - len(total), np.int64)])
    total[ids] += counts
    return total


def sum_files(run: RunDir, files: list[str], size: int = 0) -> np.ndarray:
    """Dense int64 totals (at least ``size`` long) of the sparse count files ``files``."""
    total = np.zeros(size, np.int64)
    for rel in files:
        total = add_counts(total, run.read_parquet(rel), run.full_url(rel))
    return total


class CountMerge(Stage):
    """One level of the reduction: each task sums a group of count files into one."""

    resumable = True

    def __init__(self, config, run: RunDir, name: str, groups: list[list[str]], out_dir: str):
        super().__init__(config, run)
        self.name = name  # type: ignore[misc]  # one sub-stage per parent stage and level
        self.groups = groups
        self.out_dir = out_dir
        self.outputs = (out_dir,)  # type: ignore[misc]

    def output(self, group: int) -> str:
        """The file group ``group`` sums into."""
        return f"{self.out_dir}/g{group:05d}.parquet"

    def tasks(self) -> list[Task]:
        return [Task(f"g{g:05d}", g) for g in range(len(self.groups))]

    def process(self, task: Task, stats: Stats) -> None:
        files = self.groups[task.payload]
        total = sum_files(self.run, files)
        self.run.write_parquet(self.output(task.payload), sparse_counts(total))
        stats.inc("files", len(files))

    def summary(self, stats: Stats) -> str:
        return f"{stats.counts.get('files', 0):,} count files summed"


def reduce_counts(parent: Stage, files: list[str], size: int = 0, fan_in: int = FAN_IN) -> np.ndarray:
    """Dense int64 totals of the sparse count ``files`` (at least ``size`` long).

    Runs ``ceil(log_fan_in(len(files))) - 1`` levels of :class:`CountMerge` sub-stages named
    ``<parent.name>.counts<level>`` on Ray when there are more than ``fan_in`` files, then sums the
    last ``fan_in`` or fewer files in the driver. Call :func:`cleanup` after writing the result.
    """
    from pipeline.runner import run_stage

    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, not {fan_in}")
    run = parent.run
    work = work_dir(parent.name)
    levels, n = 0, len(files)
    while n > fan_in:
        levels, n = levels + 1, math.ceil(n / fan_in)
    if levels:
        layout = {"files": files, "fan_in": fan_in}
        layout_file = f"{work}/layout.json"
        if run.exists(layout_file) and run.read_json(layout_file) != layout:
            invalidate(run, parent.name)  # an interrupted reduction of other files: start over
        run.write_json(layout_file, layout)
    for level in range(1, levels + 1):
        groups = [files[i : i + fan_in] for i in range(0, len(files), fan_in)]
        sub = CountMerge(parent.config, run, f"{parent.name}.counts{level}", groups, f"{work}/l{level}")
        print(
            f"[{parent.name}] counts, level {level} of {levels}: {len(files):,} files summed by "
            f"{len(groups):,} tasks",
            file=sys.stderr,
        )
        run_stage(sub, progress=parent.progress)
        files = [sub.output(g) for g in range(len(groups))]
    return sum_files(run, files, size)


def work_dir(stage: str) -> str:
    """Where the reduction of ``stage``'s counts keeps its intermediate files."""
    return f"{stage}/_counts_reduce"


def invalidate(run: RunDir, stage: str) -> None:
    """Forget an unfinished reduction of ``stage``'s counts (its files and its sub-stages' markers)."""
    # Tasks call this concurrently: another one may have removed a path first.
    for rel in [*run.glob(f"_done/{stage}.counts*"), work_dir(stage)]:
        with contextlib.suppress(FileNotFoundError):
            run.remove(rel, recursive=True)


def cleanup(run: RunDir, stage: str) -> None:
    """After the global counts are written: the intermediate files and markers are no longer needed."""
    invalidate(run, stage)
