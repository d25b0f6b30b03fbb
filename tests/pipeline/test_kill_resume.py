"""Killing a running stage (the driver, or one Ray worker) at a random moment loses and duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.rundir import RunDir
from tests.pipeline.fixture_stage import make_inputs

DRIVER = Path(__file__).with_name("drive_stage.py")
N_FILES = 10


def _start(run: Path, inputs: Path, delay: float, stall_from: int | None = None) -> subprocess.Popen:
    stall = [] if stall_from is None else ["--stall-from", str(stall_from)]
    return subprocess.Popen(
        [sys.executable, str(DRIVER), "--run", str(run), "--input", str(inputs), "--delay", str(delay), *stall],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (an embedded Ray's raylet and workers)."""
    group = os.getpgid(proc.pid)
    os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and any(
        p.info["pid"] for p in psutil.process_iter(["pid"]) if _in_group(p, group)
    ):
        time.sleep(0.2)


def _in_group(p: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(p.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def _descends_from(p: psutil.Process, pid: int) -> bool:
    """Ray workers run in their own process groups, but descend from the driver that started Ray."""
    try:
        return any(parent.pid == pid for parent in p.parents())
    except psutil.Error:
        return False


def _outputs(run: Path) -> dict[str, bytes]:
    rd = RunDir(str(run))
    return {p: rd.read_bytes(p) for p in rd.glob("lines/*.parquet")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    inputs = make_inputs(base / "in", n_files=N_FILES)
    _finish(_start(base / "run", inputs, delay=0.0))
    return inputs, _outputs(base / "run")


@pytest.mark.slow
def test_sigkill_of_the_driver_then_rerun_is_exact(tmp_path, reference):
    inputs, expected = reference
    run = tmp_path / "run"
    target = random.Random(os.getpid()).randint(1, N_FILES - 2)  # a random moment mid-stage
    print(f"killing the driver once {target} of {N_FILES} tasks are done")
    # Tasks from `target` on stall, so the kill lands mid-stage however slow the machine is.
    proc = _start(run, inputs, delay=0.2, stall_from=target)
    markers = run / "_done" / "hash_lines"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("part-*"))) < target:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver exited before it could be killed"
    _kill_group(proc)
    done_before = len(list(markers.glob("part-*")))
    assert 0 < done_before < N_FILES
    out = _finish(_start(run, inputs, delay=0.0))
    assert f"skipped={done_before}" in out
    assert _outputs(run) == expected  # every shard exactly once, bit-identical


@pytest.mark.slow
def test_sigkill_of_one_worker_is_retried_and_exact(tmp_path, reference):
    inputs, expected = reference
    run = tmp_path / "run"
    proc = _start(run, inputs, delay=1.5)
    victim = None
    deadline = time.time() + 180
    while victim is None and time.time() < deadline and proc.poll() is None:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("ray::hash_lines") and _descends_from(p, proc.pid):
                victim = p
                break
        time.sleep(0.05)
    assert victim is not None, "no Ray worker running a hash_lines task was found"
    victim.send_signal(signal.SIGKILL)
    out = _finish(proc)  # Ray retries the lost task; the stage completes in the same run
    assert f"tasks={N_FILES}" in out
    assert _outputs(run) == expected
