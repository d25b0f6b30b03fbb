"""Benchmark: webclip's download stage vs bare img2dataset on the same URLs, in the same run.

A loopback HTTP server (its own process) serves the real COCO photos from ``../shared/data`` on
``--hosts`` distinct loopback addresses (127.77.x.y, one listening socket each, so each is a host of
its own to both crawlers); the URL list draws its host from a Zipf distribution (``--zipf``: the
most popular host gets the most URLs, a long tail gets a few), not one host per URL. Both sides
download the same URL list with the same image size, resize mode, encoding, shard size, thread count
and number of processes:

* bare: ``img2dataset.download(..., distributor="multiprocessing")`` (urllib, no address checks);
* webclip: ``DownloadStage`` through ``pipeline.runner.run_stage`` on an embedded Ray with the
  same number of CPUs (img2dataset's reader/downloader/resizer/writer + the safe fetcher), with
  everything on: the host-partitioned plan, per-domain and per-address slots (``--cap``), the
  per-domain rate limit (``--rps``), one deadline per request, the JPEG marker walk, the
  X-Robots-Tag parser, the pixel normaliser (EXIF orientation on).

The server counts the most requests in flight at once per host; the table shows it for the most
popular host, for both sides (webclip's must not exceed ``--cap``).

A third side is webclip with ``dedup.hash_at_download=false``: the cost of hashing every original
for dedup in the fetch threads (issue 18) is webclip's rate with it against without it.
Prints images/s, images/s per core and peak memory (RSS summed over the process tree, sampled),
and the ratio webclip / bare (target ≥ 0.9). Ray's start-up is done before the clock starts; the
multiprocessing pool start-up is inside img2dataset's time (it is part of every img2dataset run).

    python benchmarks/download.py --n 3000 --hosts 200 --zipf 1.0 --processes 2 --threads 32 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "photos" / "coco_mini"


def host_address(i: int) -> str:
    """The loopback address of bench host ``i`` (127.77.0.1, 127.77.0.2, …)."""
    return f"127.77.{(i + 1) // 256}.{(i + 1) % 256}"


def _serve(port_q: mp.Queue, folder: str, hosts: int) -> None:
    photos = [p.read_bytes() for p in sorted(Path(folder).rglob("*.jpg"))]
    lock = threading.Lock()
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            host = self.server.server_address[0]
            if self.path == "/_stats":  # the most requests in flight per host since the last read
                with lock:
                    body = json.dumps(dict(peak)).encode()
                    peak.clear()
            else:
                i = int(self.path.rsplit("/", 1)[1].split(".")[0])
                body = photos[i % len(photos)]
                with lock:
                    in_flight[host] += 1
                    peak[host] = max(peak[host], in_flight[host])
            try:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            finally:
                if self.path != "/_stats":
                    with lock:
                        in_flight[host] -= 1

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

        def handle_error(self, request, client_address) -> None:
            pass

    first = Server((host_address(0), 0), Handler)
    port = first.server_address[1]
    servers = [first] + [Server((host_address(i), port), Handler) for i in range(1, hosts)]
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, args=(0.5,), daemon=True).start()
    port_q.put(port)
    first.serve_forever()


def peak_in_flight(port: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://{host_address(0)}:{port}/_stats", timeout=30) as r:
        return Counter(json.loads(r.read()))


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants every 0.1 s, and the CPU
    seconds they used meanwhile (``cpu``: user + system; a process that exits between two samples
    loses its last 0.1 s). CPU seconds do not depend on what else the machine runs, wall time does."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.peak = 0
        self.cpu = 0.0
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        me = psutil.Process()
        return [p for p in [me, *me.children(recursive=True)] if p.pid not in self.exclude]

    def _sample(self) -> int:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error), p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                self._last[p.pid] = t.user + t.system
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.1)

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._base = dict(self._last)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._sample()
        self.cpu = sum(v - self._base.get(pid, 0.0) for pid, v in self._last.items())


def write_urls(folder: Path, port: int, n: int, hosts: int, zipf: float, seed: int = 0) -> Path:
    """``n`` URLs whose hosts follow a Zipf law over ``hosts`` hosts (host 0 the most popular)."""
    import numpy as np

    weights = 1 / np.arange(1, hosts + 1) ** zipf
    picks = np.random.default_rng(seed).choice(hosts, size=n, p=weights / weights.sum())
    rows = {
        "uid": [f"u{i:07d}" for i in range(n)],
        "url": [f"http://{host_address(int(h))}:{port}/img/{i}.jpg" for i, h in enumerate(picks)],
        "text": [f"caption {i}" for i in range(n)],
        "entry_ids": [[i % 100] for i in range(n)],
    }
    schema = pa.schema(
        [
            ("uid", pa.string()),
            ("url", pa.string()),
            ("text", pa.string()),
            ("entry_ids", pa.list_(pa.int32())),
        ]
    )
    (folder / "curated").mkdir(parents=True, exist_ok=True)
    path = folder / "curated" / "part-00000.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), path)
    return path


def run_bare(urls: Path, out: Path, args, server_pid: int) -> tuple[float, int, int, float]:
    from img2dataset import download

    with PeakRSS({server_pid}) as mem, open(os.devnull, "w") as null:
        start = time.perf_counter()
        stdout, sys.stdout = sys.stdout, null  # img2dataset prints per-shard chatter
        try:
            download(
                url_list=str(urls),
                input_format="parquet",
                url_col="url",
                caption_col="text",
                save_additional_columns=["uid", "entry_ids"],
                output_format="webdataset",
                output_folder=str(out),
                processes_count=args.processes,
                thread_count=args.threads,
                image_size=args.image_size,
                resize_mode="center_crop",
                encode_quality=95,
                number_sample_per_shard=args.shard_size,
                distributor="multiprocessing",
                timeout=10,
                retries=0,
                enable_wandb=False,
                compute_hash="sha256",
            )
        finally:
            sys.stdout = stdout
        secs = time.perf_counter() - start
    ok = sum(
        pq.read_table(p, columns=["status"])["status"].to_pylist().count("success")
        for p in out.glob("*.parquet")
    )
    return secs, ok, mem.peak, mem.cpu


def run_webclip(folder: Path, args, server_pid: int, hashing: bool = True) -> tuple[float, int, int, float]:
    from crawl.download import DownloadStage
    from pipeline.config import load_config
    from pipeline.rundir import RunDir
    from pipeline.runner import run_stage

    config = load_config(
        None,
        [
            f"ray.num_cpus={args.processes}",
            "download.allow_addresses=[127.77.0.0/16]",
            f"download.thread_count={args.threads}",
            f"download.image_size={args.image_size}",
            "download.resize_mode=center_crop",
            f"download.samples_per_shard={args.shard_size}",
            "download.timeout=10",
            f"download.per_host_concurrency={args.cap}",
            f"download.per_host_rps={args.rps}",
            f"dedup.hash_at_download={str(hashing).lower()}",  # issue 18: hashes of the originals
        ],
        str(folder),
    )
    with PeakRSS({server_pid}) as mem:
        start = time.perf_counter()
        result = run_stage(DownloadStage(config, RunDir(str(folder))), progress=False, force=True)
        secs = time.perf_counter() - start
    return secs, result.stats.counts["success"], mem.peak, mem.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="URLs per run")
    ap.add_argument("--processes", type=int, default=2, help="processes (img2dataset) = Ray CPUs (webclip)")
    ap.add_argument("--threads", type=int, default=32, help="download threads per process / shard task")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--hosts", type=int, default=200, help="distinct loopback hosts the URLs are spread over")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the host distribution")
    ap.add_argument("--cap", type=int, default=8, help="webclip per_host_concurrency (whole run)")
    ap.add_argument("--rps", type=float, default=200, help="webclip per_host_rps (whole run)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the median is reported")
    args = ap.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"photos not found at {PHOTOS} (../shared/data beside the checkout)")

    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(port_q, str(PHOTOS), args.hosts), daemon=True)
    server.start()
    port = port_q.get(timeout=60)

    from pipeline.runner import ensure_ray

    ensure_ray(num_cpus=args.processes)  # Ray start-up is not part of the measured download
    from crawl.host_gate import HostGate, PauseFeed

    PauseFeed(HostGate(), 1.0).close()  # the pause board starts once per cluster, like Ray itself
    tmp = Path(tempfile.mkdtemp(prefix="webclip-bench-dl-"))
    bare, ours, unhashed = [], [], []
    peaks: dict[str, list[Counter[str]]] = {"bare": [], "webclip": [], "unhashed": []}
    try:
        for r in range(args.repeat):
            base = tmp / f"round{r}"
            urls = write_urls(base / "webclip", port, args.n, args.hosts, args.zipf)
            peak_in_flight(port)  # reset the server's counts
            bare.append(run_bare(urls, base / "bare", args, server.pid))
            peaks["bare"].append(peak_in_flight(port))
            # the two webclip sides take turns going first: the first stage after the bare run also
            # pays for warming Ray's workers, which would otherwise be charged to one side only
            for hashing in (True, False) if r % 2 == 0 else (False, True):
                (ours if hashing else unhashed).append(
                    run_webclip(base / "webclip", args, server.pid, hashing=hashing)
                )
                peaks["webclip" if hashing else "unhashed"].append(peak_in_flight(port))
            shutil.rmtree(base / "bare", ignore_errors=True)
            print(
                f"round {r + 1}: bare {args.n / bare[-1][0]:.0f} img/s, webclip {args.n / ours[-1][0]:.0f} img/s, "
                f"webclip without hashing {args.n / unhashed[-1][0]:.0f} img/s",
                file=sys.stderr,
            )
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    top = host_address(0)

    def row(
        name: str, runs: list[tuple[float, int, int, float]], host_peaks: list[Counter[str]]
    ) -> tuple[float, float, str]:
        rate = statistics.median(args.n / s for s, *_ in runs)
        ok = min(r[1] for r in runs)
        peak = max(r[2] for r in runs) / 2**20
        cpu_ms = statistics.median(r[3] for r in runs) / args.n * 1e3
        busiest = max(p[top] for p in host_peaks)
        return (
            rate,
            cpu_ms,
            (
                f"{name:<22} {rate:>9.0f} {rate / args.processes:>12.0f} {cpu_ms:>14.2f} {peak:>12.0f} "
                f"{ok:>8}/{args.n} {busiest:>14}"
            ),
        )

    top_share = 1 / sum(1 / k**args.zipf for k in range(1, args.hosts + 1))  # expected share of host 0
    print(
        f"\n{args.n} loopback URLs (real COCO JPEGs) over {args.hosts} hosts, Zipf s={args.zipf} "
        f"(top host {top}: {top_share:.0%} of URLs), {args.processes} processes x {args.threads} threads, "
        f"{args.image_size}px center_crop jpg, {args.shard_size}/shard; webclip cap {args.cap}, "
        f"{args.rps:g} req/s per host; median of {args.repeat}; {os.cpu_count()} cores visible"
    )
    print(
        f"{'':<22} {'images/s':>9} {'img/s/core':>12} {'CPU ms/image':>14} {'peak RSS MiB':>12} {'success':>13}"
        f" {'top host peak':>14}"
    )
    r_bare, c_bare, line_bare = row("img2dataset (bare)", bare, peaks["bare"])
    r_ours, c_ours, line_ours = row("webclip download", ours, peaks["webclip"])
    r_plain, c_plain, line_plain = row("webclip, no orig hashes", unhashed, peaks["unhashed"])
    print(line_bare)
    print(line_ours)
    print(line_plain)
    print(f"webclip / bare throughput: {r_ours / r_bare:.2f}  (target >= 0.90)")
    print(
        f"hashing originals at download: webclip / webclip without it {r_ours / r_plain:.2f}, "
        f"/ bare {r_ours / r_bare:.2f}  (issue 18: cost <= 10%)"
    )
    print(
        f"CPU per image (crawler processes, median): webclip {c_ours:.2f} ms, without hashing {c_plain:.2f} ms "
        f"(hashing +{(c_ours - c_plain) / c_plain:.0%}), bare {c_bare:.2f} ms"
    )


if __name__ == "__main__":
    main()
