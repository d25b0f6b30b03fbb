"""`python crawl/main.py`: extract → match → balance → download end to end, resumable, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from http_fixtures import ImageServer

from pipeline.config import load_config
from pipeline.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "crawl" / "main.py"


def _load_main():
    """crawl/main.py is a script, not a module of the package: load it by path under its own name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("webclip_crawl_main", MAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _crawl(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(MAIN), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd="/"
    )  # from any directory, as `ray submit` runs it


def test_stage_selection():
    crawl_stages = _load_main().crawl_stages
    config = load_config(None, [], "/tmp/unused-run")
    # default `stages` is the whole pipeline: the crawl part of it; dedup only with eval sets configured
    assert crawl_stages(config) == ["vocab", "extract", "match", "balance", "download"]
    assert crawl_stages(config, ["download", "match"]) == ["match", "download"]
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="not crawl stages"):
        crawl_stages(config, ["train"])


def test_bad_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("download:\n  image_sise: 224\n")
    out = _crawl("--config", str(cfg), "--run", str(tmp_path / "run"), timeout=120)
    assert out.returncode == 2
    assert "download.image_sise" in out.stderr and "download.image_size" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_crawl_job_extract_to_shards_and_rerun_skips(shared_data, tmp_path):
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:4]
    server = ImageServer(photos)
    try:
        captions = ["a dog on the grass", "a cat asleep", "the dog and the cat", "a red car", "no match here"]
        pool = tmp_path / "pool.jsonl"
        with pool.open("w") as fh:
            for i, text in enumerate(captions):
                fh.write(
                    json.dumps({"url": server.url(f"/img/{photos[i % 4].name}?{i}"), "text": text}) + "\n"
                )
            fh.write(json.dumps({"url": "http://10.0.0.1/cat.jpg", "text": "a private cat"}) + "\n")
        entries = tmp_path / "entries.txt"
        entries.write_text("dog\ncat\ncar\n")
        cfg = tmp_path / "crawl.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "ray": {"num_cpus": 2},
                    "stages": ["extract", "match", "balance", "download"],
                    "extract": {"inputs": [{"path": str(pool), "kind": "jsonl"}]},
                    "match": {"entries": str(entries)},
                    "balance": {"t": 1000, "plot": False},
                    "download": {
                        "allow_addresses": ["127.0.0.1/32"],
                        "image_size": 32,
                        "samples_per_shard": 3,
                    },
                }
            )
        )
        run_dir = tmp_path / "run"
        out = _crawl("--config", str(cfg), "--run", str(run_dir))
        assert out.returncode == 0, out.stderr[-3000:]
        run = RunDir(str(run_dir))
        curated = [
            u for p in run.glob("curated/part-*.parquet") for u in run.read_parquet(p)["uid"].to_pylist()
        ]
        rows = [r for p in run.glob("shards/*.parquet") for r in run.read_parquet(p).to_pylist()]
        assert len(curated) == 5  # "no match here" is not curated
        assert sorted(r["uid"] for r in rows) == sorted(curated)
        by_text = {r["caption"]: r for r in rows}
        assert by_text["a private cat"]["reason"] == "refused_address"
        assert sum(r["status"] == "success" for r in rows) == 4
        assert all(r["entry_ids"] for r in rows)

        again = _crawl("--config", str(cfg), "--run", str(run_dir))
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.count("already complete, skipped") == 4
    finally:
        server.close()
