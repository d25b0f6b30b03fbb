"""``webclip balance``: per-entry balancing of matched pairs → ``<run>/curated/part-*.parquet``.

Entry ``i`` with global count ``cᵢ`` (``match/counts.parquet``) gets ``pᵢ = min(1, t / cᵢ)``; a row
with matched entries E is kept when, for some ``i ∈ E``, ``u(uid, i, seed) < pᵢ``, with ``u`` a hash
of (uid, entry_id, seed) mapped to [0, 1) (:func:`crawl.uid.pair_uniform`). The draws are
independent per entry, so a row is kept with probability 1 − ∏(1 − pᵢ) (MetaCLIP's
``balance_sampling``), and the decision depends on nothing but the row and the seed: the same
output for any number of workers, task split or order.

Before sampling the expected curated size is printed (:mod:`crawl.balance_estimate`: Ray tasks over
at most 64 match parts; the driver reads no rows). After it: the exact kept count beside that
estimate, ``balance/entry_counts.parquet`` (entry_id, entry, count_before, count_after; the counts
after summed by :mod:`crawl.count_reduce`) and ``balance/longtail.png`` (log-log, before vs after).
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crawl import count_reduce
from crawl.balance_estimate import estimate_keep
from crawl.balance_kernel import UNDECIDED, keep_rows
from crawl.entries import load_entries
from crawl.uid import HEX_VALUES, draw_thresholds, entry_keys, u64_hex, uid_block, uid_to_u64
from pipeline.errors import ConfigError
from pipeline.stage import Stage, Task
from pipeline.stats import Stats

ENTRY_COUNTS = "balance/entry_counts.parquet"
LONGTAIL_PNG = "balance/longtail.png"
PART_COUNTS = "balance/_counts"


def entry_probabilities(counts: pa.Table, t: int) -> np.ndarray:
    """``p[entry_id] = min(1, t / count)`` (1 for entries never seen), indexed by entry id."""
    ids = counts.column("entry_id").to_numpy().astype(np.int64)
    c = counts.column("count").to_numpy().astype(np.float64)
    p = np.ones(int(ids.max(initial=-1)) + 1, np.float64)
    with np.errstate(divide="ignore"):
        p[ids] = np.minimum(1.0, np.where(c > 0, t / np.maximum(c, 1), 1.0))
    return p


def _list_parts(entry_ids: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0 as int64, the flat int32 entry ids) of a list array, zero-copy where possible."""
    if isinstance(entry_ids, pa.ChunkedArray):
        entry_ids = entry_ids.combine_chunks() if entry_ids.num_chunks != 1 else entry_ids.chunk(0)
    offsets = entry_ids.offsets.to_numpy().astype(np.int64)  # the slice's own n + 1 offsets
    flat = entry_ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], flat


def entry_table(p: np.ndarray, seed: int) -> np.ndarray:
    """uint64 [len(p), 2]: each entry id's hash key under ``seed`` and its integer draw threshold.

    What :func:`keep_mask` looks up per pair; made once per worker (a few ms for 500,000 entries).
    """
    return np.stack([entry_keys(np.arange(len(p)), seed), draw_thresholds(p)], axis=1)


def keep_mask(uids: pa.Array, entry_ids: pa.ListArray, table: np.ndarray) -> np.ndarray:
    """Which rows balancing keeps, under ``table`` = :func:`entry_table` (rows without entries never).

    Exactly the definition, row by row: kept when some pair's :func:`crawl.uid.pair_uniform` draw is
    below its entry's p (compared as integers, :func:`crawl.uid.draw_thresholds`). The pass is
    compiled (:func:`crawl.balance_kernel.keep_rows`); a pair with p = 1 is not hashed and a row's
    first hit ends it, which do not change the result.
    """
    offsets, flat = _list_parts(entry_ids)
    if len(offsets) == 1:
        return np.zeros(0, bool)
    if len(flat) and (flat.min() < 0 or flat.max() >= len(table)):  # compiled code checks no bounds
        bad = int(np.flatnonzero((flat < 0) | (flat >= len(table)))[0])
        row = int(np.searchsorted(offsets, bad, side="right")) - 1
        raise ValueError(
            f"row {row} holds entry_id {int(flat[bad])}, outside the {len(table):,} entries of the "
            "probabilities (match/counts.parquet): the match parts and counts are from different "
            "runs; rerun `webclip match`"
        )
    if len(uids) != len(offsets) - 1:
        raise ValueError(f"{len(uids)} uids for {len(offsets) - 1} rows of entry ids")
    # the kernel reads a row's uid only when the row needs a draw
    chars = uid_block(uids)
    if chars is None:  # some uid is not 32 characters: every row drawn by its uid_to_u64 value
        chars = u64_hex(uid_to_u64(uids))
    state = keep_rows(offsets, flat, chars, HEX_VALUES, table)
    if (state == UNDECIDED).any():  # 32 characters but not hex (rare): drawn by their hashes
        state = keep_rows(offsets, flat, u64_hex(uid_to_u64(uids)), HEX_VALUES, table)
    return state == 1


def expected_keep(entry_ids: pa.ListArray, p: np.ndarray) -> float:
    """Σ over rows of 1 − ∏(1 − pᵢ): the expected number of kept rows."""
    if isinstance(entry_ids, pa.ChunkedArray):
        entry_ids = entry_ids.combine_chunks()
    n = len(entry_ids)
    if n == 0:
        return 0.0
    flat = entry_ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    parent = np.repeat(np.arange(n), np.diff(entry_ids.offsets.to_numpy().astype(np.int64)))
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-np.minimum(p[flat], 1.0))
    miss = np.exp(np.bincount(parent, weights=log_miss, minlength=n))
    has = np.bincount(parent, minlength=n) > 0
    return float(np.sum((1.0 - miss)[has]))


class BalanceStage(Stage):
    """Samples matched rows so each entry keeps about min(count, t) pairs, deterministically."""

    name = "balance"
    outputs = ("curated", "balance")
    #: Count files the driver (or one reduce task) sums at most (crawl.count_reduce).
    count_fan_in: int = count_reduce.FAN_IN

    def check(self) -> None:
        if not self.run.exists(self.run.MATCH_COUNTS):
            raise ConfigError(
                f"{self.run.full_url(self.run.MATCH_COUNTS)} is missing: run `webclip match` first"
            )
        self._p = entry_probabilities(self.run.read_parquet(self.run.MATCH_COUNTS), self.config.balance.t)
        parts = self._parts()
        try:
            expected, rows, sampled = estimate_keep(self, parts, self._p)
        except Exception as exc:  # only a forecast: an unreadable part fails its balance task, recorded
            cause = getattr(exc, "cause", None) or exc  # a Ray task's error: the worker's exception
            print(
                f"[balance] t={self.config.balance.t:,}: no estimate of the curated size "
                f"({type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300]}); balancing anyway",
                file=sys.stderr,
            )
            return
        self._estimate = expected
        how = (
            "" if sampled == len(parts) else f", from {rows:,} rows of {sampled} of the {len(parts):,} parts"
        )
        print(
            f"[balance] t={self.config.balance.t:,}: expected curated size ≈ {expected:,.0f} rows{how}",
            file=sys.stderr,
        )

    def _parts(self) -> list[str]:
        return self.run.glob("match/part-*.parquet")

    def tasks(self) -> list[Task]:
        return [Task(p.rsplit("/", 1)[-1].removesuffix(".parquet"), p) for p in self._parts()]

    def _probabilities(self) -> np.ndarray:
        p = getattr(self, "_p", None)
        if p is None:
            p = self._p = entry_probabilities(
                self.run.read_parquet(self.run.MATCH_COUNTS), self.config.balance.t
            )
        return p

    def _entry_table(self) -> np.ndarray:
        table = getattr(self, "_table", None)
        if table is None:
            table = self._table = entry_table(self._probabilities(), self.config.seed)
        return table

    def process(self, task: Task, stats: Stats) -> None:
        count_reduce.invalidate(self.run, self.name)  # part counts change: a leftover reduction is stale
        table = self.run.read_parquet(task.payload)
        keep = keep_mask(table.column("uid"), table.column("entry_ids"), self._entry_table())
        out = table.filter(pa.array(keep))
        stats.inc("in", len(table))
        stats.inc("out", len(out))
        stats.drop("balanced_out", len(table) - len(out))
        # Dictionary pages only where values repeat (see crawl.match): a quarter of the write saved.
        self.run.write_parquet(
            f"curated/{task.id}.parquet",
            out,
            use_dictionary=[c for c in ("page_url", "source") if c in out.column_names],
        )
        _, kept_ids = _list_parts(out.column("entry_ids"))
        self.run.write_parquet(
            f"{PART_COUNTS}/{task.id}.parquet", count_reduce.sparse_counts(np.bincount(kept_ids, minlength=0))
        )

    def finalize(self, stats: Stats) -> None:
        before = self.run.read_parquet(self.run.MATCH_COUNTS)
        ids = before.column("entry_id").to_numpy().astype(np.int64)
        files = [f"{PART_COUNTS}/{t.id}.parquet" for t in self.tasks()]
        after = count_reduce.reduce_counts(self, files, int(ids.max(initial=-1)) + 1, self.count_fan_in)
        names = self._entry_names(ids)
        table = pa.table(
            {
                "entry_id": before.column("entry_id"),
                "entry": pa.array(names, pa.string()),
                "count_before": before.column("count"),
                "count_after": pa.array(after[ids], pa.int64()),
            }
        )
        self.run.write_parquet(ENTRY_COUNTS, table)
        count_reduce.cleanup(self.run, self.name)
        if self.config.balance.plot:
            self.run.write_bytes(LONGTAIL_PNG, longtail_png(table, self.config.balance.t))
        capped = int(pc.sum(pc.greater(table["count_before"], self.config.balance.t)).as_py() or 0)
        stats.inc("entries_over_t", capped)
        estimate = getattr(self, "_estimate", None)
        vs = f" (estimated {estimate:,.0f} before)" if estimate is not None else ""
        print(
            f"[balance] kept {stats.counts['out']:,} of {stats.counts['in']:,} rows{vs}; {capped:,} entries "
            f"had more than t={self.config.balance.t:,} matches",
            file=sys.stderr,
        )

    def _entry_names(self, ids: np.ndarray) -> list[str | None]:
        url = self.config.match.entries or self.run.full_url(self.run.VOCAB_ENTRIES)
        try:
            eids, entries = load_entries(url, "match.entries")
        except ConfigError:
            return [None] * len(ids)
        by_id = dict(zip(eids, entries, strict=True))
        return [by_id.get(int(i)) for i in ids]


def longtail_png(table: pa.Table, t: int) -> bytes:
    """Log-log plot of per-entry counts before and after balancing (entries ranked by count before)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = table.column("count_before").to_numpy()
    after = table.column("count_after").to_numpy()
    order = np.argsort(-before, kind="stable")
    before, after = before[order], after[order]
    nz = before > 0
    rank = np.arange(1, int(nz.sum()) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.loglog(rank, before[nz], label="matched (before)", lw=1.5)
    ax.loglog(rank, np.maximum(after[nz], 0.8), label="curated (after)", lw=1.5)
    ax.axhline(t, color="grey", ls="--", lw=1, label=f"t = {t:,}")
    ax.set_xlabel("entry rank (by matched count)")
    ax.set_ylabel("pairs per entry")
    ax.set_title("Per-entry pair counts before and after balancing")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
