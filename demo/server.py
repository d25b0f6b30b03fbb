"""The mini-web's HTTP server on loopback: static files, with ``X-Robots-Tag: noai`` under /noai/."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MiniWebHandler(SimpleHTTPRequestHandler):
    """Serves the site folder; images under /noai/ carry an AI-training opt-out header."""

    def end_headers(self) -> None:
        if self.path.startswith("/noai/"):
            self.send_header("X-Robots-Tag", "noai, noimageai")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # keep the demo's console readable
        pass


@contextlib.contextmanager
def serve(site: Path, port: int, host: str = "127.0.0.1") -> Iterator[ThreadingHTTPServer]:
    """Serve ``site`` on ``host:port`` in a background thread for the duration of the block."""
    handler = functools.partial(MiniWebHandler, directory=str(site))
    ThreadingHTTPServer.allow_reuse_address = True
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise OSError(f"cannot serve the mini-web on {host}:{port} ({exc}); pass another --port") from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="miniweb", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
