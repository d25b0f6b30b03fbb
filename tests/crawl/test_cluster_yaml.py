"""infra/ray/cluster.yaml is a valid Ray cluster-launcher config with token auth, a loopback dashboard, instance
profiles for every node, one pinned Ray and Python image, spot workers with an on-demand fallback, and the
`download` resource on download workers only."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "infra" / "ray" / "cluster.yaml"


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
    bad["available_node_types"]["ray.worker.download.spot"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _workers(cluster: dict) -> dict[str, dict]:
    return {k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]}


def test_token_auth_loopback_dashboard_and_download_workers(cluster):
    assert cluster["provider"]["type"] == "aws"
    head_start = " ".join(cluster["head_start_ray_commands"])
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start
    # the token made by `ray get-auth-token --generate` is copied to every node
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["setup_commands"])  # drivers too
    # download workers: a local caching DNS resolver on the host, disk, and CPU resources for shard tasks
    for worker in _workers(cluster).values():
        assert any("knot-resolver" in c for c in worker["initialization_commands"])
        assert any("nameserver 127.0.0.1" in c for c in worker["initialization_commands"])
        assert worker["resources"]["CPU"] >= 8
        assert worker["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 50
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_webclip_is_installed_from_the_synced_checkout(cluster):
    assert cluster["file_mounts"]["~/webclip"] == "."
    install = [c for c in cluster["setup_commands"] if "pip install" in c and "webclip" in c]
    assert install == ['python -m pip install -q -e "$HOME/webclip[s3]"']
    # torch is pinned to the CPU wheel scripts/setup.sh installs, before webclip pulls an unpinned one
    setup = (REPO / "scripts" / "setup.sh").read_text()
    torch = re.search(r"TORCH=\$\{WEBCLIP_TORCH:-(torch==[0-9.]+)\}", setup).group(1)
    torch_at = next(i for i, c in enumerate(cluster["setup_commands"]) if f'"{torch}"' in c)
    assert "download.pytorch.org/whl/cpu" in cluster["setup_commands"][torch_at]
    assert torch_at < cluster["setup_commands"].index(install[0])


def test_only_download_workers_declare_the_download_resource(cluster):
    from pipeline.config import RayConfig

    wanted = RayConfig().stage_resources["download"]  # what the download stage's tasks request
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert not set(wanted) & set(head["resources"])
    for worker in _workers(cluster).values():
        assert all(worker["resources"][r] >= n for r, n in wanted.items())


def test_every_node_has_an_instance_profile_with_the_documented_policy(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "webclip-ray-head"}
    for worker in _workers(cluster).values():
        assert worker["node_config"]["IamInstanceProfile"] == {"Name": "webclip-ray-worker"}
    iam = REPO / "infra" / "ray" / "iam"
    script = (iam / "create-profiles.sh").read_text()
    assert subprocess.run(["bash", "-n", str(iam / "create-profiles.sh")]).returncode == 0
    assert "webclip-ray-$who" in script and "RUN_BUCKET/$bucket" in script
    for who in ("head", "worker"):
        policy = json.loads((iam / f"{who}-policy.json").read_text())
        allowed = {(a, r) for st in policy["Statement"] if st["Effect"] == "Allow"
                   for a in _list(st["Action"]) for r in _list(st["Resource"])}
        assert ("s3:GetObject", "arn:aws:s3:::commoncrawl/*") in allowed  # read Common Crawl
        assert ("s3:PutObject", "arn:aws:s3:::RUN_BUCKET/*") in allowed  # write the run bucket
        assert not any(a.startswith("s3:Put") and "commoncrawl" in r for a, r in allowed)
    head_policy = json.loads((iam / "head-policy.json").read_text())
    actions = {a for st in head_policy["Statement"] for a in _list(st["Action"])}
    assert {"ec2:RunInstances", "iam:PassRole"} <= actions  # the autoscaler launches workers with their role


def _list(x):
    return x if isinstance(x, list) else [x]


def test_one_pinned_ray_version_for_laptop_image_and_readme(cluster):
    import ray

    pyproject = (REPO / "pyproject.toml").read_text()
    pinned = re.search(r'"ray\[default\]==([0-9.]+)"', pyproject).group(1)
    assert ray.__version__ == pinned  # what this environment runs
    assert cluster["docker"]["image"] == f"rayproject/ray:{pinned}-py311-cpu"  # Python 3.11, like pyproject
    assert 'requires-python = ">=3.11' in pyproject
    assert f"ray=={pinned}" in (REPO / "requirements" / "tested.txt").read_text()
    assert f"rayproject/ray:{pinned}-py311-cpu" in (REPO / "README.md").read_text()


def test_spot_first_with_on_demand_fallback(cluster):
    """The head's autoscaler uses pipeline.spot_fallback's scorer: spot workers while AWS has capacity,
    on-demand ones while a spot launch has failed (Ray's own node-type chooser, real availability records)."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeProviderAvailabilityTracker
    from ray.autoscaler._private.resource_demand_scheduler import get_nodes_for
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    from pipeline.spot_fallback import SCORER_PATH, spot_first_scorer

    head_start = " ".join(cluster["head_start_ray_commands"])
    assert f"RAY_AUTOSCALER_UTILIZATION_SCORER={SCORER_PATH}" in head_start
    workers = _workers(cluster)
    spot = [k for k, v in workers.items() if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    ondemand = [k for k, v in workers.items() if "InstanceMarketOptions" not in v["node_config"]]
    assert spot == ["ray.worker.download.spot"] and ondemand == ["ray.worker.download.ondemand"]
    assert workers[spot[0]]["resources"] == workers[ondemand[0]]["resources"]

    types = cluster["available_node_types"]
    demand = [{"CPU": 1, "download": 1}] * 40  # 40 pending shard tasks
    tracker = NodeProviderAvailabilityTracker()

    def choose():
        scorer = partial(spot_first_scorer, node_availability_summary=tracker.summary())
        added, _ = get_nodes_for(types, {}, cluster["head_node_type"], 10, demand, scorer)
        return dict(added)

    assert choose() == {spot[0]: 3}  # 40 tasks on 16-CPU spot workers
    now = int(time.time())  # the tracker forgets records older than 30 minutes
    tracker.update_node_availability(spot[0], now, NodeLaunchException(
        "InsufficientInstanceCapacity", "There is no Spot capacity available", None))
    assert choose() == {ondemand[0]: 3}
    tracker.update_node_availability(spot[0], now + 1, None)  # a later spot launch worked
    assert choose() == {spot[0]: 3}
