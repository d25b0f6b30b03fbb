"""The small end-to-end configuration, run once per test session and shared: the mini-web, its port and
the uninterrupted run every end-to-end test checks or compares against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo import miniweb
from demo.__main__ import demo_config
from demo.server import serve
from pipeline.cli import run_stages
from pipeline.config import WebclipConfig, load_config
from pipeline.rundir import RunDir
from tests.ray_cluster import free_port

#: The small configuration: the demo's, with fewer images, steps and a smaller batch.
SPEC = dict(n_images=240, n_eval_per_class=6, pages=8, planted_per_evalset=6,
            broken_links=6, noai_images=4, refused_links=3)
STEPS = 20
#: ``--set`` overrides on top of ``demo_config`` (the same list is given to ``python -m demo``).
#: log_every=1: a loss per step to compare, and train progress the interruption test can wait for.
OVERRIDES = ["train.batch_size=32", "train.checkpoint_every=10", "train.log_every=1", "ray.num_cpus=2"]


@dataclass
class E2ERun:
    """The uninterrupted reference run. Its mini-web is ``<run>-miniweb`` as ``python -m demo`` lays it out."""

    web: Path
    port: int
    manifest: dict[str, Any]
    config: WebclipConfig
    run: RunDir


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, shared_data, ray_local) -> E2ERun:
    base = tmp_path_factory.mktemp("e2e")
    run_path = base / "run"
    web = Path(f"{run_path}-miniweb")
    port = free_port()
    manifest = miniweb.build(web, port, miniweb.MiniWebSpec(**SPEC), shared_data / "eval" / "cifar10_test.npz")
    (web / "demo.yaml").write_text(yaml.safe_dump(demo_config(str(run_path), web, manifest, STEPS)))
    config = load_config(web / "demo.yaml", OVERRIDES)
    with serve(web / "site", port):
        run_stages(config, config.stages)
    return E2ERun(web, port, manifest, config, RunDir(config.run))
