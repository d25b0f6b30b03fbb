"""The download plan: the curated list cut into shards by host, so politeness holds across a cluster.

A per-task cap alone lets a host that appears in N concurrently running shard tasks see N × cap
connections. Polite crawlers (Heritrix, Nutch, StormCrawler) partition the URL list by host instead;
so does this plan:

1. every row's registrable domain (:func:`crawl.domains.registrable_domain`) is hashed with the run's
   seed, and the rows are ordered by that hash (ties: curated order, i.e. part name then row);
2. the ordered rows are cut into ``S = ceil(N / samples_per_shard)`` shards of equal size (±1 row), so
   no shard exceeds ``samples_per_shard`` and all are within ``samples_per_shard / S`` of it;
3. a domain's rows are therefore contiguous: they land in ``K ≤ ceil(n / shard) + 1`` consecutive
   shards, and K is written into each of those shards' plan. Each task then allows the domain
   ``per_host_concurrency / K`` concurrent requests and ``per_host_rps / K`` requests per second
   (:mod:`crawl.host_gate`), so the sum over every task of the run is at most the configured cap
   and rate, however many tasks run at once.

Deterministic (a pure function of the curated rows, the shard size and the seed) and so resumable:
a rerun computes the same plan, and :class:`~crawl.download.DownloadStage` keeps the written plan
when its fingerprint matches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

#: Changing how plans are computed must change this, so an old plan is not reused.
PLAN_VERSION = 1


def domain_hash(domain: str, seed: int) -> int:
    """A 63-bit hash of ``domain`` under ``seed`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}\x00{domain}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class ShardSpec:
    """One shard of the plan: its rows (indices into the concatenated curated list) and the domains
    it shares with other shards (``domain -> K``, the number of shards that domain spans)."""

    shard_id: int
    rows: np.ndarray
    shares: dict[str, int] = field(default_factory=dict)


def plan_shards(domains: list[str], size: int, seed: int) -> list[ShardSpec]:
    """Cut rows whose registrable domains are ``domains`` (in curated order) into host-grouped shards."""
    n = len(domains)
    if n == 0:
        return []
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
    span = last - first + 1
    specs = []
    for s in range(count):
        rows = order[bounds[s] : bounds[s + 1]]
        doms = np.unique(inverse[rows])
        shares = {str(uniq[d]): int(span[d]) for d in doms if span[d] > 1}
        specs.append(ShardSpec(s, np.sort(rows), shares))
    return specs
