"""Every stage on the embedded default, on a small generated mini-web: counts reconcile, planted
near-duplicates of evaluation images are found, the model trains and is evaluated, the audit exists."""

from __future__ import annotations

import duckdb
import pytest
import yaml

from demo import miniweb
from demo.__main__ import demo_config, reconcile, summary
from demo.server import serve
from pipeline.cli import run_stages
from pipeline.config import load_config
from pipeline.rundir import RunDir
from tests.ray_cluster import free_port


@pytest.mark.slow
def test_every_stage_end_to_end(tmp_path, shared_data, ray_local):
    web = tmp_path / "web"
    port = free_port()
    spec = miniweb.MiniWebSpec(n_images=240, n_eval_per_class=6, pages=8, planted_per_evalset=6,
                               broken_links=6, noai_images=4, refused_links=3)
    manifest = miniweb.build(web, port, spec, shared_data / "eval" / "cifar10_test.npz")
    cfg = demo_config(str(tmp_path / "run"), web, manifest, steps=20)
    cfg["train"].update(batch_size=32, checkpoint_every=10, log_every=10)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "c.yaml", ["ray.num_cpus=2"])
    with serve(web / "site", port):
        run_stages(config, config.stages)
    run = RunDir(config.run)

    checks = reconcile(run)
    assert len(checks) == 3 and all(line.startswith("OK") for line in checks), checks

    download = run.read_json("stats/download.json")["dropped"]
    assert download.get("http_404") == 6 and download.get("robots_noai") == 4
    assert download.get("refused_address") == 3

    overlaps = run.read_parquet(RunDir.OVERLAPS).to_pandas()
    confirmed = overlaps[overlaps.confirmed]
    planted = {p["url"] for p in manifest["planted"] if p["evalset"] == "shapes"}
    # every planted shapes duplicate that survived balancing and download is found
    downloaded = set()
    for p in run.glob("shards/*.parquet"):
        t = run.read_parquet(p, columns=["url", "status"]).to_pandas()
        downloaded |= set(t[t.status == "success"].url)
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
    assert run.exists(RunDir.AUDIT_PAGE)
    text = summary(run, manifest, {s: 0.0 for s in config.stages})
    assert "zero-shot shapes" in text and "MISMATCH" not in text
