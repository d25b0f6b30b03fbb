"""Shuffle files: a table written with one Parquet row group per partition key, read back one key at a time.

A map task of a hash-partitioned shuffle writes one file holding every partition's rows; a reduce
task reads only its partition's row group from each map file. The keys present are recorded in
the file's schema metadata, so a reader finds its row group (or learns it has none) from the footer
alone. The same pattern as ``crawl/pool_dedup.py`` (kept separate: dedup must not depend on the
extract stage's internals).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.rundir import RunDir

_KEYS = b"webclip_row_group_keys"


def write_keyed(run: RunDir, rel: str, table: pa.Table, keys: np.ndarray) -> None:
    """Write ``table`` with one row group per value of ``keys`` (one int per row, any order).

    Rows keep their order within a key (a stable sort), so a reducer sees them in map order.
    """
    keys = np.asarray(keys, np.int64)
    if len(keys) and not (keys[1:] >= keys[:-1]).all():  # already in key order: nothing to move
        # a stable sort of small non-negative ints is a radix sort in numpy (16 bits or less): 4x cheaper
        small = keys.min() >= 0 and keys.max() < 1 << 16
        order = np.argsort(keys.astype(np.uint16) if small else keys, kind="stable")
        keys = keys[order]
        table = pa.table([_take(c, order) for c in table.columns], schema=table.schema)
    cuts = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], cuts)) if len(keys) else np.zeros(0, np.int64)
    stops = np.concatenate((cuts, [len(keys)])) if len(keys) else np.zeros(0, np.int64)
    schema = table.schema.with_metadata({_KEYS: json.dumps([int(keys[s]) for s in starts])})
    buf = io.BytesIO()
    # No compression: shuffle files are read once, soon after, and hold mostly hashes and digests,
    # which lz4 hardly shrinks (its decoding was most of a reduce task's read). Signed 64-bit columns
    # (gids: ascending within a row group; small counts) are delta-coded, a third of their bytes and
    # cheaper to read than plain; unsigned ones (pHashes: random) stay plain. No dictionaries: the
    # values are (nearly) all distinct, so building one is wasted.
    delta = [f.name for f in table.schema if pa.types.is_int64(f.type)]
    with pq.ParquetWriter(
        buf,
        schema,
        compression="none",
        use_dictionary=False,
        column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
        write_statistics=False,
    ) as writer:
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            writer.write_table(table.slice(a, b - a))
    run.write_bytes(rel, buf.getvalue())


def _take(column: pa.ChunkedArray, order: np.ndarray) -> pa.Array:
    """``column[order]``: by numpy for fixed-width columns without nulls (half Arrow's take's CPU)."""
    column = column.combine_chunks()
    if column.null_count == 0 and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return pa.array(column.to_numpy()[order], column.type)
    return column.take(pa.array(order))


def read_keyed(run: RunDir, rel: str, key: int) -> pa.Table | None:
    """The rows written for ``key`` by :func:`write_keyed`, or None if it had none."""
    with run.fs.open(run.path(rel), "rb") as fh:
        pf = pq.ParquetFile(fh)
        keys = json.loads(pf.schema_arrow.metadata[_KEYS])
        if key not in keys:
            return None
        # on this thread: the task has one CPU (see pool_shuffle._read_one_thread)
        return pf.read_row_group(keys.index(key), use_threads=False).replace_schema_metadata(None)


def read_all_keyed(run: RunDir, rels: list[str], key: int, empty: pa.Schema) -> pa.Table:
    """``key``'s rows from each of ``rels`` (in that order), concatenated; an empty ``empty`` table if none."""
    parts = [t for rel in rels if (t := read_keyed(run, rel, key)) is not None]
    return pa.concat_tables(parts).combine_chunks() if parts else empty.empty_table()
