"""A real Ray head on loopback (``ray start --head``) with token authentication, for tests.

Everything stays on 127.0.0.1; ``HOME`` points into the test's temp dir so the user's
``~/.ray/auth_token`` is never read or overwritten.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

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
def ray_head(tmp: Path, num_cpus: int = 2, dashboard_port: int | None = None) -> Iterator[RayHead]:
    """Start ``ray start --head`` with token auth on loopback; stop it afterwards.

    ``dashboard_port``: a fixed port for the dashboard and job server (default: a free one).
    """
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
    port, dash = free_port(), dashboard_port or free_port()
    temp_dir = f"/tmp/ray-{os.getpid()}-{port}"
    # Every fixed default port (agent HTTP 52365, client server 10001, metrics…) may already be held by
    # another Ray on this machine; a head that loses that race starts without a job agent.
    extra = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")]
    start = [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
             "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
             f'--resources={{"download": {num_cpus}}}',  # as a download worker: download tasks request it
             "--disable-usage-stats", f"--temp-dir={temp_dir}", *extra]
    proc = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for_port(port, proc)
        _wait_for_port(dash, proc)
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", token, env)
    finally:
        stop_head(proc)


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray head did not open port {port} within {timeout}s")


def stop_head(proc: subprocess.Popen) -> None:
    """Stop only this head (never `ray stop`, which kills every Ray on the machine, e.g. a test
    session's embedded one): SIGTERM `ray start --block`, then SIGKILL whatever it started."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def job_submit(head: RayHead, args: list[str], env: dict[str, str], timeout: float = 300,
               attempts: int = 40) -> subprocess.CompletedProcess:
    """``ray job submit`` to ``head``; retried while the head's job agent is still starting."""
    cmd = [RAY, "job", "submit", "--address", head.dashboard_url, *args]
    for _ in range(attempts):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in out.stdout + out.stderr:
            return out
        time.sleep(3)
    return out
