"""Build ``<run>/audit.duckdb``: every artifact of the run that is present, copied into tables, plus views.

Tables are materialised (the parquet rows are copied into the database), so the file answers
queries after it is moved or the run directory is deleted. Artifacts that are absent (a stage not
run yet) are skipped and listed in ``audit_tables`` with ``present = false``; views that need a
missing table are not created. See README.md (auditors section) for every table, view and auditor query.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from pipeline.rundir import RunDir

#: (table, glob under the run, description); a ``{file}`` column is added where several files feed a table.
PARQUET_TABLES: list[tuple[str, str, str]] = [
    ("vocab_entries", "vocab/entries.parquet", "the query vocabulary: entry_id, entry, source"),
    ("pool", "pool/part-*.parquet", "candidate (image url, text) pairs extracted from the crawl"),
    ("matched", "match/part-*.parquet", "pool rows whose text contains a vocabulary entry, with entry_ids"),
    ("match_counts", "match/counts.parquet", "matches per entry over the whole pool"),
    ("curated", "curated/part-*.parquet", "the balanced list handed to the downloader"),
    ("balance_entry_counts", "balance/entry_counts.parquet", "per entry: count before and after balancing"),
    ("download", "shards/*.parquet", "one row per attempted URL: status, error_message, key, uid…"),
    ("hashes", "hashes/*.parquet", "per downloaded sample: sha256, pHash (uint64) views, status"),
    ("evalset_hashes", "evalsets/*/hashes.parquet", "per eval image: eval_set, eval_id, label, hashes"),
    (
        "overlap_pairs",
        "dedup/overlaps.parquet",
        "train/eval candidate pairs with distance, verify_score, confirmed",
    ),
    ("pool_duplicates", "dedup/pool_duplicates.parquet", "near-duplicate pairs inside the training pool"),
    (
        "dedup_decisions",
        "dedup/decisions.parquet",
        "every flagged training sample with its reason, removed or not",
    ),
    ("clean", "clean/*.parquet", "samples in the clean shards handed to training, dedup_reason"),
    ("eval_results", "eval/results.parquet", "checkpoint, dataset, task, metric, value"),
    ("eval_predictions", "eval/predictions/*.parquet", "per eval image predictions: dataset, eval_id, pred…"),
    (
        "eval_overlap",
        "eval/overlap.parquet",
        "All / Overlap / Clean accuracy per dataset with p-value and CI",
    ),
]

#: Views over the tables; created when every table they read exists.
VIEWS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "overlap_rate",
        ("evalset_hashes", "overlap_pairs"),
        """
        SELECT e.eval_set,
               count(*) FILTER (WHERE e.status = 'ok') AS eval_images,
               count(DISTINCT o.eval_id) AS overlapping_images,
               round(count(DISTINCT o.eval_id) / greatest(count(*) FILTER (WHERE e.status = 'ok'), 1), 6)
                   AS overlap_rate,
               count(o.uid) AS training_samples_pairs
        FROM evalset_hashes e
        LEFT JOIN (SELECT * FROM overlap_pairs WHERE confirmed) o USING (eval_set, eval_id)
        GROUP BY e.eval_set ORDER BY e.eval_set
        """,
    ),
    (
        "overlap_entries",
        ("overlap_pairs",),
        """
        SELECT o.eval_set, u.entry_id, count(*) AS overlapping_pairs, count(DISTINCT o.uid) AS training_samples
        FROM overlap_pairs o, unnest(o.entry_ids) AS u(entry_id)
        WHERE o.confirmed
        GROUP BY ALL
        """,
    ),
    (
        "download_status",
        ("download",),
        """
        SELECT status, coalesce(error_message, '') AS error_message, count(*) AS n
        FROM download GROUP BY ALL ORDER BY n DESC
        """,
    ),
]


def _read_all(run: RunDir, pattern: str) -> tuple[pa.Table | None, list[str]]:
    files = run.glob(pattern)
    if not files:
        return None, []
    tables = []
    for f in files:
        t = run.read_parquet(f)
        if pattern.startswith("evalsets/"):
            t = t.drop_columns([c for c in t.column_names if c.startswith("thumb_")])
            t = t.add_column(0, "eval_set", pa.array([f.split("/")[1]] * t.num_rows, pa.string()))
        elif pattern in ("shards/*.parquet", "clean/*.parquet") and "shard" not in t.column_names:
            stem = posixpath.basename(f).removesuffix(".parquet")
            t = t.add_column(0, "shard", pa.array([stem] * t.num_rows, pa.string()))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="permissive"), files


def build_audit_db(run: RunDir, db_path: Path, log: Callable[[str], None] = print) -> dict[str, int]:
    """Write the audit database for ``run`` to the local file ``db_path``; returns rows per table."""
    import duckdb

    if db_path.exists():
        db_path.unlink()
    con = duckdb.connect(str(db_path))
    rows: dict[str, int] = {}
    catalog = []
    try:
        for name, pattern, desc in PARQUET_TABLES:
            table, files = _read_all(run, pattern)
            if table is None:
                catalog.append((name, pattern, desc, False, 0, 0))
                continue
            con.register("_src", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _src")
            con.unregister("_src")
            rows[name] = table.num_rows
            catalog.append((name, pattern, desc, True, len(files), table.num_rows))
        _json_tables(con, run, rows, catalog)
        for name, needs, sql in VIEWS:
            if all(n in rows for n in needs):
                con.execute(f"CREATE VIEW {name} AS {sql}")
        con.execute(
            "CREATE TABLE audit_tables (name VARCHAR, source VARCHAR, description VARCHAR, present BOOLEAN, "
            "files INTEGER, rows BIGINT)"
        )
        con.executemany("INSERT INTO audit_tables VALUES (?, ?, ?, ?, ?, ?)", catalog)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    log(f"[audit] {len(rows)} tables: " + ", ".join(f"{k}={v:,}" for k, v in rows.items()))
    return rows


def _json_tables(con, run: RunDir, rows: dict[str, int], catalog: list) -> None:
    """Tables from JSON artifacts: stage stats, the dedup reconciliation, and why each sample was removed."""
    stat_rows = []
    for f in run.glob("stats/*.json"):
        body = run.read_json(f)
        stage = body.get("stage", posixpath.basename(f).removesuffix(".json"))
        for kind in ("counts", "dropped"):
            for k, v in body.get(kind, {}).items():
                stat_rows.append({"stage": stage, "kind": kind, "name": k, "value": int(v)})
    if stat_rows:
        _insert(
            con,
            "stage_stats",
            pa.Table.from_pylist(stat_rows),
            rows,
            catalog,
            "stats/*.json",
            "counts and drops by reason per stage",
        )
    if run.exists("dedup/summary.json"):
        s = run.read_json("dedup/summary.json")
        recon = [
            {"category": "downloaded", "reason": None, "n": s["downloaded"]},
            {"category": "clean", "reason": None, "n": s["clean"]},
        ]
        recon += [{"category": "removed", "reason": r, "n": n} for r, n in s.get("removed", {}).items()]
        recon += [{"category": "flagged", "reason": r, "n": n} for r, n in s.get("flagged", {}).items()]
        _insert(
            con,
            "dedup_reconciliation",
            pa.Table.from_pylist(recon),
            rows,
            catalog,
            "dedup/summary.json",
            "downloaded = clean + removed by reason (mode remove); flagged = what dedup found",
        )
        sets = [{"eval_set": k, **v} for k, v in s.get("eval_sets", {}).items()]
        if sets:
            _insert(
                con,
                "dedup_eval_sets",
                pa.Table.from_pylist(sets),
                rows,
                catalog,
                "dedup/summary.json",
                "per eval set: tau, verify threshold, candidates, confirmed, overlap rate",
            )
    if run.exists("config.yaml"):
        from pipeline.runconfig import stage_config_path

        # the run's union first, then what each stage ran with (config/<stage>.yaml)
        configs = [("run", "config.yaml", run.read_text("config.yaml"))]
        for rel in run.glob(stage_config_path("*")):
            configs.append((posixpath.basename(rel).removesuffix(".yaml"), rel, run.read_text(rel)))
        _insert(
            con,
            "run_config",
            pa.table({k: [c[i] for c in configs] for i, k in enumerate(("stage", "source", "yaml"))}),
            rows,
            catalog,
            "config.yaml, config/*.yaml",
            "the run's configuration (stage 'run': each stage's section as it last ran) and, per stage, the "
            "whole configuration it ran with",
        )


def _insert(con, name: str, table: pa.Table, rows: dict, catalog: list, source: str, desc: str) -> None:
    con.register("_src", table)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _src")
    con.unregister("_src")
    rows[name] = table.num_rows
    catalog.append((name, source, desc, True, 1, table.num_rows))


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
