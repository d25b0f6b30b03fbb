"""The audit database over a real pipeline output: every documented auditor query runs and answers correctly."""

from __future__ import annotations

import re
import shutil

import duckdb

DOC_QUERIES = re.compile(r"```sql\n(.*?)```", re.S)


def _queries(repo_root) -> list[str]:
    """The SQL blocks of the README's "Auditor questions" section, in order."""
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    section = text.split("#### Auditor questions", 1)[1]
    section = re.split(r"\n#{1,4} ", section, maxsplit=1)[0]
    return DOC_QUERIES.findall(section)


def test_every_documented_query_runs_and_answers(audited_run, repo_root):
    _, run, _ = audited_run
    queries = _queries(repo_root)
    assert len(queries) >= 12
    con = duckdb.connect(run.path("audit.duckdb"), read_only=True)
    for sql in queries:
        rows = con.execute(sql).fetchall()
        assert rows, f"documented query returned no rows on a run that has data for it:\n{sql}"
    con.close()


def test_answers_match_the_run(audited_run, repo_root):
    _, run, result = audited_run
    con = duckdb.connect(run.path("audit.duckdb"), read_only=True)
    rate = dict(con.execute("SELECT eval_set, overlapping_images FROM overlap_rate").fetchall())
    assert rate == {"cifar10": 4, "mnist": 2}
    entries = con.execute(
        "SELECT v.entry FROM overlap_entries o JOIN vocab_entries v USING (entry_id) WHERE o.eval_set = 'cifar10'"
    ).fetchall()
    assert sorted(e for (e,) in entries) == ["airplane", "frog"]
    q5 = _queries(repo_root)[4]
    downloaded, clean, removed, ok = con.execute(q5).fetchone()
    assert ok and downloaded == clean + removed == 24
    failures = con.execute("SELECT status, n FROM download_status WHERE status <> 'success'").fetchall()
    assert failures == [("failed_to_download", 1)]
    # Every artifact of this run became a table; hashes keep uint64.
    missing = con.execute("SELECT name FROM audit_tables WHERE NOT present").fetchall()
    assert missing == []
    assert con.execute("SELECT typeof(phash) FROM hashes LIMIT 1").fetchone()[0] == "UBIGINT"
    con.close()
    assert result.stats.counts["page_pairs"] >= 6


def test_database_works_after_it_is_moved(audited_run, tmp_path):
    _, run, _ = audited_run
    moved = tmp_path / "elsewhere.duckdb"
    shutil.copy(run.path("audit.duckdb"), moved)
    con = duckdb.connect(str(moved), read_only=True)
    assert con.execute("SELECT count(*) FROM overlap_pairs WHERE confirmed").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM overlap_rate").fetchone()[0] == 2
    con.close()
