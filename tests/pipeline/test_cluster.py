"""A stage runs on an existing Ray head: through RAY_ADDRESS, and submitted with `ray job submit`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.rundir import RunDir
from tests.pipeline.fixture_stage import make_inputs
from tests.ray_cluster import job_submit, ray_head

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    with ray_head(tmp_path_factory.mktemp("head")) as h:
        yield h


def _rows(run: Path) -> int:
    rd = RunDir(str(run))
    return sum(rd.read_parquet(p).num_rows for p in rd.glob("lines/*.parquet"))


@pytest.mark.slow
def test_stage_runs_on_a_running_head_through_ray_address(tmp_path, head):
    inputs = make_inputs(tmp_path / "in", n_files=4)
    env = dict(head.env, RAY_ADDRESS=head.gcs_address)
    out = subprocess.run(
        [sys.executable, str(HERE / "drive_stage.py"), "--run", str(tmp_path / "run"), "--input", str(inputs)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "on Ray" in out.stderr and "DONE tasks=4" in out.stdout
    assert _rows(tmp_path / "run") == 4 * 45
    # the tasks ran on the head's node, not on an embedded instance the driver started
    assert f"Ray at {head.gcs_address}" in out.stderr


@pytest.mark.slow
def test_ray_job_submit_needs_the_token_and_runs_the_stage(tmp_path, head):
    inputs = make_inputs(tmp_path / "in", n_files=3)
    submit = ["--working-dir", str(HERE), "--",
              "python", "drive_stage.py", "--run", str(tmp_path / "run"), "--input", str(inputs)]
    refused = job_submit(head, submit, head.env_without_token(), timeout=120)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
    assert not (tmp_path / "run").exists()
    ok = job_submit(head, submit, head.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded" in ok.stdout + ok.stderr and "DONE tasks=3" in ok.stdout + ok.stderr
    assert _rows(tmp_path / "run") == 3 * 45
