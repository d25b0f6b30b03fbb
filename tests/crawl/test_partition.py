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


def shares_of(plan) -> dict[int, dict[str, int]]:
    """shard id -> the shares of the task that downloads it."""
    return {s: t.shares for t in plan.tasks for s in t.shards}


def test_shards_are_equal_sized_and_each_domain_is_in_few_of_them():
    domains = zipf_domains(10_000, 300)
    size = 400
    plan = plan_shards(domains, size, seed=7, cap=8)
    specs = plan.shards
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
        # every task that holds the domain knows how many tasks hold it (1 = not written)
        for s in shards:
            assert shares_of(plan)[s].get(d, 1) == len(shards)
    top = counts.most_common(1)[0][0]
    assert len(in_shards[top]) > 1  # the hottest domain is spread, and told so


def test_sizes_within_ten_percent_for_awkward_counts():
    for n, size in [(1234, 100), (10_001, 1000), (999, 100), (5000, 333)]:
        specs = plan_shards(zipf_domains(n, 50, seed=n), size, seed=0, cap=8).shards
        assert len(specs) == -(-n // size)
        assert all(0.9 * size <= len(s.rows) <= size for s in specs), (n, size, [len(s.rows) for s in specs])


def test_plan_is_deterministic_and_depends_on_the_seed():
    domains = zipf_domains(3000, 100)
    a = plan_shards(domains, 250, seed=1, cap=4)
    b = plan_shards(list(domains), 250, seed=1, cap=4)
    assert [s.rows.tolist() for s in a.shards] == [s.rows.tolist() for s in b.shards]
    assert a.tasks == b.tasks
    c = plan_shards(domains, 250, seed=2, cap=4)
    assert [s.rows.tolist() for s in a.shards] != [s.rows.tolist() for s in c.shards]


def test_a_domain_in_more_shards_than_its_cap_is_dealt_into_cap_lanes():
    """One site with 10 shards' worth of URLs and cap 4: 4 tasks (lanes), each downloading its
    shards one after another, each allowed 1 of the 4 slots. No domain is ever in more than cap tasks."""
    domains = ["big.example.com"] * 1000 + zipf_domains(500, 40, seed=3)  # zipf names: siteN.example.com
    plan = plan_shards(domains, 100, seed=0, cap=4)
    assert len(plan.shards) == 15
    assert sorted(s for t in plan.tasks for s in t.shards) == list(range(15))  # each shard once
    holding = [
        t for t in plan.tasks if any(domains[i] == "big.example.com" for s in t.shards for i in plan.shards[s].rows)
    ]
    assert len(holding) == 4 and all(t.shares["big.example.com"] == 4 for t in holding)
    for t in holding:
        assert t.shards == sorted(t.shards) and len(t.shards) >= 2
    for cap in (1, 2, 3, 8):
        doms = zipf_domains(6000, 30, seed=cap)
        plan = plan_shards(doms, 100, seed=0, cap=cap)
        tasks_of: dict[str, set[int]] = {}
        for n, t in enumerate(plan.tasks):
            for s in t.shards:
                for d in {doms[i] for i in plan.shards[s].rows}:
                    tasks_of.setdefault(d, set()).add(n)
        assert max(len(v) for v in tasks_of.values()) <= cap  # no domain in more than cap tasks
        for d, ts in tasks_of.items():
            assert all(plan.tasks[n].shares.get(d, 1) == len(ts) for n in ts)


def test_subdomains_of_one_site_share_one_group():
    domains = [url_domain(f"http://img{i % 5}.photos.example.co.uk/{i}.jpg") for i in range(50)]
    domains += [url_domain(f"http://other{i}.example.org/x.jpg") for i in range(150)]
    specs = plan_shards(domains, 50, seed=0, cap=8).shards
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
    # all 30 rows share one registrable domain (example.com): with cap 1, one task does all shards
    lanes = DownloadStage(
        make_config("download.samples_per_shard=10", "download.per_host_concurrency=1"), RunDir(str(run_dir))
    ).tasks()
    assert [(t.id, t.payload["shards"]) for t in lanes] == [("00000", [0, 1, 2])]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "cap", "tasks"),
    [
        # 8 shards, cap 8: 8 tasks at once, each allowed 1 slot
        (96, 8, [([i], {"127.0.0.1": 8}) for i in range(8)]),
        # 8 shards, cap 2: more shards than the cap, dealt into 2 lanes (tasks) of 4 shards each
        (96, 2, [([0, 2, 4, 6], {"127.0.0.1": 2}), ([1, 3, 5, 7], {"127.0.0.1": 2})]),
    ],
)
def test_eight_concurrent_tasks_on_one_host_never_exceed_its_cap(
    shared_data, make_config, tmp_path, ray_local, rows, cap, tasks
):
    """Shard tasks run at once on Ray (a quarter CPU each), every URL on one host. Before the plan,
    the cap held per task, so the host could see 8 x the cap; now the run as a whole holds it."""
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:2]
    server = ImageServer(photos)
    try:
        urls = [{"uid": f"u{i:03d}", "url": server.url(f"/busy/{photos[i % 2].name}?{i}")} for i in range(rows)]
        run_dir = tmp_path / "run"
        write_curated(run_dir, urls, parts=2)
        config = make_config(
            "download.allow_addresses=[127.0.0.1/32]",
            "download.samples_per_shard=12",
            "download.thread_count=8",
            f"download.per_host_concurrency={cap}",
            "download.per_host_rps=0",
            "download.image_size=32",
            "ray.cpus_per_task=0.25",
        )
        from crawl.download import DownloadStage

        result = run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    finally:
        server.close()
    assert result.tasks_total == len(tasks) and result.stats.counts["success"] == rows
    # counted by the server, from request to response: never more than the cap ...
    assert server.max_in_flight["busy"] <= cap
    # ... while the tasks did overlap (else this would test nothing)
    assert server.max_in_flight["busy"] > 1
    plan = json.loads((run_dir / "download_plan" / "plan.json").read_text())
    assert [(t["shards"], t["shares"]) for t in plan["tasks"]] == tasks
    run = RunDir(str(run_dir))
    shard_uids = [u for p in run.glob("shards/*.parquet") for u in run.read_parquet(p)["uid"].to_pylist()]
    assert sorted(shard_uids) == [u["uid"] for u in urls] and len(run.glob("shards/*.tar")) == 8
