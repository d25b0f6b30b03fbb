"""A real HTTP server on loopback for the download tests, with one route per failure mode.

``ImageServer`` serves real JPEGs (COCO photos from the shared data) and the routes below; it
records every request (path, User-Agent, time) so tests can check what reached it. A second
instance bound to 127.0.0.2 is the "canary": the allow-list admits 127.0.0.1 only, so any request
it records is a safety failure.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (timeouts, refusals) are normal here, not errors to print."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


def big_jpeg(path: Path, side: int = 10_000) -> Path:
    """A ``side``×``side`` (100 MP for 10k) JPEG that is small in bytes: mostly one colour."""
    if not path.exists():
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (side, side), (120, 160, 200))
        ImageDraw.Draw(img).rectangle((0, 0, side // 10, side // 10), fill=(200, 40, 40))
        img.save(path, "JPEG", quality=50)
    return path


class ImageServer:
    """``ThreadingHTTPServer`` on ``host`` in a daemon thread; ``url(path)`` builds request URLs."""

    def __init__(
        self,
        photos: list[Path],
        host: str = "127.0.0.1",
        big: Path | None = None,
        redirect_target: str | None = None,
    ):
        self.photos = {p.name: p.read_bytes() for p in photos}
        self.names = sorted(self.photos)
        self.big = big.read_bytes() if big else None
        self.redirect_target = redirect_target
        self.requests: list[tuple[str, str, float]] = []
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight: Counter[str] = Counter()
        self.open_now = 0  # TCP connections open right now (from accept to close)
        self.max_open = 0  # the most open at once: what a per-host cap must bound
        self.header_bytes_sent: Counter[str] = Counter()  # /drip-headers/<tag>: bytes out before the hang-up
        self.drip_seen: list[tuple[str, Counter[str]]] = []  # (path, header_bytes_sent when it arrived)
        self.extra: dict[str, tuple[bytes, str, list[tuple[str, str]]]] = {}  # /extra/<name> routes
        self.throttled_at: float | None = None  # when /throttle-host/ answered its 429
        self.retry_after = 1  # seconds that 429 asks for
        self.lock = threading.Lock()
        self.httpd = _QuietServer((host, 0), self._handler())
        self.host, self.port = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.open_now += 1
                    server.max_open = max(server.max_open, server.open_now)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with server.lock:
                        server.open_now -= 1

            def _drip_headers(self, tag: str, seconds_per_byte: float, total: int) -> None:
                """A status line and ``total`` bytes of headers, one byte at a time (never a body)."""
                head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * total
                try:
                    for i in range(len(head)):
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                        with server.lock:
                            server.header_bytes_sent[tag] += 1
                        time.sleep(seconds_per_byte)
                except OSError:  # the client hung up: what a deadline should make it do
                    pass
                self.close_connection = True

            def _send(
                self,
                code: int,
                body: bytes = b"",
                ctype: str = "image/jpeg",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _photo(self, name: str) -> bytes:
                return server.photos.get(name) or server.photos[server.names[hash(name) % len(server.names)]]

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests.append((self.path, self.headers.get("User-Agent", ""), time.monotonic()))
                    server.hits[path] += 1
                    hits = server.hits[path]
                    server.drip_seen.append((self.path, Counter(server.header_bytes_sent)))
                parts = path.strip("/").split("/")
                route, arg = parts[0], (parts[1] if len(parts) > 1 else "")
                if route == "img":
                    self._send(200, self._photo(arg))
                elif route == "status":
                    self._send(int(arg), b"error page", "text/html")
                elif route == "throttle-once":  # 429 with Retry-After the first time, then the image
                    if hits == 1:
                        self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                    else:
                        self._send(200, self._photo(arg))
                elif route == "always-429":
                    self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                elif route == "always-503":
                    self._send(503, b"busy", "text/plain")
                elif route == "slow":  # /slow/<seconds>/<name>: headers after a delay
                    time.sleep(float(arg))
                    self._send(200, self._photo(parts[2] if len(parts) > 2 else "x"))
                elif route == "drip":  # headers at once, then one byte per 0.5 s
                    body = self._photo(arg)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                elif route == "drip-headers":  # /drip-headers/<tag>: 1 byte per 0.1 s, ~40 s of headers
                    self._drip_headers(arg, 0.1, 400)
                elif route == "slow-redirect":  # /slow-redirect/<n>/<name>: n hops, 0.6 s each, then the image
                    time.sleep(0.6)
                    n = int(arg)
                    name = parts[2] if len(parts) > 2 else "x"
                    if n > 0:
                        self._send(302, b"", "text/plain", {"Location": f"/slow-redirect/{n - 1}/{name}"})
                    else:
                        self._send(200, self._photo(name))
                elif route == "short":  # Content-Length of the whole photo, half of it + an EOI, then close
                    body = self._photo(arg)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2] + b"\xff\xd9")
                    self.close_connection = True
                elif route == "extra":  # a body and headers a test registered under this name
                    body, ctype, headers = server.extra[arg]
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers:  # a list: one header name may repeat
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                elif route == "text":
                    self._send(200, b"<html><body>not an image</body></html>", "text/html")
                elif route == "truncated":
                    body = self._photo(arg)
                    self._send(200, body[: len(body) // 2])
                elif route == "big":
                    self._send(200, server.big or b"")
                elif route == "loop":  # /loop/<n> -> /loop/<n+1>, forever
                    self._send(302, b"", "text/plain", {"Location": f"/loop/{int(arg or 0) + 1}"})
                elif route == "redirect":  # one hop to a real image
                    self._send(302, b"", "text/plain", {"Location": f"/img/{arg}"})
                elif route == "redirect-away":  # to the canary (a refused address)
                    self._send(302, b"", "text/plain", {"Location": server.redirect_target or "/"})
                elif route == "noai":
                    self._send(200, self._photo(arg), headers={"X-Robots-Tag": "noai"})
                elif route == "noai-otherbot":  # addressed to another crawler: webclip may fetch
                    self._send(200, self._photo(arg), headers={"X-Robots-Tag": "otherbot: noai, noimageai"})
                elif route == "throttle-host":  # /throttle-host/<tag>/<name>: the tag's first request gets 429
                    with server.lock:
                        server.hits[f"throttle-host/{arg}"] += 1
                        first = server.hits[f"throttle-host/{arg}"] == 1
                    if first:
                        self._send(429, b"slow down", "text/plain", {"Retry-After": str(server.retry_after)})
                        with server.lock:
                            server.throttled_at = time.monotonic()  # after the answer went out
                    else:
                        time.sleep(0.2)
                        self._send(200, self._photo(parts[2] if len(parts) > 2 else "x"))
                elif route == "busy":  # counts concurrent requests to this host
                    with server.lock:
                        server.in_flight += 1
                        server.max_in_flight["busy"] = max(server.max_in_flight["busy"], server.in_flight)
                    time.sleep(0.3)
                    with server.lock:
                        server.in_flight -= 1
                    self._send(200, self._photo(arg))
                else:
                    self._send(404, b"no such route", "text/plain")

        return Handler


def write_curated(run_dir: Path, rows: list[dict], parts: int = 1) -> list[dict]:
    """Write ``rows`` (uid, url[, text, entry_ids]) as ``curated/part-*.parquet`` like the balance stage."""
    schema = pa.schema(
        [
            ("uid", pa.string()),
            ("url", pa.string()),
            ("text", pa.string()),
            ("entry_ids", pa.list_(pa.int32())),
        ]
    )
    full = [{"text": f"a photo {i}", "entry_ids": [i % 7, 100 + i], **r} for i, r in enumerate(rows)]
    out = run_dir / "curated"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(full) // parts)
    for p in range(parts):
        chunk = full[p * per : (p + 1) * per]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), buf)
        (out / f"part-{p:05d}.parquet").write_bytes(buf.getvalue())
    return full
