"""Fixtures every test package shares: paths to the real data, an embedded Ray, run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip with a reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the checkout as ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole test session (starting Ray costs ~10 s on 2 cores)."""
    import ray

    from pipeline.runner import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def make_config(tmp_path):
    """Build a validated config for a run under ``tmp_path`` (or ``run=``), with ``--set`` style overrides."""
    from pipeline.config import load_config

    def _make(*overrides: str, run: str | None = None, config_file: str | None = None):
        return load_config(config_file, ["ray.num_cpus=2", *overrides], run or str(tmp_path / "run"))

    return _make
