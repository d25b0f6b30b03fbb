"""The download stage's tasks request the `download` Ray resource (only download workers declare it, in
infra/ray/cluster.yaml), configurable per stage with `ray.stage_resources`; the embedded Ray declares it."""

from __future__ import annotations

import pytest

from pipeline.cli import stage_class
from pipeline.config import STAGE_ORDER
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import default_custom_resources, task_options


def _options(make_config, name: str, *overrides: str) -> dict:
    cfg = make_config(*overrides)
    return task_options(stage_class(name)(cfg, RunDir(cfg.run)))


def test_download_tasks_request_the_download_resource(make_config):
    opts = _options(make_config, "download")
    assert opts["resources"] == {"download": 1.0}
    assert opts["num_cpus"] == 1.0 and opts["max_retries"] == 2 and opts["retry_exceptions"]
    for name in set(STAGE_ORDER) - {"download"}:  # the curation stages run anywhere, head included
        assert "resources" not in _options(make_config, name), name


def test_stage_resources_are_configurable(make_config):
    assert "resources" not in _options(make_config, "download", "ray.stage_resources.download={}")
    opts = _options(make_config, "match", "ray.stage_resources={match: {highmem: 1}, download: {download: 2}}")
    assert opts["resources"] == {"highmem": 1.0}
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['downlaod'\]"):
        make_config("ray.stage_resources={downlaod: {download: 1}}")
    with pytest.raises(ConfigError, match="must be custom resources"):
        make_config("ray.stage_resources={download: {CPU: 4}}")


def test_the_embedded_ray_declares_the_resource(ray_local):
    assert default_custom_resources() == ["download"]
    assert ray_local.cluster_resources().get("download", 0) >= 1
