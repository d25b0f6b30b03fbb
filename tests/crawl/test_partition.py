"""The download plan: the curated list cut into shards by registrable domain, so the per-host cap and
rate hold across every task of a run."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from http_fixtures import ImageServer, write_curated

from crawl.domains import registrable_domain, url_domain
from crawl.partition import plan_shards
from pipeline.rundir import RunDir
from pipeline.runner import run_stage


def zipf_domains(n: int, hosts: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, hosts + 1)
    picks = rng.choice(hosts, size=n, p=weights / weights.sum())
    return [f"site{h}.example.com" for h in picks]


def test_registrable_domains():
    assert registrable_domain("i.pinimg.com") == registrable_domain("s.pinimg.com") == "pinimg.com"
    assert registrable_domain("a.b.Example.CO.UK.") == "example.co.uk"
    assert registrable_domain("foo.blogspot.com") != registrable_domain("bar.blogspot.com")
    assert registrable_domain("127.0.0.1") == "127.0.0.1" and registrable_domain("localhost") == "localhost"
    assert url_domain("http://[::1]:8080/x") == "::1"
    assert url_domain("https://img.cdn.example.org/a.jpg") == "example.org"
    assert url_domain("not a url") == ""


def test_shards_are_equal_sized_and_each_domain_is_in_few_of_them():
    domains = zipf_domains(10_000, 300)
    size = 400
    specs = plan_shards(domains, size, seed=7)
    assert len(specs) == 25
    sizes = [len(s.rows) for s in specs]
    assert all(0.9 * size <= n <= size for n in sizes) and sum(sizes) == len(domains)
    assert sorted(np.concatenate([s.rows for s in specs]).tolist()) == list(range(len(domains)))
    counts = Counter(domains)
    in_shards: dict[str, list[int]] = {}
    for spec in specs:
        for d in {domains[i] for i in spec.rows}:
            in_shards.setdefault(d, []).append(spec.shard_id)
    for d, shards in in_shards.items():
        # contiguous, and no more shards than its rows need plus one straddle
        assert shards == list(range(shards[0], shards[0] + len(shards)))
        assert len(shards) <= -(-counts[d] // size) + 1, (d, counts[d], shards)
        # every shard that holds the domain knows how many there are (1 = not written)
        for s in shards:
            assert specs[s].shares.get(d, 1) == len(shards)
    top = counts.most_common(1)[0][0]
    assert len(in_shards[top]) > 1  # the hottest domain is spread, and told so


def test_sizes_within_ten_percent_for_awkward_counts():
    for n, size in [(1234, 100), (10_001, 1000), (999, 100), (5000, 333)]:
        specs = plan_shards(zipf_domains(n, 50, seed=n), size, seed=0)
        assert len(specs) == -(-n // size)
        assert all(0.9 * size <= len(s.rows) <= size for s in specs), (n, size, [len(s.rows) for s in specs])


def test_plan_is_deterministic_and_depends_on_the_seed():
    domains = zipf_domains(3000, 100)
    a = plan_shards(domains, 250, seed=1)
    b = plan_shards(list(domains), 250, seed=1)
    assert [s.rows.tolist() for s in a] == [s.rows.tolist() for s in b]
    assert [s.shares for s in a] == [s.shares for s in b]
    c = plan_shards(domains, 250, seed=2)
    assert [s.rows.tolist() for s in a] != [s.rows.tolist() for s in c]


def test_subdomains_of_one_site_share_one_group():
    domains = [url_domain(f"http://img{i % 5}.photos.example.co.uk/{i}.jpg") for i in range(50)]
    domains += [url_domain(f"http://other{i}.example.org/x.jpg") for i in range(150)]
    specs = plan_shards(domains, 50, seed=0)
    holding = [s.shard_id for s in specs if any(domains[i] == "example.co.uk" for i in s.rows)]
    assert len(holding) <= 2  # 50 rows of one site: one shard, or two where it straddles a cut


def test_stage_writes_the_plan_once_and_reuses_it(make_config, tmp_path):
    from crawl.download import PLAN_INDEX, DownloadStage

    run_dir = tmp_path / "run"
    rows = [{"uid": f"u{i:03d}", "url": f"http://h{i % 3}.example.com/{i}.jpg"} for i in range(30)]
    write_curated(run_dir, rows, parts=3)
    stage = DownloadStage(make_config("download.samples_per_shard=10"), RunDir(str(run_dir)))
    tasks = stage.tasks()
    assert [t.id for t in tasks] == ["00000", "00001", "00002"]
    index = run_dir / PLAN_INDEX
    before = index.stat().st_mtime_ns
    again = DownloadStage(make_config("download.samples_per_shard=10"), RunDir(str(run_dir))).tasks()
    assert again == tasks and index.stat().st_mtime_ns == before  # same inputs: the plan is reused
    uids = [u for t in tasks for u in RunDir(str(run_dir)).read_parquet(f"download_plan/{t.id}.parquet")["uid"].to_pylist()]
    assert sorted(uids) == [r["uid"] for r in rows]  # every curated row in exactly one shard
    changed = DownloadStage(make_config("download.samples_per_shard=15"), RunDir(str(run_dir))).tasks()
    assert len(changed) == 2 and json.loads(index.read_text())["fingerprint"]["samples_per_shard"] == 15


@pytest.mark.slow
def test_eight_concurrent_tasks_on_one_host_never_exceed_its_cap(shared_data, make_config, tmp_path, ray_local):
    """8 shard tasks run at once on Ray (a quarter CPU each), every URL on one host. Before the plan,
    the cap held per task, so the host could see 8 x the cap; now each task gets 1/8 of it."""
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:2]
    server = ImageServer(photos)
    try:
        rows = [{"uid": f"u{i:03d}", "url": server.url(f"/busy/{photos[i % 2].name}?{i}")} for i in range(96)]
        run_dir = tmp_path / "run"
        write_curated(run_dir, rows, parts=2)
        config = make_config(
            "download.allow_addresses=[127.0.0.1/32]",
            "download.samples_per_shard=12",
            "download.thread_count=8",
            "download.per_host_concurrency=8",
            "download.per_host_rps=0",
            "download.image_size=32",
            "ray.cpus_per_task=0.25",
        )
        from crawl.download import DownloadStage

        result = run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    finally:
        server.close()
    assert result.tasks_total == 8 and result.stats.counts["success"] == 96
    # counted by the server, from request to response: never more than the cap ...
    assert server.max_in_flight["busy"] <= 8
    # ... while the tasks did overlap (else this would test nothing)
    assert server.max_in_flight["busy"] > 1
    plan = json.loads((run_dir / "download_plan" / "plan.json").read_text())
    assert [s["shares"] for s in plan["shards"]] == [{"127.0.0.1": 8}] * 8
