"""Candidate pairs from web crawls: WARC responses (HTML ``<img>`` tags) and WAT metadata (``Links``).

WARC records are read with FastWARC (``parse_http=False`` so the stored block length can be checked
against ``Content-Length``: a clipped record is counted as ``malformed_record``); HTML is parsed
with selectolax (Lexbor). For each ``<img>``: the text is ``alt``, or ``title`` when there is no alt
(``extract.use_title``); ``src`` is resolved against the page URL and its ``<base href>``.

WAT files (Common Crawl's JSON metadata records) carry ``Envelope.Payload-Metadata.
HTTP-Response-Metadata.HTML-Metadata.Links``; entries with ``path == "IMG@/src"`` give the image URL
and ``alt``; ``Head.Base`` is honoured for relative URLs.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import fsspec

from crawl.pairs import PairSink
from pipeline.stats import Stats

_CHARSET = re.compile(rb"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", re.I)


def _split_http(block: bytes) -> tuple[dict[str, str], bytes] | None:
    """HTTP headers (lower-case names) and body of a response block; None if not an HTTP response."""
    if not block.startswith(b"HTTP/"):
        return None
    # The header ends at the first blank line, CRLF or bare LF (ClueWeb's records use LF). Taking the
    # CRLF one whenever it exists would put everything up to the body's first CRLF CRLF (often 10 kB of
    # <head> and the first images) into the "headers".
    ends = [(at, n) for at, n in ((block.find(b"\r\n\r\n"), 4), (block.find(b"\n\n"), 2)) if at >= 0]
    if not ends:
        return None
    sep, sep_len = min(ends)
    headers: dict[str, str] = {}
    for line in block[:sep].split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers, block[sep + sep_len :]


def _decode_html(body: bytes, content_type: str) -> str:
    """Decode with the declared charset (HTTP header, then <meta>), else UTF-8; bad bytes → U+FFFD."""
    for source in (content_type.encode("latin-1", "ignore"), body[:4096]):
        m = _CHARSET.search(source)
        if m:
            try:
                return body.decode(m.group(1).decode("ascii"), errors="replace")
            except LookupError:
                break  # unknown charset name: fall through to UTF-8
    return body.decode("utf-8", errors="replace")


def pairs_from_html(html: str, page_url: str, sink: PairSink, use_title: bool = True) -> None:
    """Feed every ``<img>`` of ``html`` (page at ``page_url``) to ``sink``."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        href = (base_node.attributes.get("href") or "").strip()
        if href:
            with contextlib.suppress(ValueError):
                base = urljoin(page_url, href)
    for img in tree.css("img"):
        attrs = img.attributes
        sink.stats.inc("imgs")
        text = attrs.get("alt")
        if (text is None or not text.strip()) and use_title:
            text = attrs.get("title") or text
        if sink.min_chars > 0 and (text is None or not text.strip()):  # dropped for its text (most <img>): no URL needed
            sink.add("", text, page_url)
            continue
        src = (attrs.get("src") or "").strip()
        try:
            url = urljoin(base, src) if src else ""
        except ValueError:
            url = ""
        sink.add(url, text, page_url)


def _records(
    url: str, warc_type: str, stats: Stats, options: dict[str, Any] | None = None
) -> Iterator[tuple[Any, bytes]]:
    """Yield ``(record, block)`` for each complete record of ``warc_type`` in the file at ``url``.

    A broken record header, a gzip member cut short or a block shorter than its Content-Length ends
    the file with one ``malformed_record`` drop: the reader cannot resynchronise past it, and what
    was read before it is kept. Records of other types are counted as ``records_not_<type>``.
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    options = dict(options or {})
    if url.startswith(("http://", "https://")):
        options.setdefault("block_size", 0)  # stream the file in one GET: no range requests, no 5 MB blocks
    with fsspec.open(url, "rb", compression="infer", **options) as fh:
        it = ArchiveIterator(fh, parse_http=False, record_types=WarcRecordType.any_type)
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except Exception:  # the reader cannot go on past a broken record header
                stats.drop("malformed_record")
                return
            stats.inc("records")
            if rec.headers.get("WARC-Type") != warc_type:
                stats.inc(f"records_not_{warc_type}")
                continue
            try:
                block = rec.reader.read()
            except Exception:  # e.g. EOFError from a gzip member cut short: the stream ends here
                stats.drop("malformed_record")
                return
            if rec.content_length is not None and len(block) < rec.content_length:
                stats.drop("malformed_record")  # clipped: the file ends inside this record
                return
            yield rec, block


def read_warc(
    url: str, sink: PairSink, stats: Stats, use_title: bool = True, options: dict[str, Any] | None = None
) -> None:
    """Extract pairs from every HTML response of the WARC file at ``url`` (``options``: fsspec's)."""
    for rec, block in _records(url, "response", stats, options):
        parsed = _split_http(block)
        if parsed is None:
            stats.drop("malformed_record")
            continue
        headers, body = parsed
        ctype = headers.get("content-type", "")
        if ctype and "html" not in ctype.lower():
            stats.inc("records_not_html")
            continue
        page_url = rec.headers.get("WARC-Target-URI") or ""
        stats.inc("records_html")
        pairs_from_html(_decode_html(body, ctype), page_url, sink, use_title)


def read_wat(url: str, sink: PairSink, stats: Stats, options: dict[str, Any] | None = None) -> None:
    """Extract ``IMG@/src`` links with their alt text from every metadata record of a WAT file."""
    for _rec, block in _records(url, "metadata", stats, options):
        try:
            meta = json.loads(block)
            env = meta["Envelope"]
        except (ValueError, KeyError, TypeError):
            stats.drop("malformed_record")
            continue
        page_url = (env.get("WARC-Header-Metadata") or {}).get("WARC-Target-URI") or ""
        html_meta = ((env.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}).get(
            "HTML-Metadata"
        ) or {}
        base = page_url
        head_base = (html_meta.get("Head") or {}).get("Base")
        if head_base:
            with contextlib.suppress(ValueError):
                base = urljoin(page_url, head_base)
        stats.inc("records_html")
        for link in html_meta.get("Links") or []:
            if not isinstance(link, dict) or link.get("path") != "IMG@/src":
                continue
            stats.inc("imgs")
            src = (link.get("url") or "").strip()
            try:
                img_url = urljoin(base, src) if src else ""
            except ValueError:
                img_url = ""
            sink.add(img_url, link.get("alt") or link.get("title"), page_url)
