"""The safe HTTP fetcher webclip gives img2dataset in place of its plain ``urllib`` download.

For every URL, and again for every redirect hop:

* only ``http``/``https``, and a port that is not 0;
* **one deadline** (``timeout``) for the whole request — DNS, connect, TLS, headers, body and every
  redirect hop — enforced by the socket before each blocking call (:mod:`crawl.deadline`); the name
  lookup runs under the same deadline. Time queued for a slot is not counted (no socket is open);
* the host is resolved once, every address is checked by :class:`~crawl.safety.AddressPolicy` (all of
  IANA's special-purpose ranges, and IPv4 embedded in 6to4, Teredo, NAT64 and mapped addresses), the
  socket connects to a checked address (no second DNS lookup an attacker could change), and the
  address actually connected to is checked again;
* two slots per hop (:mod:`crawl.host_gate`): the URL's registrable domain (at most
  ``floor(per_host_concurrency / K)`` at a time and ``per_host_rps / K`` starts per second in this
  task, where K ≤ ``per_host_concurrency`` is the number of tasks the download plan put that domain
  in), then the address connected to (at most ``per_host_concurrency``). Both are held until the
  socket is closed;
* 429/503 are retried ``throttle_retries`` times, after a pause of ``Retry-After`` (or an
  exponential backoff) capped at ``backoff_cap_seconds``. The pause holds the domain, not only the
  request: every thread of the task at once, and every other task of the crawl from its next read of
  the cluster's pause board (``pause_poll_seconds``). A retry is a new request with a new deadline;
* ``X-Robots-Tag`` opt-outs are honoured (:mod:`crawl.robots_tag`: ``none``, several headers, comma
  lists, per-agent groups, matched against ``user_agent_token``);
* at most ``max_image_bytes`` are read, a body shorter than its ``Content-Length`` is a failure
  (``short_body``), a JPEG must be complete by its markers (:mod:`crawl.jpeg`), and the image header
  is read (without decoding) to refuse decompression bombs and non-images before img2dataset's
  resizer would decode them.

A failure is returned, never raised, as ``"<reason>: <detail>"``; :func:`reason_of` gives the reason.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import io
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# img2dataset imports albumentations, which phones home for updates unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from crawl import robots_tag
from crawl.deadline import Deadline, DeadlineExceeded, call_within, connect, tls_context, wrap_tls
from crawl.domains import registrable_domain
from crawl.download_config import DownloadConfig
from crawl.host_gate import HostGate, PauseFeed
from crawl.jpeg import jpeg_problem
from crawl.safety import AddressPolicy, RefusedAddress, Resolver, literal_address, system_resolver

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


@dataclass(frozen=True)
class _Target:
    """One hop's URL, split and checked: scheme, host, port and the request path."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError("unsupported_scheme", f"{scheme or 'no'} scheme in {url[:100]!r}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise FetchError("bad_url", str(exc)) from None
        if not host:
            raise FetchError("bad_url", f"no host in {url[:100]!r}")
        if port == 0:  # urllib reads ":0" as 0, and "0 or default" would quietly make it 80
            raise FetchError("bad_url", f"port 0 in {url[:100]!r}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(scheme, host, port or (443 if scheme == "https" else 80), path)


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

    One instance serves all threads of one shard task (its slots and pauses live here); :meth:`close`
    it when the task is done. ``shares`` maps a registrable domain to the number of shard tasks the
    download plan spread it over (absent: 1). ``resolver`` replaces the system's name lookup — for
    tests and benchmarks that give many names to loopback addresses; the deadline bounds it either way.
    """

    def __init__(
        self,
        config: DownloadConfig,
        shares: Mapping[str, int] | None = None,
        resolver: Resolver | None = None,
    ):
        self.config = config
        self.policy = AddressPolicy(config.allow_addresses)
        self.user_agent = config.user_agent
        self.shares = dict(shares or {})
        self.resolver = resolver or system_resolver
        self.slots = HostGate()
        self.pauses = PauseFeed(self.slots, config.pause_poll_seconds)
        self._tls = tls_context()
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _backoff(self, attempt: int, header: str | None) -> float:
        asked = _retry_after(header)
        wait = asked if asked is not None else self.config.backoff_base_seconds * (2**attempt)
        return min(wait, self.config.backoff_cap_seconds)

    def domain_limits(self, domain: str) -> tuple[int, float]:
        """``(slots, seconds between starts)`` for ``domain`` in this task: its 1/K share of the run's
        (the plan keeps K ≤ ``per_host_concurrency``, so there is always at least one slot)."""
        k = max(1, self.shares.get(domain, 1))
        rps = self.config.per_host_rps
        return max(1, self.config.per_host_concurrency // k), (k / rps if rps else 0.0)

    # -------------------------------------------------------------- one hop
    def _resolve(self, target: _Target, deadline: Deadline) -> list[str]:
        """The host's checked addresses, looked up within the deadline."""
        ip = literal_address(target.host)
        try:
            if ip is not None:
                return self.policy.check(target.host, [str(ip)])
            found = call_within(lambda: self.resolver(target.host, target.port), deadline, "DNS lookup")
            return self.policy.check(target.host, found)
        except RefusedAddress as exc:
            raise FetchError("refused_address", str(exc)) from None
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError("dns_error", f"{target.host}: {exc}") from None

    def _connect(
        self, target: _Target, addresses: list[str], deadline: Deadline, hold: contextlib.ExitStack
    ) -> http.client.HTTPConnection:
        """A connection to the first reachable address, its slot held on ``hold`` until it is closed."""
        last: OSError | None = None
        for addr in addresses:
            attempt = contextlib.ExitStack()
            ip = literal_address(addr)
            key = str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
            with deadline.paused():  # queued behind this task's other requests to the address
                attempt.enter_context(self.slots.slot(f"a:{key}", self.config.per_host_concurrency))
            try:
                sock = connect(addr, target.port, deadline)
            except OSError as exc:
                attempt.close()
                if isinstance(exc, TimeoutError):
                    raise
                last = exc
                continue
            attempt.callback(sock.close)
            peer = sock.getpeername()[0]
            why = self.policy.refusal(peer)
            if why:  # the address actually connected to is what counts
                attempt.close()
                raise RefusedAddress(f"connected peer {peer} is {why}")
            hold.enter_context(attempt)
            if target.scheme == "https":  # HTTPSConnection only for its default port in the Host header
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    target.host, target.port, context=self._tls
                )
                conn.sock = wrap_tls(sock, self._tls, target.host)
            else:
                conn = http.client.HTTPConnection(target.host, target.port)
                conn.sock = sock
            hold.callback(conn.close)
            return conn
        raise last or OSError(f"no address to connect to for {target.host}")

    def _read_body(self, resp: http.client.HTTPResponse, deadline: Deadline) -> bytes:
        """The body, all of it: no more than ``max_image_bytes``, no less than ``Content-Length``."""
        limit = self.config.max_image_bytes
        length = resp.getheader("Content-Length")
        declared = int(length) if length and length.strip().isdigit() else None
        if declared is not None and declared > limit:
            raise FetchError("too_large", f"Content-Length {declared} > max_image_bytes {limit}")
        buf = io.BytesIO()
        while True:
            deadline.left("body")  # the hard check; the socket bounds each read by the same deadline
            try:
                chunk = resp.read1(CHUNK)  # one recv at a time: a slow drip still meets the deadline
            except http.client.IncompleteRead as exc:  # chunked body cut short
                raise FetchError("short_body", f"chunked body ended after {buf.tell()} bytes") from exc
            if not chunk:
                break
            buf.write(chunk)
            if buf.tell() > limit:
                raise FetchError("too_large", f"more than max_image_bytes {limit}")
        if declared is not None and buf.tell() < declared:
            # http.client's read1 returns b"" on an early close and never says bytes are owed
            raise FetchError("short_body", f"{buf.tell()} of Content-Length {declared} bytes")
        return buf.getvalue()

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
        """Return the bytes of the image at ``url`` or raise :class:`FetchError` with a reason.

        Raises :class:`~crawl.deadline.DeadlineExceeded` (a ``TimeoutError``) when the request's one
        deadline passes, in whichever step.
        """
        cfg = self.config
        hops = throttled = 0
        deadline = Deadline(cfg.timeout)
        while True:
            target = _Target.parse(url)
            domain = registrable_domain(target.host)
            cap, interval = self.domain_limits(domain)
            with contextlib.ExitStack() as hold:  # closes the socket, then gives the slots back
                with deadline.paused():  # queued for the domain: not the host's time
                    hold.enter_context(self.slots.slot(f"d:{domain}", cap, interval))
                addresses = self._resolve(target, deadline)
                conn = self._connect(target, addresses, deadline, hold)
                conn.request(
                    "GET", target.path, headers={"User-Agent": self.user_agent, "Accept": "image/*, */*;q=0.5"}
                )
                resp = conn.getresponse()
                status = resp.status
                if status in REDIRECTS:
                    location = resp.getheader("Location")
                    if not location:
                        raise FetchError(f"http_{status}", "redirect without Location")
                    hops += 1
                    if hops > cfg.max_redirects:
                        raise FetchError("too_many_redirects", f"more than {cfg.max_redirects} hops")
                    url = urllib.parse.urljoin(url, location)
                    continue  # the same deadline: a chain of slow hops is one slow request
                if status in THROTTLED and throttled < cfg.throttle_retries:
                    # the host asked its clients to slow down, not this one request: pause the
                    # domain for every thread and task, then queue again (no slot held meanwhile)
                    self.pauses.post(f"d:{domain}", self._backoff(throttled, resp.getheader("Retry-After")))
                    throttled += 1
                    self._count("throttled_waits")
                    deadline = Deadline(cfg.timeout)  # the retry is a new request
                    continue
                if status != 200:
                    raise FetchError(f"http_{status}", resp.reason or "")
                refused = robots_tag.disallowed(
                    resp.headers.get_all("X-Robots-Tag") or [],
                    cfg.user_agent_token,
                    cfg.disallowed_header_directives,
                )
                if refused:
                    raise FetchError(
                        "robots_noai", f"{sorted(refused)} in {resp.headers.get_all('X-Robots-Tag')}"
                    )
                data = self._read_body(resp, deadline)
                self._count("bytes_downloaded", len(data))
                return data

    def check_image(self, data: bytes) -> None:
        """Read the image header (no decode): refuse non-images, incomplete JPEGs and decompression bombs."""
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
        if fmt == "JPEG":  # half a JPEG decodes to a grey half-image in cv2: judge it by its markers
            problem = jpeg_problem(data)
            if problem:
                raise FetchError("truncated_image", f"JPEG of {len(data)} bytes: {problem}")

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
            except DeadlineExceeded as exc:
                err = f"timeout: {exc}"
            except TimeoutError as exc:  # a socket call that used the last of the deadline
                err = f"timeout: request not complete within {self.config.timeout:g}s ({exc or 'timed out'})"
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
