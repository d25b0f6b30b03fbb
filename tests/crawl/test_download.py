"""The download stage against a real loopback HTTP server: every failure mode ends as one row with a reason."""

from __future__ import annotations

import io
import json
import tarfile
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_fixtures import ImageServer, big_jpeg, write_curated

from crawl.download_config import DownloadConfig
from crawl.fetch import FetchError, SafeFetcher
from crawl.safety import AddressPolicy
from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from pipeline.runner import run_stage

CONTACT = "https://example.org/webclip-crawler"


@pytest.fixture(scope="module")
def photos(shared_data):
    return sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def servers(photos, tmp_path_factory):
    canary = ImageServer(photos, host="127.0.0.2")
    main = ImageServer(
        photos,
        big=big_jpeg(tmp_path_factory.mktemp("big") / "big.jpg"),
        redirect_target=canary.url("/img/x.jpg"),
    )
    yield main, canary
    main.close()
    canary.close()


def matrix(main: ImageServer, canary: ImageServer, photos) -> list[tuple[str, str, str | None]]:
    """(url, expected status, expected reason) for every case the issue lists."""
    names = [p.name for p in photos]
    ok, dl = "success", "failed_to_download"
    return [
        *[(main.url(f"/img/{n}"), ok, None) for n in names[:4]],
        (main.url(f"/redirect/{names[4]}"), ok, None),
        (main.url(f"/noai-otherbot/{names[5]}"), ok, None),
        (main.url(f"/throttle-once/{names[0]}"), ok, None),
        (main.url(f"/slow/0.5/{names[1]}"), ok, None),
        (main.url("/status/404"), dl, "http_404"),
        (main.url("/status/500"), dl, "http_500"),
        (main.url("/always-429/a"), dl, "http_429"),
        (main.url("/always-503/a"), dl, "http_503"),
        (main.url(f"/slow/6/{names[2]}"), dl, "timeout"),
        (main.url(f"/drip/{names[3]}"), dl, "timeout"),
        (main.url("/text/page"), dl, "not_an_image"),
        (main.url(f"/truncated/{names[0]}"), dl, "truncated_image"),
        (main.url("/big/100mp.jpg"), dl, "decompression_bomb"),
        (main.url("/loop/0"), dl, "too_many_redirects"),
        (main.url("/redirect-away/x"), dl, "refused_address"),
        (canary.url("/img/direct.jpg"), dl, "refused_address"),
        (main.url(f"/noai/{names[1]}"), dl, "robots_noai"),
        ("file:///etc/passwd", dl, "unsupported_scheme"),
        ("ftp://127.0.0.1/x.jpg", dl, "unsupported_scheme"),
        ("data:image/jpeg;base64,/9j/4AAQSkZJRg==", dl, "unsupported_scheme"),
        ("http://10.0.0.1/x.jpg", dl, "refused_address"),
        ("http://169.254.169.254/latest/meta-data/", dl, "refused_address"),
        (f"http://[::1]:{main.port}/img/x.jpg", dl, "refused_address"),
        ("http://:80/nohost.jpg", dl, "bad_url"),
    ]


SAFE = [
    "download.allow_addresses=[127.0.0.1/32]",
    f"download.contact_url={CONTACT}",
    "download.timeout=2",
    "download.throttle_retries=1",
    "download.backoff_cap_seconds=2",
    "download.max_redirects=3",
    "download.thread_count=16",
    "download.image_size=64",
    "download.samples_per_shard=12",
]


def read_shards(run: RunDir) -> pa.Table:
    return pa.concat_tables([run.read_parquet(p) for p in run.glob("shards/*.parquet")])


def test_failure_matrix_each_url_one_row_with_reason(servers, photos, make_config, tmp_path, ray_local):
    main, canary = servers
    cases = matrix(main, canary, photos)
    run_dir = tmp_path / "run"
    write_curated(run_dir, [{"uid": f"u{i:03d}", "url": url} for i, (url, _, _) in enumerate(cases)], parts=2)
    config = make_config(*SAFE)
    from crawl.download import DownloadStage

    result = run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    run = RunDir(str(run_dir))
    table = read_shards(run)

    # every curated uid exactly once, with the expected status and reason
    uids = table["uid"].to_pylist()
    assert sorted(uids) == [f"u{i:03d}" for i in range(len(cases))]
    got = {r["uid"]: (r["status"], r["reason"], r["error_message"]) for r in table.to_pylist()}
    for i, (url, status, reason) in enumerate(cases):
        assert got[f"u{i:03d}"][:2] == (status, reason), (url, got[f"u{i:03d}"])
    # literal private address: refused by the address check, before any connection
    private = got[f"u{[c[0] for c in cases].index('http://10.0.0.1/x.jpg'):03d}"][2]
    assert "resolves to 10.0.0.1 (private)" in private

    # the canary on a refused address saw nothing, directly or through a redirect
    assert canary.requests == []
    # every request to the allowed server named webclip and the contact URL
    assert main.requests and all("webclip" in ua and CONTACT in ua for _, ua, _ in main.requests)
    # 429 + Retry-After: 1 waited before the second try; always-429 tried 1 + throttle_retries times
    times = [t for p, _, t in main.requests if p.startswith("/throttle-once/")]
    assert len(times) == 2 and times[1] - times[0] >= 0.9
    assert main.hits["/always-429/a"] == 2
    # redirect loop followed max_redirects hops, not forever
    assert sum(n for p, n in main.hits.items() if p.startswith("/loop/")) == 4

    # shards: NNNNN.tar with jpg/json/txt per success; uid and entry_ids in the json and the parquet
    # 28 rows, at most 12 per shard: the plan cuts 3 shards of 9-10 rows (grouped by host)
    assert run.glob("shards/*.tar") == [f"shards/{i:05d}.tar" for i in range(3)]
    assert len(run.glob("shards/*_stats.json")) == 3
    n_ok = sum(1 for _, s, _ in cases if s == "success")
    members: dict[str, set[str]] = {}
    for tar_rel in run.glob("shards/*.tar"):
        with tarfile.open(run.local_path(tar_rel)) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, set()).add(ext)
                if ext == "json":
                    meta = json.loads(tf.extractfile(m).read())
                    assert meta["uid"] in got and got[meta["uid"]][0] == "success"
                    assert isinstance(meta["entry_ids"], list) and meta["entry_ids"]
                if ext == "jpg":
                    from PIL import Image

                    assert Image.open(io.BytesIO(tf.extractfile(m).read())).size == (64, 64)
    assert len(members) == n_ok and all(v == {"jpg", "json", "txt"} for v in members.values())
    assert table.schema.field("entry_ids").type == pa.list_(pa.int32())
    assert {"key", "url", "caption", "status", "error_message", "width", "height", "reason"} <= set(
        table.column_names
    )

    # stats reconcile: curated = downloaded + failed (by reason)
    stats = json.loads((run_dir / "stats" / "download.json").read_text())
    assert stats["counts"]["in"] == len(cases)
    assert stats["counts"]["success"] == n_ok
    expected_drops: dict[str, int] = {}
    for _, _s, r in cases:
        if r:
            expected_drops[r] = expected_drops.get(r, 0) + 1
    assert stats["dropped"] == dict(sorted(expected_drops.items()))
    assert stats["counts"]["bytes"] > 0 and result.stats.counts["success"] == n_ok
    assert not list((run_dir / "shards").glob(".tmp-*"))


def test_per_host_cap_limits_concurrent_requests(servers, photos):
    main, _ = servers
    cfg = DownloadConfig(allow_addresses=["127.0.0.1/32"], per_host_concurrency=2, timeout=10)
    fetcher = SafeFetcher(cfg)
    results = []

    def one(i: int) -> None:
        results.append(fetcher.download_image_with_retry((i, main.url(f"/busy/{photos[0].name}?{i}"))))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(err is None for _, _, err in results) and len(results) == 8
    assert main.max_in_flight["busy"] == 2


def test_address_policy():
    policy = AddressPolicy(["127.0.0.1/32"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("127.0.0.2") == "loopback"
    assert policy.refusal("10.1.2.3") == "private"
    assert policy.refusal("192.168.0.1") == "private"
    assert policy.refusal("169.254.169.254") == "link_local"
    assert policy.refusal("224.0.0.1") == "multicast"
    assert policy.refusal("0.0.0.0") == "unspecified"
    assert policy.refusal("::ffff:10.0.0.1") == "private"  # IPv4-mapped IPv6 is its IPv4 address
    assert policy.refusal("fe80::1") == "link_local"
    assert policy.refusal("100.64.0.1") is not None  # carrier-grade NAT space is not global
    assert policy.refusal("8.8.8.8") is None
    assert AddressPolicy().refusal("127.0.0.1") == "loopback"  # nothing allowed by default


def test_check_image_refuses_bombs_before_decoding(tmp_path):
    fetcher = SafeFetcher(DownloadConfig(max_image_pixels=1000))
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buf, "JPEG")
    with pytest.raises(FetchError) as err:
        fetcher.check_image(buf.getvalue())
    assert err.value.reason == "decompression_bomb"
    with pytest.raises(FetchError) as err:
        fetcher.check_image(b"GIF89a-not-really")
    assert err.value.reason == "not_an_image"


def test_config_errors_name_the_key(make_config):
    with pytest.raises(ConfigError, match=r"download\.allow_addresses"):
        make_config("download.allow_addresses=[not-an-ip]")
    with pytest.raises(ConfigError, match=r"download\.contact_url"):
        make_config("download.contact_url=mailto:me")
    with pytest.raises(ConfigError, match=r"download\.samples_per_shard"):
        make_config("download.samples_per_shard=0")


def test_missing_curated_list_is_a_config_error(make_config, tmp_path):
    from crawl.download import DownloadStage

    config = make_config()
    with pytest.raises(ConfigError, match="run the balance stage first"):
        DownloadStage(config, RunDir(str(tmp_path / "run"))).check()
    write_curated(tmp_path / "run", [])
    bad = tmp_path / "run" / "curated" / "part-00001.parquet"
    pq.write_table(pa.table({"uid": ["a"], "link": ["http://x"]}), bad)
    with pytest.raises(ConfigError, match=r"part-00001\.parquet: missing column"):
        DownloadStage(config, RunDir(str(tmp_path / "run"))).check()


def test_https_certificates_are_verified(tmp_path):
    """A TLS server with a self-signed certificate: the pinned HTTPS connection verifies it and refuses."""
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    tls = ImageServer([], host="127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.httpd.socket = ctx.wrap_socket(tls.httpd.socket, server_side=True)
    try:
        fetcher = SafeFetcher(DownloadConfig(allow_addresses=["127.0.0.1/32"], timeout=5))
        _, stream, err = fetcher.download_image_with_retry((0, f"https://127.0.0.1:{tls.port}/img/x.jpg"))
        assert stream is None and err.startswith("tls_error") and "CERTIFICATE_VERIFY_FAILED" in err
        assert tls.requests == []  # the handshake failed before any request was sent
    finally:
        tls.close()


def test_memory_run_downloads_in_the_driver(servers, photos, make_config):
    """A memory:// run (tasks run inline) writes the same shard layout through fsspec."""
    import fsspec

    main, _ = servers
    from crawl.download import DownloadStage

    url = "memory://dl-inline-test/run"
    fs = fsspec.filesystem("memory")
    schema = pa.schema(
        [
            ("uid", pa.string()),
            ("url", pa.string()),
            ("text", pa.string()),
            ("entry_ids", pa.list_(pa.int32())),
        ]
    )
    rows = [
        {"uid": f"m{i}", "url": main.url(f"/img/{photos[i].name}?m{i}"), "text": "t", "entry_ids": [i]}
        for i in range(3)
    ]
    rows.append({"uid": "m-bad", "url": "ftp://x/y.jpg", "text": "t", "entry_ids": [9]})
    with fs.open("/dl-inline-test/run/curated/part-00000.parquet", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), fh)
    config = make_config("download.allow_addresses=[127.0.0.1/32]", "download.image_size=32", run=url)
    result = run_stage(DownloadStage(config, RunDir(url)), progress=False)
    run = RunDir(url)
    assert run.glob("shards/*") == ["shards/00000.parquet", "shards/00000.tar", "shards/00000_stats.json"]
    table = run.read_parquet("shards/00000.parquet")
    assert sorted(table["uid"].to_pylist()) == ["m-bad", "m0", "m1", "m2"]
    assert result.stats.counts["success"] == 3 and dict(result.stats.dropped) == {"unsupported_scheme": 1}
    fs.rm("/dl-inline-test", recursive=True)
