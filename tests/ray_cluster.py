"""A real Ray head on loopback (``ray start --head``) with token authentication, for tests.

Everything stays on 127.0.0.1; ``HOME`` points into the test's temp dir so the user's
``~/.ray/auth_token`` is never read or overwritten.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    gcs_address: str
    dashboard_url: str
    token: str
    env: dict[str, str]  # environment of a client that holds the token

    def env_without_token(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_TOKEN"}
        env["HOME"] = env["HOME"] + "-stranger"  # no ~/.ray/auth_token there
        return env


@contextlib.contextmanager
def ray_head(tmp: Path, num_cpus: int = 2) -> Iterator[RayHead]:
    """Start ``ray start --head`` with token auth on loopback; stop it afterwards."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep every Ray process on loopback
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.pop("RAY_ADDRESS", None)
    token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    env["RAY_AUTH_TOKEN"] = token
    port, dash = free_port(), free_port()
    temp_dir = f"/tmp/ray-{os.getpid()}-{port}"
    start = [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
             "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=180)
    try:
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", token, env)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def job_submit(head: RayHead, args: list[str], env: dict[str, str], timeout: float = 300,
               attempts: int = 40) -> subprocess.CompletedProcess:
    """``ray job submit`` to ``head``; retried while the head's job agent is still starting."""
    import time

    cmd = [RAY, "job", "submit", "--address", head.dashboard_url, *args]
    for _ in range(attempts):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in out.stdout + out.stderr:
            return out
        time.sleep(3)
    return out
