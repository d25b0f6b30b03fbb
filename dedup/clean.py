"""``dedup_clean``: the clean shards, one Ray task per downloaded shard (run by ``webclip dedup``).

After :class:`~dedup.stage.DedupStage` has decided, on the driver, which samples are flagged
(``<run>/dedup/decisions.parquet``: shard, key, uid, reason), each task copies one
``shards/NNNNN.tar`` to ``clean/NNNNN.tar`` without its flagged samples (``dedup.mode: remove``) or
with all of them (``report``), and writes ``clean/NNNNN.parquet``: the shard's rows for the samples
kept, plus ``dedup_reason``. A task reads only its own shard's rows of the decisions (written one
row group per shard), so neither the driver nor a task holds them all. Copying the whole dataset is the heavy part of dedup, so it runs on
the cluster like hashing, one completion marker per shard: an interrupted run redoes only the
shards it had not finished. A task's id carries a digest of its shard's decisions, so a rerun whose
decisions changed (another config, more eval sets) rewrites exactly the shards they touch.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dedup.shards import TarSink, iter_samples
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

DECISIONS = "dedup/decisions.parquet"
#: ``dedup/decisions.parquet``: one row per flagged sample, one row group per shard.
DECISIONS_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("uid", pa.string()),
        ("reason", pa.string()),
        ("removed", pa.bool_()),
    ]
)
SIZES = "clean/sizes.json"


def shard_stem(rel: str) -> str:
    """``shards/00012.tar`` -> ``00012``."""
    return rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]


class CleanShardsStage(Stage):
    """Writes ``clean/<shard>.{tar,parquet}`` from ``shards/`` and the flagged samples of each shard."""

    name = "dedup_clean"
    # no whole-stage skip: DedupStage runs this after every decision pass, and the digest in each
    # task id decides which shards are still current
    resumable = False
    versioned_tasks = True
    outputs = ("clean",)

    def tasks(self) -> list[Task]:
        # the decisions are read a row group (a shard) at a time: the driver never holds them all,
        # and each task reads back only its own shard's rows
        digests: dict[str, str] = {}
        with self.run.fs.open(self.run.path(DECISIONS), "rb") as fh:
            decisions = pq.ParquetFile(fh)
            for group in range(decisions.num_row_groups):
                table = decisions.read_row_group(group, columns=["shard", "key", "reason"])
                for shard in pc.unique(table.column("shard")).to_pylist():
                    part = table.filter(pc.equal(table.column("shard"), shard))
                    digests[shard] = self._digest(_reasons(part), digests.get(shard, ""))
        tasks = []
        for shard in sorted(shard_stem(p) for p in self.run.glob("shards/*.tar")):
            digest = digests.get(shard) or self._digest({}, "")
            tasks.append(Task(f"{shard}.{digest}", shard))
        return tasks

    def _digest(self, reasons: dict[str, str], previous: str) -> str:
        return hashlib.sha256(
            json.dumps([self.config.dedup.mode, previous, sorted(reasons.items())]).encode()
        ).hexdigest()[:12]

    def process(self, task: Task, stats: Stats) -> None:
        shard = task.payload
        reasons = _reasons(
            self.run.read_parquet(DECISIONS, columns=["key", "reason"], filters=[("shard", "==", shard)])
        )
        remove = self.config.dedup.mode == "remove"
        sink, kept = TarSink(), []
        for sample in iter_samples(self.run, f"shards/{shard}.tar"):
            if remove and sample.key in reasons:
                continue
            sink.add(sample)
            kept.append(sample.key)
        self.run.write_bytes(f"clean/{shard}.tar", sink.finish())
        self.run.write_parquet(f"clean/{shard}.parquet", self._clean_table(shard, kept, reasons))
        stats.inc("clean", sink.count)

    def _clean_table(self, shard: str, kept: list[str], reasons: dict[str, str]) -> pa.Table:
        """Rows of the input shard parquet for the samples in the clean tar, plus ``dedup_reason``."""
        rel = f"shards/{shard}.parquet"
        if not self.run.exists(rel):
            return pa.table(
                {
                    "key": pa.array(kept, pa.string()),
                    "dedup_reason": pa.array([reasons.get(k) for k in kept], pa.string()),
                }
            )
        order = {k: i for i, k in enumerate(kept)}
        src = self.run.read_parquet(rel)
        src = src.filter(pc.is_in(src.column("key").cast(pa.string()), pa.array(kept, pa.string())))
        keys = src.column("key").cast(pa.string()).to_pylist()
        src = src.take(pa.array(np.argsort([order[k] for k in keys], kind="stable")))
        keys = src.column("key").cast(pa.string()).to_pylist()
        return src.append_column("dedup_reason", pa.array([reasons.get(k) for k in keys], pa.string()))

    def finalize(self, stats: Stats) -> None:
        sizes = {}
        tasks = self.tasks()
        markers = self.run.read_markers(self.name, [t.id for t in tasks])  # in bulk: one listing, few reads
        for task in tasks:
            counts = markers[task.id]["stats"].get("counts", {})
            # keyed by the tar's file name, as open_clip's get_dataset_size looks shards up
            sizes[f"{task.payload}.tar"] = int(counts.get("clean", 0))
        self.run.write_json(SIZES, sizes)


def _reasons(table: pa.Table) -> dict[str, str]:
    """``{key: reason}`` of decision rows."""
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist(), strict=True))
