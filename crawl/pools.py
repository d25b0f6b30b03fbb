"""Candidate pairs from tabular pools: parquet, JSON lines, CSV/TSV (e.g. CC3M's ``caption<TAB>url``).

Columns are named by ``url_column`` / ``text_column`` / ``page_url_column`` (0-based indices for a
file without header). Values are decoded per row, so one undecodable or malformed row is a counted
drop (``non_utf8``, ``malformed_record``), never a failed task.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator

import fsspec
import pyarrow.parquet as pq

from crawl.config import ExtractInput
from crawl.pairs import PairSink
from pipeline.errors import ConfigError
from pipeline.stats import Stats

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # an enormous field is a counted drop, not a crash


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")  # U+FFFD makes the sink count non_utf8
    return str(value)


def _read_parquet(url: str, spec: ExtractInput, sink: PairSink, stats: Stats) -> None:
    cols = [c for c in (spec.url_column, spec.text_column, spec.page_url_column) if c]
    with fsspec.open(url, "rb") as fh:
        pf = pq.ParquetFile(fh)
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise ConfigError(
                f"extract.inputs: {url!r} has no column(s) {missing} (columns: {pf.schema_arrow.names}); "
                "set url_column/text_column/page_url_column"
            )
        for batch in pf.iter_batches(columns=cols, batch_size=65_536):
            urls = batch.column(spec.url_column).to_pylist()
            texts = batch.column(spec.text_column).to_pylist()
            pages = (
                batch.column(spec.page_url_column).to_pylist() if spec.page_url_column else [None] * len(urls)
            )
            stats.inc("records", len(urls))
            for u, t, p in zip(urls, texts, pages, strict=True):
                sink.add(_as_text(u), _as_text(t), _as_text(p))


def _read_jsonl(url: str, spec: ExtractInput, sink: PairSink, stats: Stats) -> None:
    with fsspec.open(url, "rb", compression="infer") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            stats.inc("records")
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.drop("non_utf8")
                continue
            except ValueError:
                stats.drop("malformed_record")
                continue
            if not isinstance(row, dict):
                stats.drop("malformed_record")
                continue
            page = row.get(spec.page_url_column) if spec.page_url_column else None
            sink.add(_as_text(row.get(spec.url_column)), _as_text(row.get(spec.text_column)), _as_text(page))


def _csv_rows(url: str, delimiter: str) -> Iterator[list[str]]:
    with fsspec.open(url, "rb", compression="infer") as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        yield from csv.reader(text, delimiter=delimiter, quoting=quoting)


def _read_delimited(url: str, spec: ExtractInput, sink: PairSink, stats: Stats) -> None:
    rows = _csv_rows(url, "\t" if spec.kind == "tsv" else ",")
    if spec.header:
        header = next(rows, [])
        where = {name: i for i, name in enumerate(header)}
        missing = [
            c for c in (spec.url_column, spec.text_column, spec.page_url_column) if c and c not in where
        ]
        if missing:
            raise ConfigError(
                f"extract.inputs: {url!r} header has no column(s) {missing} (header: {header[:10]}); set "
                "url_column/text_column, or header: false with 0-based column indices"
            )
        iu, it = where[spec.url_column], where[spec.text_column]
        ip = where[spec.page_url_column] if spec.page_url_column else None
    else:
        iu, it = int(spec.url_column), int(spec.text_column)
        ip = int(spec.page_url_column) if spec.page_url_column else None
    need = max(iu, it, ip or 0)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error:
            stats.inc("records")
            stats.drop("malformed_record")
            continue
        if not row:
            continue
        stats.inc("records")
        if len(row) <= need:
            stats.drop("malformed_record")
            continue
        sink.add(row[iu], row[it], row[ip] if ip is not None else None)


def read_pool(url: str, spec: ExtractInput, sink: PairSink, stats: Stats) -> None:
    """Feed every row of the tabular file ``url`` to ``sink``."""
    if spec.kind == "parquet":
        _read_parquet(url, spec, sink, stats)
    elif spec.kind == "jsonl":
        _read_jsonl(url, spec, sink, stats)
    else:
        _read_delimited(url, spec, sink, stats)
