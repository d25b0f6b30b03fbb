"""`ray job submit` of the crawl job to a token-authenticated Ray head on loopback.

The head is ``ray start --head --block`` in its own session, with ``HOME`` in the test's temp dir
(the user's ``~/.ray/auth_token`` is never read or written). It is stopped by signalling exactly
the processes it started — never ``ray stop``, which would kill every Ray on this shared machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from http_fixtures import ImageServer, write_curated

from pipeline.rundir import RunDir
from tests.ray_cluster import free_port, stop_head

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A Ray head with RAY_AUTH_MODE=token on 127.0.0.1; yields (dashboard URL, client env with token)."""
    tmp = tmp_path_factory.mktemp("head")
    home = tmp / "home"
    home.mkdir()
    env = dict(
        os.environ,
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_USAGE_STATS_ENABLED="0",
        NO_ALBUMENTATIONS_UPDATE="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python`
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    token = (
        subprocess.run(
            [RAY, "get-auth-token", "--generate"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert (home / ".ray" / "auth_token").read_text().strip() == token  # in the temp HOME, not the user's
    env["RAY_AUTH_TOKEN"] = token
    port, dash = free_port(), free_port()
    # Every fixed default port (agent HTTP 52365, client server 10001, metrics…) may already be held by
    # another Ray on this shared machine; a head that cannot bind them starts without a job agent.
    extra = [
        f"--{flag}={free_port()}"
        for flag in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        '--resources={"download": 1}',  # a download worker too: the download stage's tasks request it
        "--disable-usage-stats",
        f"--temp-dir=/tmp/rayw{port}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_head(proc)


def _submit(
    address: str, env: dict[str, str], args: list[str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """``ray job submit``, retried while the head's dashboard/job agent is still starting."""
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", *args]
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        text = out.stdout + out.stderr
        starting = any(
            s in text
            for s in (
                "No available agent",
                "Connection refused",
                "Failed to connect",
                "Cannot connect",
                "503",
            )
        )
        if not starting or time.monotonic() > deadline:
            return out
        time.sleep(2)


@pytest.mark.slow
def test_job_submit_without_token_is_refused_and_with_token_runs_the_crawl(token_head, shared_data, tmp_path):
    address, env = token_head
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:3]
    server = ImageServer(photos)
    try:
        rows = [{"uid": f"j{i}", "url": server.url(f"/img/{photos[i % 3].name}?{i}")} for i in range(5)]
        rows.append({"uid": "j-private", "url": "http://10.0.0.1/x.jpg"})
        run_dir = tmp_path / "run"
        write_curated(run_dir, rows)
        cfg = tmp_path / "crawl.yaml"
        cfg.write_text(yaml.safe_dump({"download": {"allow_addresses": ["127.0.0.1/32"], "image_size": 32}}))
        job = ["python", "crawl/main.py", "--config", str(cfg), "--run", str(run_dir), "--stages", "download"]

        # wait until the head answers an authenticated client, so a refusal below is about the token
        ok = _submit(address, env, ["python", "-c", "print('head up')"])
        assert ok.returncode == 0, ok.stdout + ok.stderr

        stranger = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        stranger["HOME"] = str(tmp_path / "stranger")  # no ~/.ray/auth_token there
        refused = _submit(address, stranger, job, timeout=60)
        assert refused.returncode != 0
        assert any(
            w in (refused.stdout + refused.stderr).lower() for w in ("token", "unauthenticated", "401")
        )
        assert not (run_dir / "shards").exists()

        done = _submit(address, env, job)
        text = done.stdout + done.stderr
        assert done.returncode == 0, text
        assert "succeeded" in text
        run = RunDir(str(run_dir))
        table = [r for p in run.glob("shards/*.parquet") for r in run.read_parquet(p).to_pylist()]
        assert sorted(r["uid"] for r in table) == sorted(r["uid"] for r in rows)
        by_uid = {r["uid"]: r for r in table}
        assert by_uid["j-private"]["reason"] == "refused_address"
        assert sum(r["status"] == "success" for r in table) == 5
    finally:
        server.close()
