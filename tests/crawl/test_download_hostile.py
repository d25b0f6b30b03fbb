"""The failures of issue 19, one test each, against a real HTTP server on loopback.

Each of these failed on the code before the issue (noted per test); none asserts on timing: a slow
server is slow by construction (it sleeps), and the assertions are about what happened (a reason, a
count of bytes or connections, pixels).
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from http_fixtures import ImageServer, write_curated
from PIL import Image

from crawl.download_config import DownloadConfig
from crawl.fetch import SafeFetcher
from crawl.safety import AddressPolicy
from pipeline.rundir import RunDir
from pipeline.runner import run_stage

LOOP = ["127.0.0.1/32"]


@pytest.fixture(scope="module")
def photos(shared_data):
    return sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:4]


@pytest.fixture
def server(photos):
    """A fresh server per test: its connection counters start at zero."""
    srv = ImageServer(photos)
    yield srv
    srv.close()


def fetch(cfg: DownloadConfig, url: str, **kwargs) -> tuple[bytes | None, str | None]:
    with SafeFetcher(cfg, **kwargs) as fetcher:
        _, stream, err = fetcher.download_image_with_retry((0, url))
    return (stream.getvalue() if stream else None), err


def run_threads(fn, args: list) -> None:
    threads = [threading.Thread(target=fn, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---------------------------------------------------------------- 1. one deadline per request
def test_1_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_deadline(server):
    """Before: http.client read the header lines with a per-read timeout, renewed by every byte, so
    the 40 s drip was read to its end (then failed on the missing body)."""
    data, err = fetch(DownloadConfig(allow_addresses=LOOP, timeout=1), server.url("/drip-headers/h1"))
    assert data is None and err.startswith("timeout:"), err
    # the client hung up long before the server got its 400+ header bytes out
    assert server.header_bytes_sent["h1"] < 400


def test_1_the_deadline_covers_every_redirect_hop(server, photos):
    """Before: each hop got a fresh timeout, so 4 hops of 0.6 s passed a 1.5 s limit."""
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=1.5, max_redirects=5)
    data, err = fetch(cfg, server.url(f"/slow-redirect/3/{photos[0].name}"))
    assert data is None and err.startswith("timeout:"), err
    # one hop alone is within the limit: it is the sum over hops that is refused
    data, err = fetch(cfg, server.url(f"/slow-redirect/0/{photos[0].name}"))
    assert err is None and data


def test_1_the_deadline_covers_the_name_lookup(server, photos):
    """A resolver that never answers (the system one has no timeout of its own)."""
    stuck = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        stuck.wait(30)
        return ["127.0.0.1"]

    try:
        cfg = DownloadConfig(allow_addresses=LOOP, timeout=0.5)
        data, err = fetch(cfg, f"http://images.example:{server.port}/img/{photos[0].name}", resolver=resolver)
    finally:
        stuck.set()
    assert data is None and err.startswith("timeout: DNS lookup"), err
    assert server.requests == []


def test_1_the_deadline_holds_over_tls(photos, tmp_path):
    """The TLS socket carries the same deadline: an image arrives over HTTPS, a drip is cut off."""
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ImageServer(photos)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.httpd.socket = ctx.wrap_socket(tls.httpd.socket, server_side=True)
    try:
        with SafeFetcher(DownloadConfig(allow_addresses=LOOP, timeout=1)) as fetcher:
            fetcher._tls.load_verify_locations(cafile=str(cert))  # trust this test's own certificate
            _, stream, err = fetcher.download_image_with_retry((0, f"https://127.0.0.1:{tls.port}/img/{photos[0].name}"))
            assert err is None and stream.getvalue() == photos[0].read_bytes()
            _, stream, err = fetcher.download_image_with_retry((1, f"https://127.0.0.1:{tls.port}/drip-headers/t"))
        assert stream is None and err.startswith("timeout:"), err
        assert tls.header_bytes_sent["t"] < 400
    finally:
        tls.close()


# ---------------------------------------------------------------- 2. the per-host cap
def test_2_a_slot_is_held_until_its_socket_closes(server, photos):
    """Before: the slot was a lease of 2 x timeout + 5 s; the drip outlived it and a second request
    to the host went out while the first socket was still open (2 connections under a cap of 1)."""
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=1, per_host_concurrency=1)
    errors: dict[str, str | None] = {}
    with SafeFetcher(cfg) as fetcher:

        def one(path: str) -> None:
            errors[path] = fetcher.download_image_with_retry((0, server.url(path)))[2]

        drip = threading.Thread(target=one, args=("/drip-headers/h2",))
        drip.start()
        for _ in range(500):  # the drip holds the one slot before the others queue (at most 5 s)
            if server.header_bytes_sent["h2"]:
                break
            time.sleep(0.01)
        run_threads(one, [f"/img/{photos[0].name}?{i}" for i in range(3)])
        drip.join()
    assert errors.pop("/drip-headers/h2").startswith("timeout:")
    assert set(errors.values()) == {None}
    # no other request arrived while the drip was still going: each came after its last byte (a byte
    # goes out every 0.1 s, so "after the hang-up" cannot be mistaken for "during the drip")
    final = server.header_bytes_sent["h2"]
    assert final < 400
    seen = [(path, at["h2"]) for path, at in server.drip_seen if path.startswith("/img/")]
    assert len(seen) == 3 and all(at >= final - 1 for _, at in seen), (final, seen)


def test_2_slots_are_keyed_on_the_address_not_the_spelling(server, photos):
    """Four spellings of one server, 4 URLs each, cap 4. Before: each spelling had its own 4 slots."""
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=10, per_host_concurrency=4)
    spellings = ["127.0.0.1", "127.1", "2130706433", "[::ffff:127.0.0.1]"]
    urls = [f"http://{h}:{server.port}/busy/{photos[0].name}?{h}-{i}" for h in spellings for i in range(4)]
    errors = []
    with SafeFetcher(cfg) as fetcher:
        run_threads(lambda u: errors.append(fetcher.download_image_with_retry((0, u))[2]), urls)
    assert errors == [None] * 16
    assert server.max_in_flight["busy"] <= 4  # counted from request to response, by the server


# ---------------------------------------------------------------- 3. Content-Length
def test_3_a_body_shorter_than_its_content_length_is_refused(server, photos):
    """Half a JPEG plus an end-of-image marker, Content-Length claiming the whole. Before: a success."""
    data, err = fetch(DownloadConfig(allow_addresses=LOOP, timeout=5), server.url(f"/short/{photos[1].name}"))
    assert data is None and err.startswith("short_body:"), err
    full = photos[1].stat().st_size
    assert f"of Content-Length {full} bytes" in err


# ---------------------------------------------------------------- 4. JPEG completeness
def _no_scan(jpeg: bytes) -> bytes:
    """The JPEG's tables and frame header, then EOI: no start-of-scan, no image data."""
    sos = jpeg.index(b"\xff\xda")
    return jpeg[:sos] + b"\xff\xd9"


def test_4_jpeg_completeness_is_judged_by_its_markers(server, photos):
    """Before: 8 KiB after EOI (a motion photo's video) was refused as truncated, and a JPEG with no
    scan data was accepted (it ends in EOI)."""
    jpeg = photos[2].read_bytes()
    motion = jpeg + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 32  # 8 KiB+ after EOI
    server.extra["motion"] = (motion, "image/jpeg", [])
    server.extra["noscan"] = (_no_scan(jpeg), "image/jpeg", [])
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=5)
    data, err = fetch(cfg, server.url("/extra/motion"))
    assert err is None and data == motion
    data, err = fetch(cfg, server.url("/extra/noscan"))
    assert data is None and err.startswith("truncated_image:") and "no scan data" in err, err


def test_4_marker_walk_cases(photos):
    from crawl.jpeg import jpeg_problem

    jpeg = photos[0].read_bytes()
    assert jpeg_problem(jpeg) is None
    assert jpeg_problem(jpeg + b"\xff\xd9" * 3 + b"trailing") is None
    assert "scan data runs to the end" in jpeg_problem(jpeg[: len(jpeg) // 2])
    assert "runs past the end" in jpeg_problem(jpeg[:30])
    assert jpeg_problem(b"\x89PNG\r\n") == "no start-of-image marker"
    assert "no scan data" in jpeg_problem(_no_scan(jpeg))
    # a progressive JPEG (several scans with tables between) is walked to its EOI
    buf = io.BytesIO()
    Image.open(photos[0]).save(buf, "JPEG", progressive=True)
    assert buf.getvalue().count(b"\xff\xda") > 1 and jpeg_problem(buf.getvalue()) is None


# ---------------------------------------------------------------- 5. X-Robots-Tag
ROBOTS = [  # (header fields, refused for webclip?)
    (["none"], True),
    (["googlebot: noindex, webclip: noai"], True),
    (["noai, googlebot: noindex"], True),
    (["googlebot: noindex", "webclip: noimageai"], True),
    (["WebClip: NoIndex"], True),
    (["webclip: max-image-preview: none, noai"], True),
    (["*: noimageindex"], True),
    (["otherbot: noai, noimageai"], False),
    (["googlebot: none", "otherbot: noindex"], False),
    (["all"], False),
    (["max-image-preview: large, unavailable_after: Sunday, 01-Sep-2030 15:00:00 GMT"], False),
    (["nofollow, noarchive"], False),
]


def test_5_x_robots_tag_opt_outs_are_honoured(server, photos):
    """Before: img2dataset's parser read one agent prefix per field and did not know ``none``."""
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=5)
    body = photos[3].read_bytes()
    for i, (fields, refused) in enumerate(ROBOTS):
        server.extra[f"r{i}"] = (body, "image/jpeg", [("X-Robots-Tag", f) for f in fields])
        data, err = fetch(cfg, server.url(f"/extra/r{i}"))
        if refused:
            assert data is None and err.startswith("robots_noai:"), (fields, err)
        else:
            assert err is None, (fields, err)


def test_5_directive_grammar():
    from crawl import robots_tag

    d = robots_tag.directives_for
    assert d(["none"], "webclip") == {"noindex", "nofollow"}
    assert d(["googlebot: noindex, webclip: noai"], "webclip") == {"noai"}
    assert d(["googlebot: noindex, webclip: noai"], "googlebot") == {"noindex"}
    assert d(["noai, googlebot: noindex"], "webclip") == {"noai"}
    assert d(["a: noai", "noimageai"], "webclip") == {"noimageai"}  # each field starts addressed to all
    assert d(["webclip:", "noai"], "webclip") == {"noai"}
    assert d(["max-snippet: 20, max-image-preview: large"], "webclip") == {"max-snippet", "max-image-preview"}
    assert d(["unavailable_after: 25 Jun 2010 15:00:00 PST"], "webclip") == {"unavailable_after"}
    assert d(["Googlebot: NONE"], "googlebot") == {"noindex", "nofollow"}
    assert robots_tag.disallowed(["none"], "webclip", ["noai", "noindex"]) == {"noindex"}


# ---------------------------------------------------------------- 6. pixels
def _png16(value: int, mode: str) -> bytes:
    import cv2

    shape = {"L": (48, 64), "RGB": (48, 64, 3), "RGBA": (48, 64, 4)}[mode]
    arr = np.full(shape, value, np.uint16)
    if mode == "RGBA":
        arr[..., 3] = 65535
    return cv2.imencode(".png", arr)[1].tobytes()


def _rotated_jpeg() -> bytes:
    """80x40 pixels on disk (top half red), EXIF orientation 6: shown 40 wide, 80 tall."""
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 80, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_6_pixels_16_bit_and_exif_orientation(server, make_config, tmp_path, ray_local):
    """Before: every 16-bit PNG was stored all white (cv2 keeps 16 bits, the encoder saturates), and
    the EXIF orientation was ignored (a portrait photo stored lying down)."""
    server.extra["gray16"] = (_png16(32768, "L"), "image/png", [])
    server.extra["rgb16"] = (_png16(20000, "RGB"), "image/png", [])
    server.extra["rgba16"] = (_png16(45000, "RGBA"), "image/png", [])
    server.extra["rotated"] = (_rotated_jpeg(), "image/jpeg", [])
    names = ["gray16", "rgb16", "rgba16", "rotated"]
    run_dir = tmp_path / "run"
    write_curated(run_dir, [{"uid": n, "url": server.url(f"/extra/{n}")} for n in names])
    config = make_config(
        "download.allow_addresses=[127.0.0.1/32]", "download.image_size=32", "download.resize_mode=keep_ratio",
        "download.encode_format=png", "download.encode_quality=1",
    )
    from crawl.download import DownloadStage

    run_stage(DownloadStage(config, RunDir(str(run_dir))), progress=False)
    run = RunDir(str(run_dir))
    table = run.read_parquet("shards/00000.parquet").to_pylist()
    rows = {r["uid"]: r for r in table}
    assert {u: r["status"] for u, r in rows.items()} == dict.fromkeys(names, "success")
    import tarfile

    uid_of = {r["key"]: u for u, r in rows.items()}
    with tarfile.open(run.local_path("shards/00000.tar")) as tf:
        images = {
            uid_of[m.name[: -len(".png")]]: np.asarray(Image.open(tf.extractfile(m)).convert("RGB"))
            for m in tf.getmembers()
            if m.name.endswith(".png")
        }
    assert abs(images["gray16"].mean() - 128) < 3  # 32768 / 65535 of full scale, not 255
    assert abs(images["rgb16"].mean() - 20000 / 257) < 3
    assert abs(images["rgba16"].mean() - 45000 / 257) < 3
    # upright: 40 wide by 80 tall, and after a 90° clockwise turn the red half is on the right
    rot = rows["rotated"]
    assert (rot["original_width"], rot["original_height"]) == (40, 80)
    pic = images["rotated"]
    assert pic.shape[:2] == (64, 32)  # keep_ratio: the short side is 32
    assert pic[:, -4:, 0].mean() > 200 and pic[:, :4, 2].mean() > 200


def test_6_exif_orientation_can_be_turned_off():
    from crawl.pixels import NormalizingResizer, normalized

    jpeg = _rotated_jpeg()
    assert normalized(jpeg, exif_transpose=False) is None  # an 8-bit JPEG goes to the resizer untouched
    upright = Image.open(io.BytesIO(normalized(jpeg, exif_transpose=True)))
    assert upright.size == (40, 80)

    class Probe:
        def __call__(self, stream, bbox=None):
            return Image.open(stream).size

    assert NormalizingResizer(Probe(), exif_transpose=False)(io.BytesIO(jpeg)) == (80, 40)
    assert NormalizingResizer(Probe(), exif_transpose=True)(io.BytesIO(jpeg)) == (40, 80)


def test_6_other_modes_reach_the_resizer_as_8_bit():
    """16-bit TIFF, float TIFF and 16-bit grey+alpha PNG through img2dataset's own resizer: the stored
    pixels keep their brightness (before: 16 bits kept or saturated, floats black)."""
    import cv2
    from img2dataset.resizer import Resizer

    from crawl.pixels import NormalizingResizer

    def save(img: Image.Image, fmt: str) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()

    gray16 = np.full((40, 60), 30000, np.uint16)
    cases = {  # bytes -> expected mean of the stored 8-bit image
        cv2.imencode(".tiff", gray16)[1].tobytes(): 30000 / 257,
        save(Image.fromarray(np.full((40, 60), 0.5, np.float32)), "TIFF"): 127.5,
        cv2.imencode(".png", cv2.cvtColor(gray16, cv2.COLOR_GRAY2BGRA))[1].tobytes(): 30000 / 257,
        save(Image.new("CMYK", (60, 40), (0, 0, 0, 128)), "JPEG"): 127,  # 8-bit: passed through as is
    }
    resizer = NormalizingResizer(Resizer(32, "keep_ratio", False, encode_format="jpg"))
    for data, mean in cases.items():
        out, *_, err = resizer(io.BytesIO(data))
        assert err is None
        stored = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint8 and abs(stored.mean() - mean) < 3, (stored.dtype, stored.mean(), mean)


# ---------------------------------------------------------------- 7. address ranges and port 0
def test_7_every_special_purpose_range_is_refused():
    policy = AddressPolicy(LOOP)
    refused = {
        "fec0::1": "site_local",
        "2002:7f00:2::": "6to4 of 127.0.0.2 (loopback)",
        "2002:a00:1::5": "6to4 of 10.0.0.1 (private)",
        "2002:808:808::1": "6to4 of 8.8.8.8 (public)",  # 6to4 is refused whatever it embeds
        "2001:0:4136:e378:8000:63bf:80ff:fffe": "teredo of 127.0.0.1 (loopback)",
        "64:ff9b::7f00:1": "nat64 of 127.0.0.1 (loopback)",
        "64:ff9b::a9fe:a9fe": "nat64 of 169.254.169.254 (link_local)",
        "64:ff9b:1::1": "nat64_local_use",
        "::ffff:192.168.1.1": "private",
        "::127.0.0.2": "ipv4_compatible",
        "100::1": "discard_only",
        "2001:db8::1": "documentation",
        "2001:2::1": "benchmarking",
        "2001:20::1": "orchid_v2",
        "3fff::1": "documentation",
        "5f00::1": "srv6_sids",
        "fd00::1": "unique_local",
        "ff02::1": "multicast",
        "4000::1": "reserved",
        "192.0.0.9": "ietf_protocol_assignment",
        "192.0.2.1": "documentation",
        "192.88.99.1": "6to4_relay_anycast",
        "198.18.0.1": "benchmarking",
        "198.51.100.1": "documentation",
        "203.0.113.1": "documentation",
        "100.64.0.1": "shared_address_space",
        "240.0.0.1": "reserved",
        "255.255.255.255": "broadcast",
        "0.1.2.3": "this_network",
        "192.31.196.1": "as112",
        "192.52.193.1": "amt",
    }
    assert {a: policy.refusal(a) for a in refused} == refused
    for public in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"):
        assert policy.refusal(public) is None, public


def test_7_port_zero_is_refused_not_turned_into_80(server, photos):
    data, err = fetch(DownloadConfig(allow_addresses=LOOP, timeout=2), f"http://127.0.0.1:0/img/{photos[0].name}")
    assert data is None and err.startswith("bad_url:") and "port 0" in err, err
    assert server.requests == []


def test_7_a_name_resolving_to_an_embedded_loopback_is_refused(server, photos):
    """The check runs on what the name resolves to, embedded IPv4 included."""
    cfg = DownloadConfig(allow_addresses=LOOP, timeout=2)

    def resolver(host: str, port: int) -> list[str]:
        return ["2002:7f00:1::"]

    _, err = fetch(cfg, f"http://sneaky.example:{server.port}/img/x.jpg", resolver=resolver)
    assert err.startswith("refused_address:") and "6to4 of 127.0.0.1" in err, err
    assert server.requests == []
