"""Every stage on the embedded default, on a small generated mini-web: counts reconcile, planted
near-duplicates of evaluation images are found, the model trains and is evaluated, the audit exists."""

from __future__ import annotations

import duckdb
import pytest

from demo.__main__ import EXAMPLE_QUERIES, reconcile, summary
from pipeline.rundir import RunDir


@pytest.mark.slow
def test_every_stage_end_to_end(e2e_run):
    run, manifest, config = e2e_run.run, e2e_run.manifest, e2e_run.config

    checks = reconcile(run)
    assert len(checks) == 3 and all(line.startswith("OK") for line in checks), checks

    download = run.read_json("stats/download.json")["dropped"]
    assert download.get("http_404") == 6 and download.get("robots_noai") == 4
    assert download.get("refused_address") == 3

    overlaps = run.read_parquet(RunDir.OVERLAPS).to_pandas()
    confirmed = overlaps[overlaps.confirmed]
    planted = {p["url"] for p in manifest["planted"] if p["evalset"] == "shapes"}
    # every planted shapes duplicate that survived balancing and download is found
    downloaded, downloaded_rows, n_success = set(), 0, 0
    for p in run.glob("shards/*.parquet"):
        t = run.read_parquet(p, columns=["url", "status"]).to_pandas()
        downloaded |= set(t[t.status == "success"].url)
        downloaded_rows += len(t)
        n_success += int((t.status == "success").sum())
    expected = planted & downloaded
    assert expected and expected <= set(confirmed.url)
    # removed samples are not in the clean shards handed to training
    clean_uids = set()
    for p in run.glob("clean/*.parquet"):
        clean_uids |= set(run.read_parquet(p, columns=["uid"]).column("uid").to_pylist())
    assert not clean_uids & set(confirmed.uid)

    assert run.exists("train/export/model.pt")
    results = run.read_parquet("eval/results.parquet").to_pandas()
    assert {"shapes", "cifar10"} <= set(results[results.task == "zeroshot"].dataset)
    assert run.exists("eval/overlap.parquet")

    with duckdb.connect(run.full_url(RunDir.AUDIT_DB), read_only=True) as db:
        tables = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"overlap_pairs", "overlap_rate", "download_status"} <= tables
        # the summary's two example queries answer: overlap per eval set, downloads by status
        rate = db.execute(EXAMPLE_QUERIES[0]).df().set_index("eval_set")
        assert rate.loc["shapes", "overlapping_images"] >= 1
        by_status = dict(db.execute(EXAMPLE_QUERIES[1]).fetchall())
        assert sum(by_status.values()) == downloaded_rows and by_status["success"] == n_success
    assert run.exists(RunDir.AUDIT_PAGE)
    text = summary(run, manifest, {s: 0.0 for s in config.stages}, peak_rss=3 * 2**30)
    assert "zero-shot shapes" in text and "MISMATCH" not in text
    assert "peak memory 3.00 GiB" in text and all(q in text for q in EXAMPLE_QUERIES)
    # issue 21: cifar10 on a class-balanced subset, beside chance and the majority-class rate
    cifar = next(line for line in text.splitlines() if line.startswith("zero-shot cifar10:"))
    assert "vs chance 10.0%, majority class 10.0% (10 classes, 500 images" in cifar, cifar
    assert "WARNING" not in text


@pytest.mark.slow
def test_every_readme_audit_query_returns_rows_on_the_demo_run(e2e_run, repo_root):
    """Issue 21, finding 5: the README's auditor questions answer on the demo's run, not only on a fixture
    built to contain the ids they name."""
    from tests.dedup.test_audit import _queries

    queries = _queries(repo_root)
    assert len(queries) >= 16
    with duckdb.connect(e2e_run.run.full_url(RunDir.AUDIT_DB), read_only=True) as db:
        empty = [sql for sql in queries if not db.execute(sql).fetchall()]
    assert not empty, "README queries with no rows on the demo run:\n" + "\n".join(empty)
