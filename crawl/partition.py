"""The download plan: the curated list cut into shards by host, so politeness holds across a cluster.

A per-task cap alone lets a host that appears in N concurrently running shard tasks see N × cap
connections. Polite crawlers (Heritrix, Nutch, StormCrawler) partition the URL list by host instead;
so does this plan:

1. every row's registrable domain (:func:`crawl.domains.registrable_domain`) is hashed with the run's
   seed, and the rows are ordered by that hash (ties: curated order, i.e. part name then row);
2. the ordered rows are cut into ``S = ceil(N / samples_per_shard)`` shards of equal size (±1 row), so
   no shard exceeds ``samples_per_shard`` and all are within ``samples_per_shard / S`` of it;
3. a domain's rows are therefore contiguous: they land in ``ceil(n / shard) + 1`` consecutive shards
   at most;
4. shards become tasks. A domain in more shards than its cap (``cap`` = ``per_host_concurrency``) has
   its shards dealt into ``cap`` lanes (shard ``first + j`` to lane ``j mod cap``), and a lane is one
   task that downloads its shards one after another. So every domain is in at most ``cap`` tasks,
   and a task whose domain D is in ``K_D`` tasks allows D ``floor(cap / K_D) ≥ 1`` concurrent
   requests and ``rps / K_D`` requests per second (:mod:`crawl.host_gate`): the sums over all
   tasks of the run are at most ``cap`` and ``rps``, however many tasks run at once.

Deterministic (a pure function of the curated rows, the shard size, the cap and the seed) and so
resumable: a rerun computes the same plan, and :class:`~crawl.download.DownloadStage` keeps the
written plan when its fingerprint matches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

#: Changing how plans are computed must change this, so an old plan is not reused.
PLAN_VERSION = 2


def domain_hash(domain: str, seed: int) -> int:
    """A 63-bit hash of ``domain`` under ``seed`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}\x00{domain}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class ShardSpec:
    """One shard of the plan: its rows (indices into the concatenated curated list, in that order)."""

    shard_id: int
    rows: np.ndarray


@dataclass
class TaskSpec:
    """One download task: shards downloaded one after another, and the domains it shares with other
    tasks (``domain -> K``, the number of tasks holding that domain; absent: 1)."""

    shards: list[int]
    shares: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    shards: list[ShardSpec]
    tasks: list[TaskSpec]


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def plan_shards(domains: list[str], size: int, seed: int, cap: int) -> Plan:
    """Cut rows whose registrable domains are ``domains`` (in curated order) into host-grouped
    shards, and the shards into tasks so that no domain is in more than ``cap`` tasks."""
    n = len(domains)
    if n == 0:
        return Plan([], [])
    uniq, inverse = np.unique(np.asarray(domains, dtype=object), return_inverse=True)
    hashes = np.fromiter((domain_hash(d, seed) for d in uniq), dtype=np.int64, count=len(uniq))
    # order: by domain hash, then by domain id (two domains with one hash stay apart), then curated order
    order = np.lexsort((np.arange(n), inverse, hashes[inverse]))
    count = -(-n // size)
    bounds = [i * n // count for i in range(count + 1)]
    shard_of_position = np.repeat(np.arange(count), np.diff(bounds))
    # the shards each domain spans: from the shard of its first row to that of its last
    dom_sorted = inverse[order]
    first = np.full(len(uniq), count, dtype=np.int64)
    last = np.full(len(uniq), -1, dtype=np.int64)
    np.minimum.at(first, dom_sorted, shard_of_position)
    np.maximum.at(last, dom_sorted, shard_of_position)
    shards = [ShardSpec(s, np.sort(order[bounds[s] : bounds[s + 1]])) for s in range(count)]

    # lanes: a domain in more than `cap` shards has shard first+j and first+j+cap in one task
    parent = list(range(count))
    for d in np.flatnonzero(last - first + 1 > cap):
        for s in range(int(first[d]), int(last[d]) + 1 - cap):
            parent[_find(parent, s + cap)] = _find(parent, s)
    roots = [_find(parent, s) for s in range(count)]
    members: dict[int, list[int]] = {}
    for s, r in enumerate(roots):
        members.setdefault(r, []).append(s)
    ordered = sorted(members.values(), key=lambda m: m[0])
    task_of_shard = np.empty(count, dtype=np.int64)
    for t, m in enumerate(ordered):
        task_of_shard[m] = t
    # K_D: the distinct tasks holding each domain (its shards first..last, lanes merged)
    k = np.array([len(set(task_of_shard[int(first[d]) : int(last[d]) + 1].tolist())) for d in range(len(uniq))])
    tasks = []
    for m in ordered:
        doms = np.unique(np.concatenate([dom_sorted[bounds[s] : bounds[s + 1]] for s in m]))
        tasks.append(TaskSpec(m, {str(uniq[d]): int(k[d]) for d in doms if k[d] > 1}))
    return Plan(shards, tasks)
