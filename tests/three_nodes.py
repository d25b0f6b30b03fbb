"""A three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), run in its own process and
driven over stdin, so a test can kill a whole node (its raylet, object store and workers) at a moment
it chooses and start a replacement.

    python tests/three_nodes.py STATE_JSON          # then, on stdin: "kill <node_id>" | "add" | "quit"

The head has 1 CPU and no ``download`` resource (like infra/ray/cluster.yaml's head); each worker node
has 1 CPU and 1 ``download``. Everything listens on 127.0.0.1; Ray's temp dir (and its
``ray_current_cluster`` file) is ``RAY_TMPDIR``, which the caller sets to a private folder so no
other Ray on the machine sees this cluster. Token authentication is on when the caller sets
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``. State (addresses, node ids) is written to STATE_JSON
after every change; each command is answered with one line on stdout.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from ray.cluster_utils import Cluster

    state_file = Path(sys.argv[1])
    dashboard_port = int(sys.argv[2])
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            # Ray gives a head's dashboard agent the fixed port 52365 (worker nodes of a Cluster get a free
            # one). Any other Ray on this machine holds it already — the test session's embedded Ray does —
            # and a head whose agent cannot bind it has no job agent: `ray job submit` then answers "No
            # available agent" for as long as the cluster lives.
            "dashboard_agent_listen_port": _free_port(),
        },
    )
    workers = {}

    def add() -> str:
        node = cluster.add_node(num_cpus=1, resources={"download": 1}, node_ip_address="127.0.0.1")
        workers[node.node_id] = node
        return node.node_id

    def save() -> None:
        state_file.write_text(json.dumps({
            "address": cluster.address,
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
            "head": cluster.head_node.node_id,
            "workers": sorted(workers),
        }))

    add()
    add()
    cluster.wait_for_nodes()
    save()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "kill":
                node = workers.pop(words[1])
                cluster.remove_node(node, allow_graceful=False)  # the whole node at once, as a lost machine
                save()
                print(f"killed {words[1]}", flush=True)
            elif words[0] == "add":
                node_id = add()
                cluster.wait_for_nodes()
                save()
                print(f"added {node_id}", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
