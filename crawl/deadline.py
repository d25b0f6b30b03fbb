"""One deadline per request, enforced by the socket.

A :class:`Deadline` is the time left for one request: DNS, connect, TLS, headers, body and every
redirect hop together. Sockets made by :func:`connect` carry it: **before every blocking call** (each
``recv``, ``send``, the TLS handshake) the socket timeout is set to the time left, and a call made
after the deadline raises at once. So no per-read timeout can be renewed by a server that drips one
byte per second (http.client reads headers line by line through the socket file, where a plain
per-read timeout never fires), and nothing a server does can keep the socket open past the deadline.

Time spent queued for a host's slot is not the host's time: :meth:`Deadline.paused` moves the
deadline back by the wait (no socket is open to that host meanwhile).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed (raised by the socket or by a check between steps)."""


class Deadline:
    """``seconds`` from now on the monotonic clock; :meth:`left` raises once it has passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def left(self, what: str = "request") -> float:
        """Seconds left (> 0), or :class:`DeadlineExceeded` naming ``what`` was being done."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{what} not complete within {self.seconds:g}s")
        return left

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not count the block's time (waiting in a host's queue, where no socket is open)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.end += time.monotonic() - start


class _Armed:
    """Mixin: set the socket timeout to the deadline's time left before each blocking call."""

    deadline: Deadline | None = None

    def _arm(self, what: str) -> None:
        if self.deadline is not None:
            self.settimeout(self.deadline.left(what))  # type: ignore[attr-defined]

    def recv(self, *args: Any) -> bytes:
        self._arm("read")
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> int:
        self._arm("read")
        return super().recv_into(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> int:
        self._arm("send")
        return super().send(*args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> None:
        self._arm("send")
        return super().sendall(*args)  # type: ignore[misc]


class DeadlineSocket(_Armed, socket.socket):
    """A TCP socket whose every blocking call ends by its :class:`Deadline`."""


class DeadlineSSLSocket(_Armed, ssl.SSLSocket):
    """A TLS socket whose every blocking call (handshake included) ends by its :class:`Deadline`."""

    def do_handshake(self, *args: Any) -> None:
        self._arm("TLS handshake")  # CPython bounds the whole handshake by the socket timeout
        return super().do_handshake(*args)

    def read(self, *args: Any) -> Any:
        self._arm("read")
        return super().read(*args)


def tls_context() -> ssl.SSLContext:
    """A verifying client context whose sockets are :class:`DeadlineSSLSocket`."""
    ctx = ssl.create_default_context()
    ctx.sslsocket_class = DeadlineSSLSocket
    return ctx


def connect(address: str, port: int, deadline: Deadline) -> DeadlineSocket:
    """A TCP connection to ``address`` (an IP literal) that the deadline governs from its first call."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = DeadlineSocket(family, socket.SOCK_STREAM)
    try:
        sock.deadline = deadline
        sock.settimeout(deadline.left("connect"))
        sock.connect((address, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def wrap_tls(sock: DeadlineSocket, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    """Wrap ``sock`` in TLS within its deadline; the TLS socket keeps the deadline."""
    deadline = sock.deadline
    assert deadline is not None
    sock.settimeout(deadline.left("TLS handshake"))  # the handshake runs inside wrap_socket
    tls = context.wrap_socket(sock, server_hostname=server_hostname)
    tls.deadline = deadline  # type: ignore[attr-defined]
    return tls


def call_within(fn: Callable[[], Any], deadline: Deadline, what: str) -> Any:
    """Run ``fn`` (a blocking call with no timeout of its own, such as ``getaddrinfo``) and give up
    at the deadline. The call goes on in a daemon thread and its result is dropped: the system
    resolver has its own (long) timeouts, so the thread ends, but no request waits for it."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="webclip-resolve", daemon=True).start()
    if not done.wait(deadline.left(what)):
        raise DeadlineExceeded(f"{what} not complete within {deadline.seconds:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]
