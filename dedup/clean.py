"""``dedup_clean``: the clean shards, one Ray task per downloaded shard (run by ``webclip dedup``).

After :class:`~dedup.stage.DedupStage` has decided, on the driver, which samples are flagged
(``<run>/dedup/decisions.parquet``: shard, key, uid, reason), each task copies one
``shards/NNNNN.tar`` to ``clean/NNNNN.tar`` without its flagged samples (``dedup.mode: remove``) or
with all of them (``report``), and writes ``clean/NNNNN.parquet``: the shard's rows for the samples
kept, plus ``dedup_reason``. Copying the whole dataset is the heavy part of dedup, so it runs on
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

from dedup.shards import TarSink, iter_samples
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

DECISIONS = "dedup/decisions.parquet"
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
        # built on the driver: each task carries only its own shard's flagged keys
        flagged: dict[str, dict[str, str]] = {}
        decisions = self.run.read_parquet(DECISIONS, columns=["shard", "key", "reason"])
        for shard, key, reason in zip(
            *(decisions.column(c).to_pylist() for c in ("shard", "key", "reason")), strict=True
        ):
            flagged.setdefault(shard, {})[key] = reason
        tasks = []
        for shard in sorted(shard_stem(p) for p in self.run.glob("shards/*.tar")):
            reasons = dict(sorted(flagged.get(shard, {}).items()))
            digest = hashlib.sha256(json.dumps([self.config.dedup.mode, reasons]).encode()).hexdigest()[:12]
            tasks.append(Task(f"{shard}.{digest}", (shard, reasons)))
        return tasks

    def process(self, task: Task, stats: Stats) -> None:
        shard, reasons = task.payload
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
        for task in self.tasks():
            counts = self.run.read_marker(self.name, task.id)["stats"].get("counts", {})
            sizes[task.payload[0]] = int(counts.get("clean", 0))
        self.run.write_json(SIZES, sizes)
