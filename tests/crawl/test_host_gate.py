"""Per-host politeness: slots per task, served in order, and 429 pauses that every thread and task honours."""

from __future__ import annotations

import threading
import time

import pytest
from http_fixtures import ImageServer, write_curated

from crawl.download_config import DownloadConfig
from crawl.fetch import SafeFetcher
from crawl.host_gate import HostGate, HostTable, PauseBoard
from pipeline.rundir import RunDir
from pipeline.runner import run_stage


@pytest.fixture(scope="module")
def server(shared_data):
    srv = ImageServer(sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:4])
    yield srv
    srv.close()


def test_table_caps_holds_until_release_pauses_and_forgets_idle_hosts():
    table = HostTable()
    a, _ = table.try_acquire("h", cap=2, now=0)
    b, _ = table.try_acquire("h", cap=2, now=1)
    assert a is not None and b is not None and a != b
    assert table.try_acquire("h", cap=2, now=2) == (None, None)  # full until a release
    c, _ = table.try_acquire("other", cap=2, now=2)
    assert c is not None  # hosts are independent
    # no lease expires while its holder has not released it (its socket is still open), however long
    assert table.try_acquire("h", cap=2, now=10_000) == (None, None)
    table.release("h", a, now=10_000)
    d, _ = table.try_acquire("h", cap=2, now=10_000)
    assert d is not None
    table.pause("h", 5, now=10_000)
    table.pause("h", 1, now=10_000)  # a shorter pause does not cut the longer one
    table.release("h", b, now=10_000)
    assert table.try_acquire("h", cap=2, now=10_002) == (None, 3)
    e, _ = table.try_acquire("h", cap=2, now=10_005)
    assert e is not None
    for host, lease in (("h", d), ("h", e), ("other", c), ("h", 12345)):  # 12345: unknown, ignored
        table.release(host, lease, now=10_005)
    assert len(table) == 0  # idle hosts are forgotten (a crawl sees millions of them)


def test_table_spaces_starts():
    table = HostTable()
    a, _ = table.try_acquire("r", cap=8, now=0, interval=0.5)  # at most 2 starts per second
    assert a is not None
    assert table.try_acquire("r", cap=8, now=0.2, interval=0.5) == (None, 0.5 - 0.2)
    b, _ = table.try_acquire("r", cap=8, now=0.5, interval=0.5)
    assert b is not None


def test_gate_serves_a_host_in_order_and_pauses_it():
    gate = HostGate()
    order: list[int] = []

    def worker(i: int) -> None:
        with gate.slot("h", 1):
            order.append(i)
            time.sleep(0.03)

    with gate.slot("h", 1):
        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=worker, args=(i,)))
            threads[-1].start()
            time.sleep(0.03)  # queue them in a known order
        with gate.slot("elsewhere", 1):  # another host is not held up by this one
            pass
        gate.pause("h", 0.5)
        start = time.monotonic()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]
    assert time.monotonic() - start >= 0.45  # the queue waited out the pause
    assert len(gate._table) == 0 and not gate._waiters


def test_pause_board_hands_out_new_pauses_as_seconds_left():
    board = PauseBoard()
    version, news = board.since(0)
    assert news == {}
    board.post("a", 0.3)
    board.post("b", 30)
    version, news = board.since(version)
    assert set(news) == {"a", "b"} and 29 < news["b"] <= 30
    board.post("b", 1)  # shorter than what is posted: nothing new to tell
    assert board.since(version) == (version, {})
    time.sleep(0.35)
    assert set(board.since(0)[1]) == {"b"}  # "a" ran out and is dropped


def test_429_pauses_the_host_for_every_thread(server):
    names = server.names
    cfg = DownloadConfig(allow_addresses=["127.0.0.1/32"], per_host_concurrency=2, timeout=10)
    results = []
    with SafeFetcher(cfg) as fetcher:

        def one(i: int) -> None:
            url = server.url(f"/throttle-host/t1/{names[i % len(names)]}?{i}")
            results.append(fetcher.download_image_with_retry((i, url)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
    assert [err for _, _, err in results] == [None] * 8  # the throttled one was retried and got it
    assert fetcher.counters["throttled_waits"] == 1
    t429 = server.throttled_at
    arrivals = [t for path, _, t in server.requests if path.startswith("/throttle-host/t1/")]
    # requests that held a slot before the 429 may still arrive just after it; after that, the host
    # is paused for Retry-After (1 s) for every thread, not only for the one that was told
    during_pause = [round(t - t429, 3) for t in arrivals if t429 + 0.1 < t < t429 + 0.95]
    assert during_pause == []
    assert any(t >= t429 + 0.95 for t in arrivals)


def test_429_seen_by_one_shard_task_pauses_the_others(server, make_config, tmp_path, ray_local):
    """Two shard tasks on Ray fetch from one host; one is told 429 (Retry-After 3 s): both hold off."""
    per_shard, poll = 24, 0.5
    server.retry_after = 3
    try:
        rows = [
            {"uid": f"u{i:03d}", "url": server.url(f"/throttle-host/t2/{server.names[i % 4]}?i={i}")}
            for i in range(2 * per_shard)
        ]
        run_dir = tmp_path / "run"
        write_curated(run_dir, rows, parts=2)
        config = make_config(
            "download.allow_addresses=[127.0.0.1/32]",
            f"download.samples_per_shard={per_shard}",
            "download.thread_count=2",
            f"download.pause_poll_seconds={poll}",
            "download.image_size=32",
        )
        from crawl.download import DownloadStage

        before = len(server.requests)
        result = run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    finally:
        server.retry_after = 1
    assert result.stats.counts["success"] == len(rows)
    t429 = server.throttled_at
    by_shard: dict[int, list[float]] = {0: [], 1: []}
    for path, _, t in server.requests[before:]:
        by_shard[int(path.rsplit("i=", 1)[1]) // per_shard].append(t - t429)
    # both tasks were fetching when the 429 came (else nothing here is tested) …
    assert all(any(t < poll for t in times) for times in by_shard.values()), by_shard
    # … and after one poll, neither sent a request until the 3 s were over
    held = {s: [round(t, 2) for t in times if poll + 0.3 < t < 2.9] for s, times in by_shard.items()}
    assert held == {0: [], 1: []}
    assert all(any(t >= 2.9 for t in times) for times in by_shard.values())
