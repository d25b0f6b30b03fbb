"""The safe HTTP fetcher webclip gives img2dataset in place of its plain ``urllib`` download.

For every URL, and again for every redirect hop:

* only ``http``/``https``;
* the host is resolved once, every address is checked by :class:`~crawl.safety.AddressPolicy`, the
  socket connects to a checked address (no second DNS lookup an attacker could change), and the
  address actually connected to is checked again;
* at most ``per_host_concurrency`` requests to one host at a time (per shard task, first come first
  served: :mod:`crawl.host_gate`);
* 429/503 are retried ``throttle_retries`` times, after a pause of ``Retry-After`` (or an
  exponential backoff) capped at ``backoff_cap_seconds``. The pause holds the host, not only the
  request: every thread of the task at once, and every other task of the crawl from its next read of
  the cluster's pause board (``pause_poll_seconds``);
* ``X-Robots-Tag`` opt-outs are honoured with img2dataset's own parser;
* at most ``max_image_bytes`` are read within ``timeout`` seconds, and the image header is read
  (without decoding) to refuse decompression bombs and non-images before img2dataset's resizer
  would decode them.

A failure is returned, never raised, as ``"<reason>: <detail>"``; :func:`reason_of` gives the reason.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import os
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from collections import Counter

from PIL import Image, UnidentifiedImageError

# img2dataset imports albumentations, which phones home for updates unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from crawl.download_config import DownloadConfig
from crawl.host_gate import HostGate, PauseFeed
from crawl.safety import AddressPolicy, RefusedAddress

REDIRECTS = {301, 302, 303, 307, 308}
THROTTLED = {429, 503}
CHUNK = 64 * 1024


class FetchError(Exception):
    """A URL that cannot be fetched; ``reason`` is the short code stored in the shard parquet."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def reason_of(error_message: str | None) -> str:
    """The reason code of an img2dataset ``error_message`` (ours are ``"reason: detail"``)."""
    if not error_message:
        return "unknown"
    head = error_message.split(":", 1)[0].strip()
    if head.replace("_", "").isalnum() and head.islower():
        return head
    # img2dataset's resizer reports its own messages
    lowered = error_message.lower()
    if "decoding error" in lowered:
        return "decode_error"
    if "too small" in lowered:
        return "too_small"
    if "area too large" in lowered:
        return "decompression_bomb"
    if "aspect ratio" in lowered:
        return "bad_aspect_ratio"
    return "resize_error"


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection that connects only to pre-checked addresses and re-checks the peer."""

    def __init__(self, host: str, port: int, addresses: list[str], policy: AddressPolicy, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses
        self._policy = policy

    def _open_socket(self) -> socket.socket:
        last: OSError | None = None
        for addr in self._addresses:
            try:
                sock = socket.create_connection((addr, self.port), self.timeout)
            except OSError as exc:
                last = exc
                continue
            peer = sock.getpeername()[0]
            why = self._policy.refusal(peer.split("%", 1)[0])
            if why:  # the address actually connected to is what counts
                sock.close()
                raise RefusedAddress(f"connected peer {peer} is {why}")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last or OSError(f"no address to connect to for {self.host}")

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(_PinnedConnection):
    _context = ssl.create_default_context()

    def connect(self) -> None:
        sock = self._open_socket()
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class SafeFetcher:
    """Fetches image bytes under the safety and politeness rules of a :class:`DownloadConfig`.

    One instance serves all threads of one shard task (its per-host slots and pauses live here);
    :meth:`close` it when the task is done.
    """

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.policy = AddressPolicy(config.allow_addresses)
        self.user_agent = config.user_agent
        # A slot is held for one hop: the deadline (timeout) bounds it, plus connect attempts to a
        # second address; the lease outlives that, so only a holder that overran loses it.
        self.slots = HostGate(config.per_host_concurrency, ttl=2 * config.timeout + 5)
        self.pauses = PauseFeed(self.slots, config.pause_poll_seconds)
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        # img2dataset's own X-Robots-Tag parser. Imported here, in the worker, before any download
        # thread runs: importing img2dataset takes seconds, and threads importing it concurrently
        # would all wait on the import lock while their deadlines run. The driver never needs it.
        from img2dataset.downloader import is_disallowed

        self._is_disallowed = is_disallowed

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _backoff(self, attempt: int, header: str | None) -> float:
        asked = _retry_after(header)
        wait = asked if asked is not None else self.config.backoff_base_seconds * (2**attempt)
        return min(wait, self.config.backoff_cap_seconds)

    # -------------------------------------------------------------- one request
    def _request(self, url: str, deadline: float) -> tuple[int, http.client.HTTPResponse, _PinnedConnection]:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError("unsupported_scheme", f"{scheme or 'no'} scheme in {url[:100]!r}")
        try:
            host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError("bad_url", str(exc)) from None
        if not host:
            raise FetchError("bad_url", f"no host in {url[:100]!r}")
        try:
            addresses = self.policy.resolve(host, port)
        except RefusedAddress as exc:
            raise FetchError("refused_address", str(exc)) from None
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError("dns_error", f"{host}: {exc}") from None
        remaining = max(0.01, deadline - time.monotonic())
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedConnection
        conn = cls(host, port, addresses, self.policy, remaining)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers={"User-Agent": self.user_agent, "Accept": "image/*, */*;q=0.5"})
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return resp.status, resp, conn

    def _read_body(self, resp: http.client.HTTPResponse, conn: _PinnedConnection, deadline: float) -> bytes:
        limit = self.config.max_image_bytes
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise FetchError("too_large", f"Content-Length {length} > max_image_bytes {limit}")
        buf = io.BytesIO()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError("timeout", f"body not complete within {self.config.timeout}s")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)  # a slow drip cannot outlive the deadline
            chunk = resp.read1(CHUNK)  # read1: one recv, so a slow drip still reaches the deadline check
            if not chunk:
                return buf.getvalue()
            buf.write(chunk)
            if buf.tell() > limit:
                raise FetchError("too_large", f"more than max_image_bytes {limit}")

    def close(self) -> None:
        """Stop reading the cluster's pauses (the task is done)."""
        self.pauses.close()
        if self.pauses.errors:
            self._count("pause_board_errors", self.pauses.errors)

    def __enter__(self) -> SafeFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str) -> bytes:
        """Return the bytes of the image at ``url`` or raise :class:`FetchError` with a reason."""
        cfg = self.config
        hops = 0
        throttled = 0
        while True:
            host = urllib.parse.urlsplit(url).hostname or ""
            with self.slots.slot(host):  # one hop per slot: a redirect queues again for its host
                deadline = time.monotonic() + cfg.timeout  # waiting for the slot is not the host's time
                status, resp, conn = self._request(url, deadline)
                try:
                    if status in REDIRECTS:
                        location = resp.getheader("Location")
                        if not location:
                            raise FetchError(f"http_{status}", "redirect without Location")
                        hops += 1
                        if hops > cfg.max_redirects:
                            raise FetchError("too_many_redirects", f"more than {cfg.max_redirects} hops")
                        url = urllib.parse.urljoin(url, location)
                        continue
                    if status in THROTTLED and throttled < cfg.throttle_retries:
                        # the host asked its clients to slow down, not this one request: pause the
                        # host for every thread and task, then queue again (no slot held meanwhile)
                        self.pauses.post(host, self._backoff(throttled, resp.getheader("Retry-After")))
                        throttled += 1
                        self._count("throttled_waits")
                        continue
                    if status != 200:
                        raise FetchError(f"http_{status}", resp.reason or "")
                    if cfg.disallowed_header_directives and self._is_disallowed(
                        resp.headers, cfg.user_agent_token.lower(), set(cfg.disallowed_header_directives)
                    ):
                        raise FetchError("robots_noai", ", ".join(resp.headers.get_all("X-Robots-Tag", [])))
                    data = self._read_body(resp, conn, deadline)
                    self._count("bytes_downloaded", len(data))
                    return data
                finally:
                    conn.close()

    def check_image(self, data: bytes) -> None:
        """Read the image header (no decode): refuse non-images, truncated JPEGs and decompression bombs."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
                    fmt = img.format
        except Image.DecompressionBombError as exc:
            raise FetchError("decompression_bomb", str(exc)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FetchError("not_an_image", f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if width * height > self.config.max_image_pixels:
            raise FetchError(
                "decompression_bomb", f"{width}x{height} > max_image_pixels {self.config.max_image_pixels}"
            )
        # A JPEG ends with the EOI marker; half a file does not (cv2 would decode a grey half-image).
        if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
            raise FetchError("truncated_image", f"JPEG of {len(data)} bytes has no end-of-image marker")

    # ------------------------------------------------------- img2dataset's hook
    def download_image_with_retry(
        self, row, timeout=None, retries=0, user_agent_token=None, disallowed_header_directives=None
    ):
        """Drop-in for ``img2dataset.downloader.download_image_with_retry``: ``(key, stream|None, error)``.

        Only transient network errors are retried (``retries``); a refusal, an HTTP error or a bad
        image is final, so retrying it would only load the host.
        """
        key, url = row
        err = "unknown"
        for attempt in range(self.config.retries + 1):
            try:
                data = self.fetch(url)
                self.check_image(data)
                return key, io.BytesIO(data), None
            except FetchError as exc:
                return key, None, str(exc)
            except TimeoutError as exc:
                err = f"timeout: {exc or 'timed out'}"
            except ssl.SSLError as exc:
                return key, None, f"tls_error: {exc}"
            except RefusedAddress as exc:
                return key, None, f"refused_address: {exc}"
            except (OSError, http.client.HTTPException) as exc:
                err = f"connection_error: {type(exc).__name__}: {exc}"
            except Exception as exc:  # one bad URL must never fail the shard
                return key, None, f"fetch_error: {type(exc).__name__}: {exc}"
            if attempt < self.config.retries:
                time.sleep(
                    min(self.config.backoff_base_seconds * (2**attempt), self.config.backoff_cap_seconds)
                )
        return key, None, err
