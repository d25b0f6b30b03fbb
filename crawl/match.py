"""``webclip match``: which pool rows contain which vocabulary entries.

One task per pool part. The matcher over the vocabulary (``match.engine``: a token trie by default,
or an Aho-Corasick automaton) is built once per worker process (:func:`crawl.matcher.cached_matcher`,
keyed by the entries file's URL, size, modification time, ``match.normalize`` and ``match.engine``)
and reused by every task that worker runs. Each task writes

* ``match/<part>.parquet``: the matched rows only — uid, url, text, page_url, source, entry_ids
  (list<int32>, sorted);
* ``match/_counts/<part>.parquet``: entry_id, count for the part (entries it holds only);

and :meth:`MatchStage.finalize` sums the part counts into ``match/counts.parquet`` (entry_id int32,
count int64, one row per vocabulary entry, zeros included): as a tree of Ray tasks when there are
many parts (:mod:`crawl.count_reduce`), so the driver's work does not grow with the part count.
Stats: ``in = matched + unmatched``.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl import count_reduce
from crawl.count_reduce import COUNTS_SCHEMA
from crawl.entries import load_entries
from crawl.matcher import Matcher, cached_matcher
from pipeline.errors import ConfigError
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

PART_COUNTS = "match/_counts"


class MatchStage(Stage):
    """Matches every pool row against the vocabulary (MetaCLIP semantics) and counts per entry."""

    name = "match"
    outputs = ("match",)
    #: Count files the driver (or one reduce task) sums at most (crawl.count_reduce).
    count_fan_in: int = count_reduce.FAN_IN

    def entries_url(self) -> str:
        """The vocabulary this stage matches: ``match.entries`` or the vocab stage's output."""
        return self.config.match.entries or self.run.full_url(self.run.VOCAB_ENTRIES)

    def validate(self) -> None:
        url = self.config.match.entries
        if url:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
            if not fs.exists(path):
                raise ConfigError(
                    f"match.entries = {url!r} does not exist; fix the path or unset it to use "
                    "<run>/vocab/entries.parquet"
                )

    def check(self) -> None:
        self.validate()
        if not self.config.match.entries and not self.run.exists(self.run.VOCAB_ENTRIES):
            raise ConfigError(
                f"{self.run.full_url(self.run.VOCAB_ENTRIES)} is missing: run `webclip vocab` "
                "first, or set match.entries to a ready vocabulary file"
            )
        if not self.run.glob("pool/part-*.parquet"):
            raise ConfigError(f"no pool parts under {self.run.full_url('pool')}: run `webclip extract` first")

    def tasks(self) -> list[Task]:
        return [
            Task(p.rsplit("/", 1)[-1].removesuffix(".parquet"), p)
            for p in self.run.glob("pool/part-*.parquet")
        ]

    # ------------------------------------------------------------------ worker side
    def _load(self) -> tuple[list[int], list[str]]:
        return load_entries(self.entries_url(), "match.entries")

    def matcher(self) -> Matcher:
        """This worker's matcher for the configured vocabulary and engine (built on first use)."""
        import fsspec

        url = self.entries_url()
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        key = (
            url,
            info.get("size"),
            str(info.get("mtime") or info.get("LastModified") or info.get("ETag")),
            self.config.match.normalize,
            self.config.match.engine,
        )

        def build() -> Matcher:
            ids, entries = self._load()
            return Matcher(
                entries, ids, normalize=self.config.match.normalize, engine=self.config.match.engine
            )

        return cached_matcher(key, build)

    def process(self, task: Task, stats: Stats) -> None:
        count_reduce.invalidate(self.run, self.name)  # part counts change: a leftover reduction is stale
        matcher = self.matcher()
        out_batches: list[pa.Table] = []
        counts: np.ndarray = np.zeros(0, np.int64)
        with self.run.fs.open(self.run.path(task.payload), "rb") as fh:
            pf = pq.ParquetFile(fh)
            for batch in pf.iter_batches(batch_size=self.config.match.batch_rows):
                table = pa.Table.from_batches([batch])
                ids = matcher.match_array(table.column("text"))
                hit = np.diff(ids.offsets.to_numpy()) > 0
                n_hit = int(hit.sum())
                stats.inc("in", len(table))
                stats.inc("matched", n_hit)
                stats.inc("unmatched", len(table) - n_hit)
                if n_hit:
                    flat = ids.values.to_numpy()  # match_array's lists start at offset 0
                    bc = np.bincount(flat, minlength=len(counts))
                    bc[: len(counts)] += counts
                    counts = bc
                    table = table.append_column("entry_ids", ids)
                    # with a real vocabulary nearly every row matches: skip the copy then
                    out_batches.append(table if n_hit == len(table) else table.filter(pa.array(hit)))
        schema = pf.schema_arrow.append(pa.field("entry_ids", pa.list_(pa.int32())))
        out = pa.concat_tables(out_batches) if out_batches else schema.empty_table()
        stats.inc("matches", int(counts.sum()))
        # Dictionary pages only where values repeat: for uid, url, text and entry_ids they cost a
        # quarter of the write and save nothing.
        self.run.write_parquet(
            f"match/{task.id}.parquet",
            out,
            use_dictionary=[c for c in ("page_url", "source") if c in out.column_names],
        )
        self.run.write_parquet(f"{PART_COUNTS}/{task.id}.parquet", count_reduce.sparse_counts(counts))

    # ------------------------------------------------------------------ driver side
    def finalize(self, stats: Stats) -> None:
        ids, _ = self._load()
        files = [f"{PART_COUNTS}/{t.id}.parquet" for t in self.tasks()]
        total = count_reduce.reduce_counts(self, files, max(ids, default=-1) + 1, self.count_fan_in)
        id_arr = np.asarray(ids, np.int64)
        table = pa.table({"entry_id": id_arr.astype(np.int32), "count": total[id_arr]}, schema=COUNTS_SCHEMA)
        self.run.write_parquet(self.run.MATCH_COUNTS, table)
        count_reduce.cleanup(self.run, self.name)
        stats.inc("entries_matched", int((total[id_arr] > 0).sum()))
        if stats.counts["in"] != stats.counts["matched"] + stats.counts["unmatched"]:
            raise RuntimeError("match stats do not reconcile: in != matched + unmatched")
        print(
            f"[match] {stats.counts['matched']:,} of {stats.counts['in']:,} rows matched "
            f"({stats.counts['entries_matched']:,} of {len(ids):,} entries occur)",
            file=sys.stderr,
        )
