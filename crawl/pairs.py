"""The (image URL, text) candidate checks every extraction reader shares, and the rows they produce.

A reader calls :meth:`PairSink.add` for every candidate it finds; the sink applies the checks in a
fixed order and either keeps the row or counts a drop with its reason:

``empty_alt`` (text empty after trimming, or shorter than ``min_text_chars``), ``alt_too_long``,
``non_utf8`` (the bytes did not decode: the text carries U+FFFD or lone surrogates), ``not_http``
(URL not http/https, or unparseable), ``duplicate`` (same (url, text) already kept in this task).
So ``candidates = out + Σ pair drops``; record-level problems (``malformed_record``) are counted by
the readers separately.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pyarrow as pa

from crawl.uid import make_uid
from pipeline.stats import Stats

POOL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("page_url", pa.string()),
        ("source", pa.string()),
    ]
)
PAIR_DROPS = ("empty_alt", "alt_too_long", "non_utf8", "not_http", "duplicate")


def pool_table(urls: list[str], texts: list[str], source: str) -> pa.Table:
    """Pool rows (:data:`POOL_SCHEMA`) of already-checked pairs, their uids made here, no page URL:
    what synthetic pools (benchmarks, tests) write as ``pool/part-*.parquet``."""
    from crawl.uid import make_uid

    return pa.table(
        {
            "uid": [make_uid(u, t) for u, t in zip(urls, texts, strict=True)],
            "url": urls,
            "text": texts,
            "page_url": [None] * len(texts),
            "source": [source] * len(texts),
        },
        schema=POOL_SCHEMA,
    )


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def has_bad_unicode(text: str) -> bool:
    """True when ``text`` came from undecodable bytes (replacement char or lone surrogates)."""
    if "\ufffd" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class PairSink:
    """Collects checked candidate pairs of one task; ``table()`` gives them as a pool table."""

    def __init__(self, stats: Stats, source: str, min_chars: int = 1, max_chars: int = 1000):
        self.stats = stats
        self.source = source
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._seen: set[str] = set()
        self.uid: list[str] = []
        self.url: list[str] = []
        self.text: list[str] = []
        self.page_url: list[str | None] = []

    def add(self, url: str | None, text: str | None, page_url: str | None = None) -> bool:
        """Check one candidate; keep it or count why not. Returns True if kept."""
        stats = self.stats
        stats.inc("candidates")
        text = (text or "").strip()
        url = (url or "").strip()
        if len(text) < self.min_chars:
            stats.drop("empty_alt")
            return False
        if len(text) > self.max_chars:
            stats.drop("alt_too_long")
            return False
        if has_bad_unicode(text) or has_bad_unicode(url):
            stats.drop("non_utf8")
            return False
        if not is_http_url(url):
            stats.drop("not_http")
            return False
        uid = make_uid(url, text)
        if uid in self._seen:
            stats.drop("duplicate")
            return False
        self._seen.add(uid)
        self.uid.append(uid)
        self.url.append(url)
        self.text.append(text)
        self.page_url.append(page_url)
        stats.inc("out")
        return True

    def __len__(self) -> int:
        return len(self.uid)

    def table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """Rows ``start:stop`` as a table with :data:`POOL_SCHEMA`."""
        sl = slice(start, stop)
        n = len(self.uid[sl])
        return pa.table(
            {
                "uid": self.uid[sl],
                "url": self.url[sl],
                "text": self.text[sl],
                "page_url": self.page_url[sl],
                "source": [self.source] * n,
            },
            schema=POOL_SCHEMA,
        )
