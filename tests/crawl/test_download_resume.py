"""Killing a download (one Ray worker, or the driver) and rerunning: every curated uid exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from http_fixtures import ImageServer, write_curated

from pipeline.rundir import RunDir
from pipeline.runner import STAGE_MARKER, run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(shared_data):
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:4]
    srv = ImageServer(photos)
    yield srv
    srv.close()


def slow_rows(server: ImageServer, n: int, delay: float, tag: str) -> list[dict]:
    """Real images served after ``delay`` seconds, plus a 404 every 7th row (failures count too)."""
    rows = []
    for i in range(n):
        path = "/status/404" if i % 7 == 3 else f"/slow/{delay}/{server.names[i % len(server.names)]}"
        rows.append({"uid": f"uid-{i:04d}", "url": server.url(f"{path}?t={tag}&i={i}")})
    return rows


def assert_exactly_once(run_dir: Path, rows: list[dict]) -> None:
    run = RunDir(str(run_dir))
    uids = [
        u
        for p in run.glob("shards/*.parquet")
        for u in run.read_parquet(p, columns=["uid"])["uid"].to_pylist()
    ]
    assert sorted(uids) == sorted(r["uid"] for r in rows)  # nothing lost, nothing twice
    stats = run.read_json("stats/download.json")
    assert stats["counts"]["in"] == len(rows)
    assert stats["counts"]["success"] + sum(stats["dropped"].values()) == len(rows)
    assert stats["dropped"] == {"http_404": sum(1 for r in rows if "/status/404" in r["url"])}
    assert not list((run_dir / "shards").glob(".tmp-*"))


def _download_workers() -> list[psutil.Process]:
    """Ray workers running a download task that this test process's embedded Ray started."""
    me = os.getpid()
    found = []
    for p in psutil.Process(me).children(recursive=True):
        try:
            if p.cmdline()[:1] == ["ray::download"]:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_killed_ray_worker_is_retried_and_nothing_is_lost(server, make_config, tmp_path, ray_local):
    rows = slow_rows(server, 24, 0.5, "worker")
    run_dir = tmp_path / "run"
    write_curated(run_dir, rows, parts=2)
    config = make_config(
        "download.allow_addresses=[127.0.0.1/32]",
        "download.samples_per_shard=4",
        "download.thread_count=2",
        "download.image_size=32",
        "ray.task_retries=2",
    )
    from crawl.download import DownloadStage

    killed: list[int] = []

    def killer() -> None:
        # wait until both running tasks are mid-shard (URLs of two shards requested, no shard finished
        # yet), then SIGKILL one of the two workers: its shard must be redone from scratch
        deadline = time.monotonic() + 120
        run = RunDir(str(run_dir))
        while time.monotonic() < deadline and not killed:
            workers = _download_workers()
            started = {int(p.rsplit("i=", 1)[1]) // 4 for p, _, _ in server.requests[before:]}
            if len(workers) >= 2 and len(started) >= 2 and not run.done_tasks("download"):
                workers[0].send_signal(signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.05)

    before = len(server.requests)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    thread.join(timeout=5)
    assert killed, "no download worker was found to kill"
    assert_exactly_once(run_dir, rows)
    # the killed shard was redone, so some URLs were requested twice; none more than retries allow
    assert len(server.requests) - before > len(rows)


def _crawl(run_dir: Path, cfg: Path) -> subprocess.Popen:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "crawl" / "main.py"),
            "--config",
            str(cfg),
            "--run",
            str(run_dir),
            "--stages",
            "download",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and the embedded Ray it started (its own session/process group)."""
    group = os.getpgid(proc.pid)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(group, signal.SIGKILL)
    for p in descendants:  # Ray workers may sit in their own process groups
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_driver_then_rerun_finishes_only_missing_shards(server, tmp_path):
    rows = slow_rows(server, 20, 0.8, "driver")
    run_dir = tmp_path / "run"
    write_curated(run_dir, rows, parts=1)
    cfg = tmp_path / "crawl.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "ray": {"num_cpus": 2},
                "download": {
                    "allow_addresses": ["127.0.0.1/32"],
                    "samples_per_shard": 4,
                    "thread_count": 2,
                    "image_size": 32,
                },
            }
        )
    )
    run = RunDir(str(run_dir))
    proc = _crawl(run_dir, cfg)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and len(run.done_tasks("download")) < 1:
            time.sleep(0.1)
        assert proc.poll() is None, "the crawl finished before it could be killed:\n" + proc.stdout.read()
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    done_before = run.done_tasks("download")
    assert 1 <= len(done_before) < 5 and STAGE_MARKER not in done_before
    requested_before = {p for p, _, _ in server.requests}

    rerun = _crawl(run_dir, cfg)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"({len(done_before)} already done)" in out
    assert_exactly_once(run_dir, rows)
    # shards finished before the kill were not downloaded again
    size = 4
    for task in done_before:
        for r in rows[int(task) * size : (int(task) + 1) * size]:
            path = r["url"].split(str(server.port), 1)[1]
            assert path in requested_before
            assert [p for p, _, _ in server.requests].count(path) == 1, path
