"""infra/ray/cluster.yaml is a valid Ray cluster-launcher config with token auth and a loopback dashboard."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "infra" / "ray" / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())


def test_valid_against_rays_own_schema(cluster, schema):
    jsonschema.validate(cluster, schema)
    # what `ray up` does: fill the provider's defaults, then Ray's full validation
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_check_catches_mistakes(cluster, schema):
    typo = dict(cluster, max_worker=3)
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(typo, schema)
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["ray.worker.download"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_token_auth_loopback_dashboard_and_download_workers(cluster):
    assert cluster["provider"]["type"] == "aws"
    head_start = " ".join(cluster["head_start_ray_commands"])
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start
    # the token made by `ray get-auth-token --generate` is copied to every node
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["setup_commands"])  # drivers too
    # webclip is installed on every node from the synced checkout
    assert any("pip install" in c and "/home/ubuntu/webclip" in c for c in cluster["setup_commands"])
    # download workers: a local caching DNS resolver, disk, and CPU resources for shard tasks
    assert any("knot-resolver" in c for c in cluster["worker_setup_commands"])
    assert any("nameserver 127.0.0.1" in c for c in cluster["worker_setup_commands"])
    worker = cluster["available_node_types"]["ray.worker.download"]
    assert worker["resources"]["CPU"] >= 8
    assert worker["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 50
    assert cluster["head_node_type"] in cluster["available_node_types"]
