"""``dedup_thumbs``: the candidates' training thumbnails, one Ray task per shard that holds some.

Verification compares pixels, so the training images of every candidate pair (eval overlaps and
pool near-duplicates) are read again: samples the downloader hashed from their original carry the
thumbnails of those hashes in the shard parquet (:mod:`dedup.original`); the others are decoded from
the shard with the hashing decoder. Either way they are exactly the thumbnails that were hashed. With pool near-duplicates on, candidates sit in nearly
every shard, so this is a pass over the dataset: it runs on the cluster, one task per shard, each
writing ``dedup/thumbs/<shard>.npz`` (keys, the training views' thumbnails, json metadata). The
candidates come from ``dedup/candidates.parquet`` (shard, key), written by
:class:`~dedup.stage.DedupStage`; a task's id carries a digest of its shard's keys, so a rerun with
other candidates redoes exactly the shards whose candidates changed.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from dedup.decode import decode_gray
from dedup.original import load_shard_table, params_tag, read_thumbs
from dedup.phash import THUMB
from dedup.shards import iter_samples
from dedup.views import TRAIN_VIEWS, train_thumbs
from pipeline.rundir import RunDir
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

CANDIDATES = "dedup/candidates.parquet"


def thumbs_path(shard: str) -> str:
    return f"dedup/thumbs/{shard}.npz"


class CandidateThumbsStage(Stage):
    """Writes ``dedup/thumbs/<shard>.npz`` for the candidate samples of each shard."""

    name = "dedup_thumbs"
    resumable = False  # run by DedupStage after every search; task digests decide what is current
    versioned_tasks = True
    outputs = ("dedup/thumbs",)

    def tasks(self) -> list[Task]:
        cand = self.run.read_parquet(CANDIDATES, columns=["shard", "key"])
        by_shard: dict[str, list[str]] = {}
        for shard, key in zip(cand.column("shard").to_pylist(), cand.column("key").to_pylist(), strict=True):
            by_shard.setdefault(shard, []).append(key)
        cfg, tasks = self.config.dedup, []
        for shard in sorted(by_shard):
            keys = sorted(set(by_shard[shard]))
            digest = hashlib.sha256(
                json.dumps([params_tag(cfg.original_decode_min_side, cfg.trim_tolerance), keys]).encode()
            ).hexdigest()[:12]
            tasks.append(Task(f"{shard}.{digest}", (shard, keys)))
        return tasks

    def process(self, task: Task, stats: Stats) -> None:
        shard, keys = task.payload
        wanted = set(keys)
        cfg = self.config.dedup
        # samples the downloader hashed from their original: their thumbnails are in the shard parquet
        table = load_shard_table(self.run, shard, with_thumbs=True)
        stored = (
            read_thumbs(table, params_tag(cfg.original_decode_min_side, cfg.trim_tolerance), wanted)
            if table is not None
            else {}
        )
        found: list[str] = []
        grays: list[np.ndarray] = []
        decoded: list[int] = []
        stacks: list[np.ndarray | None] = []
        metas: list[dict] = []
        for sample in iter_samples(self.run, f"shards/{shard}.tar"):
            if sample.key in wanted:
                if sample.key in stored:
                    stacks.append(stored[sample.key])
                else:
                    grays.append(decode_gray(sample.image, cfg.decode_min_side)[0])
                    decoded.append(len(stacks))
                    stacks.append(None)
                found.append(sample.key)
                metas.append(sample.meta)
        if decoded:
            thumbs, _ = train_thumbs(grays, cfg.trim_tolerance)
            for j, i in enumerate(decoded):
                stacks[i] = thumbs[j]
        stack = np.stack(stacks) if found else np.zeros((0, len(TRAIN_VIEWS), THUMB, THUMB), np.uint8)
        # keys and metadata as one JSON document in a byte array: no pickled objects in the file
        index = np.frombuffer(json.dumps({"keys": found, "meta": metas}).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, stack=stack, index=index)
        self.run.write_bytes(thumbs_path(shard), buf.getvalue())
        stats.inc("thumbnails", len(found))
        stats.inc("thumbnails_original", len(found) - len(decoded))
        stats.inc("missing", len(wanted) - len(found))


def load_thumbs(run: RunDir, shard: str) -> tuple[list[str], np.ndarray, list[dict]]:
    """(keys, thumbnails [n, views, 32, 32] uint8, json metadata) a ``dedup_thumbs`` task wrote."""
    with np.load(io.BytesIO(run.read_bytes(thumbs_path(shard)))) as z:
        index = json.loads(z["index"].tobytes())
        return index["keys"], z["stack"], index["meta"]
