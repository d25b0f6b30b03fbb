"""``webclip extract``: candidate (image URL, text) pairs → ``<run>/pool/part-*.parquet``.

One task per input file (``extract.inputs``: WARC, WAT, parquet, jsonl, csv, tsv; globs, folders,
fsspec URLs and Common Crawl paths lists allowed: :mod:`crawl.inputs`), run in parallel on Ray. Each task writes ``pool/part-<input>-<file>-<k>.parquet``
(uid, url, text, page_url, source), at most ``rows_per_part`` rows each. Exact duplicates of
(url, text) are dropped within a task, then across tasks in :meth:`ExtractStage.finalize` (the
first occurrence in part order is kept) by a hash-partitioned shuffle of uids over Ray tasks
(:mod:`crawl.pool_dedup`; no process holds every uid), so the pool holds each uid once.

Counts: ``candidates = out + Σ pair drops`` (empty_alt, alt_too_long, non_utf8, not_http, duplicate);
``malformed_record`` counts broken records of the inputs.
"""

from __future__ import annotations

import sys

from crawl import pool_dedup
from crawl.config import ExtractInput
from crawl.inputs import InputFiles, plan_input
from crawl.pairs import PairSink
from pipeline.errors import ConfigError
from pipeline.stage import Stage, Task
from pipeline.stats import Stats


class ExtractStage(Stage):
    """Extracts candidate pairs from crawls and tabular pools into the pool."""

    name = "extract"
    outputs = ("pool",)

    def validate(self) -> None:
        if not self.config.extract.inputs:
            raise ConfigError(
                "extract.inputs is empty; add at least one input, e.g. "
                "{path: 'crawl/*.warc.gz', kind: warc} or {path: cc3m.tsv, kind: tsv, header: false, "
                "text_column: '0', url_column: '1'}"
            )
        self._plan()

    def check(self) -> None:
        self.validate()

    def _plan(self) -> list[InputFiles]:
        """Each input's files (read once per stage object: a paths list or a folder's heads cost I/O)."""
        plan = getattr(self, "_planned", None)
        if plan is None:
            plan = self._planned = [
                plan_input(spec, f"extract.inputs[{i}]", self.config.seed)
                for i, spec in enumerate(self.config.extract.inputs)
            ]
        return plan

    def __getstate__(self) -> dict:
        # Ray workers get the task's file in its payload; the plan (maybe 90,000 URLs) stays here.
        state = dict(self.__dict__)
        state.pop("_planned", None)
        return state

    def tasks(self) -> list[Task]:
        tasks = []
        for i, files in enumerate(self._plan()):
            width = 6 if self.config.extract.inputs[i].paths_list else 5  # a paths list: ~100k files
            for j, url in files.files:
                tasks.append(Task(f"{i:02d}-{j:0{width}d}", (i, url)))
        return tasks

    def skipped(self) -> dict[str, list[str]]:
        """Files of folder/glob/paths-list inputs left out as not of their input's kind, by kind."""
        out: dict[str, list[str]] = {}
        for spec, files in zip(self.config.extract.inputs, self._plan(), strict=True):
            out.setdefault(spec.kind, []).extend(files.skipped)
        return {k: v for k, v in out.items() if v}

    def process(self, task: Task, stats: Stats) -> None:
        i, url = task.payload
        cfg = self.config.extract
        pool_dedup.invalidate(self.run)  # pool parts change: a previous cross-file shuffle is stale
        spec: ExtractInput = cfg.inputs[i]
        sink = PairSink(stats, spec.source or spec.kind, cfg.min_text_chars, cfg.max_text_chars)
        if spec.kind == "warc":
            from crawl.warc import read_warc

            read_warc(url, sink, stats, cfg.use_title, spec.open_options(url))
        elif spec.kind == "wat":
            from crawl.warc import read_wat

            read_wat(url, sink, stats, spec.open_options(url))
        else:
            from crawl.pools import read_pool

            read_pool(url, spec, sink, stats)
        stats.inc("files")
        n, step = len(sink), cfg.rows_per_part
        for k, start in enumerate(range(0, max(n, 1), step)):
            # An input without pairs still writes an empty part, so every finished task has output.
            self.run.write_parquet(f"pool/part-{task.id}-{k:03d}.parquet", sink.table(start, start + step))

    def finalize(self, stats: Stats) -> None:
        """Drop (url, text) duplicates across tasks, keeping the first in part order."""
        from pipeline.runner import run_stage

        parts = self.run.glob("pool/part-*.parquet")
        buckets, groups = pool_dedup.layout(
            stats.counts["out"], len(parts), self.config.extract.dedup_bucket_rows
        )
        fan_in = self.config.extract.dedup_fan_in
        shape = {"parts": parts, "buckets": buckets, "groups": groups, "fan_in": fan_in}
        shape_file = f"{pool_dedup.DEDUP_DIR}/layout.json"
        if self.run.exists(shape_file) and self.run.read_json(shape_file) != shape:
            pool_dedup.invalidate(self.run)  # a shuffle of another layout was interrupted: start over
        self.run.write_json(shape_file, shape)
        removed = 0
        for sub in pool_dedup.stages(self.config, self.run, parts, buckets, groups, fan_in):
            result = run_stage(sub, progress=False)
            removed += result.stats.dropped["duplicate"]
        self.run.remove(pool_dedup.DEDUP_DIR, recursive=True)  # uids of the whole pool: large
        if removed:
            stats.drop("duplicate", removed)
            stats.counts["out"] -= removed
        stats.inc("pool_rows", stats.counts["out"])
        for kind, files in self.skipped().items():
            stats.inc(f"skipped_not_{kind}", len(files))
        print(
            f"[extract] pool: {stats.counts['out']:,} unique pairs in {len(parts)} parts "
            f"({removed:,} cross-file duplicates removed; {buckets} uid bucket(s))",
            file=sys.stderr,
        )

    def summary(self, stats: Stats) -> str:
        """The counts, then the files left out of folder/glob inputs by name (what was not read, and why)."""
        lines = [stats.summary()]
        for kind, files in self.skipped().items():
            names = [f.rsplit("/", 1)[-1] for f in files]
            shown = ", ".join(names[:10]) + (f" … (+{len(names) - 10})" if len(names) > 10 else "")
            lines.append(f"skipped_not_{kind}={len(files)}: {shown}")
        return "; ".join(lines)


def pool_row_count(run, pattern: str = "pool/part-*.parquet") -> int:
    """Total rows of the pool (for reconciliation checks)."""
    return sum(run.read_parquet(p, columns=["uid"]).num_rows for p in run.glob(pattern))


__all__ = ["ExtractStage", "pool_row_count"]
