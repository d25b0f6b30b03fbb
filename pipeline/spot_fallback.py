"""Spot workers first, on-demand when spot capacity runs out: a node-type scorer for Ray's autoscaler.

The Ray cluster launcher picks which node type to launch for pending tasks with a *utilization
scorer*, replaceable through ``RAY_AUTOSCALER_UTILIZATION_SCORER`` in the head's ``ray start``
environment (``infra/ray/cluster.yaml`` sets it to :func:`spot_first_scorer`). Ray's default scorer
ignores launch failures, so with a spot and an on-demand type of the same shape it would keep
asking for spot capacity that AWS cannot give. This one:

* scores a node type as Ray's default does, then prefers types whose name ends in ``.spot``;
* gives no score to a type whose last launch failed (``InsufficientInstanceCapacity``,
  ``SpotMaxPriceTooLow``…): Ray's availability tracker remembers that failure for
  ``AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S`` (30 minutes), during which the demand goes to the
  on-demand type; after it, spot is tried again.

It runs in the head's autoscaler process and imports only Ray.
"""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _resource_based_utilization_scorer

#: Node types whose name ends with this are spot instances (see infra/ray/cluster.yaml).
SPOT_SUFFIX = ".spot"
#: What ``RAY_AUTOSCALER_UTILIZATION_SCORER`` names.
SCORER_PATH = "pipeline.spot_fallback.spot_first_scorer"


def spot_first_scorer(
    node_resources: dict[str, float],
    resources: list[dict[str, float]],
    node_type: str,
    *,
    node_availability_summary: NodeAvailabilitySummary,
) -> tuple[Any, ...] | None:
    """Ray's utilization score of ``node_type`` for ``resources``, spot types first, failed types never."""
    record = node_availability_summary.node_availabilities.get(node_type)
    if record is not None and not record.is_available:
        return None  # launching it failed recently: let another type (on-demand) take the demand
    score = _resource_based_utilization_scorer(
        node_resources, resources, node_availability_summary=node_availability_summary
    )
    if score is None:
        return None
    return (node_type.endswith(SPOT_SUFFIX), *score)
