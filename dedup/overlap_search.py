"""``dedup_search``: every training shard searched against every eval set, one Ray task per shard.

The eval sets are small (each indexed once per worker process and kept), the training pool is
not: so the search runs where the shards are, and the driver only collects the matches. A task
reads ``hashes/<shard>.parquet`` and writes ``dedup/pairs/<shard>.parquet``: one row per
(training view, eval view) pair within the set's ``tau`` (``eval_set``, ``train_row`` — the row
in the shard's hash file — ``eval_row``, ``train_view``, ``eval_view``, ``distance``), sorted per
set as :func:`dedup.detect.match_views` sorts. A task's id carries a digest of what it searched
against (each set's hash file, ``tau`` and the views), so a rerun with another eval set or
threshold redoes every shard, and an interrupted one only the shards without a marker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.detect import EvalViews, match_views
from dedup.hashing import view_column
from dedup.rows import hashes_path, ordered_map
from dedup.views import TRAIN_VIEWS, View
from pipeline.config import WebclipConfig
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

PAIR_COLUMNS = ("train_row", "eval_row", "train_view", "eval_view", "distance")
#: ``dedup/pairs/<shard>.parquet``; ``train_row`` is the row in the shard's hash file.
PAIRS_SCHEMA = pa.schema(
    [
        ("eval_set", pa.string()),
        ("train_row", pa.int32()),
        ("eval_row", pa.int32()),
        ("train_view", pa.int8()),
        ("eval_view", pa.int8()),
        ("distance", pa.int16()),
    ]
)


def pairs_path(shard: str) -> str:
    return f"dedup/pairs/{shard}.parquet"


def evalset_hashes_path(name: str) -> str:
    return f"evalsets/{name}/hashes.parquet"


@dataclass(frozen=True)
class SetSearch:
    """One eval set to search: its name, radius and the digest of its hash file."""

    name: str
    tau: int
    digest: str
    skip: tuple[str, ...] = ()  # eval views not searched for this set (line art: flips, rotations)


def hash_columns(table: pa.Table, views: tuple[View, ...] | list[View]) -> dict[str, np.ndarray]:
    """``{view name: uint64 hash per row}`` (nulls as 0: their rows are not ``ok``)."""
    return {
        v.name: table.column(view_column(v.name)).fill_null(0).to_numpy().astype(np.uint64) for v in views
    }


def ok_rows(table: pa.Table) -> np.ndarray:
    """Rows whose image was hashed (``status == "ok"``)."""
    return pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False)


# one worker process serves many shard tasks: each eval set is read and indexed once per process
_INDEX_CACHE: dict[tuple, EvalViews] = {}


def _eval_index(run: RunDir, search: SetSearch, views: tuple[View, ...]) -> EvalViews:
    key = (run.url, search.name, search.digest, search.tau, tuple(v.name for v in views), search.skip)
    if key not in _INDEX_CACHE:
        ev = run.read_parquet(evalset_hashes_path(search.name))
        if len(_INDEX_CACHE) >= 8:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = EvalViews.build(
            hash_columns(ev, views), ok_rows(ev), search.tau, frozenset(search.skip)
        )
    return _INDEX_CACHE[key]


class OverlapSearchStage(Stage):
    """Writes ``dedup/pairs/<shard>.parquet``: each shard's view pairs within ``tau`` of each eval set."""

    name = "dedup_search"
    resumable = False  # run by DedupStage every time; task digests decide what is current
    versioned_tasks = True
    outputs = ("dedup/pairs",)

    def __init__(
        self,
        config: WebclipConfig,
        run: RunDir,
        shards: list[str],
        searches: list[SetSearch],
        views: tuple[View, ...],
    ):
        super().__init__(config, run)
        self.shards = shards
        self.searches = tuple(searches)
        self.views = views
        self.digest = hashlib.sha256(
            json.dumps(
                [
                    [(s.name, s.tau, s.digest, list(s.skip)) for s in self.searches],
                    [v.name for v in views],
                    [v.name for v in TRAIN_VIEWS],
                ]
            ).encode()
        ).hexdigest()[:12]

    def tasks(self) -> list[Task]:
        return [Task(f"{shard}.{self.digest}", shard) for shard in self.shards]

    def process(self, task: Task, stats: Stats) -> None:
        shard = task.payload
        table = self.run.read_parquet(
            hashes_path(shard), ["status", *(view_column(v.name) for v in TRAIN_VIEWS)]
        )
        train, ok = hash_columns(table, TRAIN_VIEWS), ok_rows(table)
        parts = []
        for search in self.searches:
            pairs = match_views(train, ok, _eval_index(self.run, search, self.views))
            n = len(pairs["train_row"])
            parts.append(
                pa.table(
                    {"eval_set": [search.name] * n, **{c: pairs[c] for c in PAIR_COLUMNS}},
                    schema=PAIRS_SCHEMA,
                )
            )
            stats.inc("view_pairs", n)
        out = pa.concat_tables(parts) if parts else _empty_pairs()
        self.run.write_parquet(pairs_path(shard), out)
        stats.inc("shards", 1)


def _empty_pairs() -> pa.Table:
    return PAIRS_SCHEMA.empty_table()


def load_pairs(
    run: RunDir, shards: list[str], offsets: np.ndarray, names: list[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Every shard's pairs, per eval set, with ``train_row`` as global row numbers (``offsets[i]`` + row).

    Sorted as :func:`dedup.detect.match_views` sorts: shards are concatenated in order, and global
    row numbers follow shard order.
    """
    per_set: dict[str, list[pa.Table]] = {name: [] for name in names}

    def read(i: int) -> tuple[int, pa.Table]:
        return i, run.read_parquet(pairs_path(shards[i]))

    for i, table in ordered_map(read, range(len(shards))):
        if table.num_rows == 0:
            continue
        table = table.set_column(
            1, "train_row", pa.array(table.column("train_row").to_numpy().astype(np.int64) + offsets[i])
        )
        for name in names:
            part = table.filter(pc.equal(table.column("eval_set"), name))
            if part.num_rows:
                per_set[name].append(part)
    out = {}
    for name, parts in per_set.items():
        t = pa.concat_tables(parts) if parts else _empty_pairs()
        out[name] = {
            c: t.column(c).to_numpy().astype(np.int64 if c != "distance" else np.int16) for c in PAIR_COLUMNS
        }
    return out
